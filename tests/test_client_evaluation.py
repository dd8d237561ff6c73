"""Client-side evaluation (`eval-local`): each client's test slice, its report of the global
and its own model, the server's checks of that report, and the per-client accuracy in
metrics.json and rounds.csv."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from multifcl.client_evaluation import (
    CLASS_COUNTS,
    CLASS_IDS,
    CORRECT_GLOBAL,
    CORRECT_LOCAL,
    RejectedReport,
    check_report,
    expected_slice,
)
from multifcl.data.client_test_slices import split_test_set
from multifcl.experiment import load_experiment
from protocol.messages import REPORT, state_to_record
from tests.conftest import run_in_process

NAMES = [f"class-{c}" for c in range(10)]


def test_a_class_s_test_samples_are_split_among_its_holders_in_their_training_shares():
    train = [np.array([0] * 30 + [1] * 10), np.array([0] * 10), np.array([2] * 5)]
    test = np.array([0] * 40 + [1] * 20 + [2] * 8 + [3] * 4)  # class 3: nobody holds it
    slices = split_test_set(train, test, seed=0, task=0)
    assert all(np.array_equal(s, np.sort(s)) for s in slices)
    every = np.concatenate(slices)
    assert len(every) == len(set(every.tolist()))  # disjoint
    assert sorted(test[every].tolist()) == sorted([0] * 40 + [1] * 20 + [2] * 8)
    assert [np.bincount(test[s], minlength=4).tolist() for s in slices] == [
        [30, 20, 0, 0],  # 3/4 of class 0 (30 of its 40 training samples), all of class 1
        [10, 0, 0, 0],
        [0, 0, 8, 0],
    ]
    again = split_test_set(train, test, seed=0, task=0)
    other = split_test_set(train, test, seed=1, task=0)
    assert all(np.array_equal(a, b) for a, b in zip(slices, again))
    assert not all(np.array_equal(a, b) for a, b in zip(slices, other))


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory):
    """Prototypes on digits, 3 clients (Dirichlet), 1 of them sampled per round."""
    from multifcl.config import ExperimentConfig

    config = ExperimentConfig(
        dataset="digits",
        backbone="vit-tiny",
        num_tasks=2,
        rounds_per_task=2,
        batch_size=64,
        partition="dirichlet",
        beta=0.3,
        fraction_train=0.34,
        eval_local=True,
        output_dir=tmp_path_factory.mktemp("eval-local") / "run",
    )
    metrics, grid = run_in_process(config, num_nodes=3)
    return config, metrics, grid


def test_per_client_matrices_have_their_shape_and_average_to_the_server_s_accuracy(sampled_run):
    config, metrics, grid = sampled_run
    clients = metrics["client_accuracy"]
    assert clients["num_clients"] == 3
    for model in ("global", "local"):
        matrices = clients[model]["accuracy_matrices"]
        assert np.array(matrices, dtype=object).shape == (3, 2, 2)
        assert all(matrix[0][1] is None for matrix in matrices)  # j > t is undefined
        assert len(clients[model]["mean"]) == len(clients[model]["worst"]) == 2
    global_model = clients["global"]
    # every client evaluates after every task, sampled or not: the slices cover the test
    # sets, so the slice-weighted mean of the clients' global accuracy is the server's
    assert global_model["clients_scored"] == [3, 3]
    np.testing.assert_allclose(
        global_model["sample_weighted_mean"], metrics["accuracy_all_seen_classes"], atol=1e-9
    )
    experiment = load_experiment(config)
    stream = experiment.data.stream
    sizes = [len(stream.test_indices(stream.task(j))) for j in range(2)]
    assert [sum(row) for row in clients["test_samples"]] == [sizes[0], sum(sizes)]
    row = global_model["accuracy_all_seen"][-1]
    assert global_model["worst"][-1] == min(row) == row[global_model["worst_client"][-1]]
    np.testing.assert_allclose(global_model["mean"][-1], np.mean(row))
    np.testing.assert_allclose(global_model["std"][-1], np.std(row))
    assert len([m for m in grid.evaluated if m.metadata.dst_node_id]) == 3 * 2


def test_clients_that_join_later_are_scored_once_they_hold_classes(tiny_config):
    """clients-per-task: a client not yet in the federation holds nothing (null), and is
    scored on its own slice from its first task on; no client's evaluation fails."""
    config = tiny_config(eval_local=True, clients_per_task="1,3")
    metrics, _ = run_in_process(config, 3)
    global_model = metrics["client_accuracy"]["global"]
    assert global_model["clients_scored"] == [1, 3]
    assert [v is None for v in global_model["accuracy_all_seen"][0]] == [False, True, True]
    np.testing.assert_allclose(
        global_model["sample_weighted_mean"], metrics["accuracy_all_seen_classes"], atol=1e-9
    )


def test_only_the_clients_sampled_in_a_task_have_a_local_model_of_it(sampled_run):
    config, metrics, _ = sampled_run
    rows = list(csv.DictReader((config.output_dir / "rounds.csv").open()))
    for task in (1, 2):
        trained = {
            int(p)
            for r in rows
            if r["task"] == str(task) and r["phase"] == "train"
            for p in r["sampled_clients"].split(";")
        }
        local = metrics["client_accuracy"]["local"]["accuracy_all_seen"][task - 1]
        assert {c for c, value in enumerate(local) if value is not None} == trained
        assert len(trained) < 3  # 1 client a round, 2 rounds: one was never sampled
    evaluations = [r for r in rows if r["phase"] == "evaluate"]
    assert [(r["task"], r["round"], r["clients"]) for r in evaluations] == [
        ("1", "3", "3"),
        ("2", "3", "3"),
    ]
    assert all(int(r["bytes_up"]) > 0 and int(r["bytes_down"]) > 0 for r in evaluations)


def test_a_client_s_slice_holds_only_the_classes_it_trains_on(sampled_run):
    config, _, _ = sampled_run
    data = load_experiment(config).data
    for index in range(2):
        task = data.stream.task(index)
        parts = data.client_parts(task, 3)
        for client in range(3):
            held = set(data.stream.train_labels[parts[client]].tolist())
            tested = set(data.client_test_set(task, client, 3).labels.tolist())
            assert tested <= held


def genuine(ids=(0, 1, 4), counts=(5, 3, 2)) -> tuple[dict, tuple]:
    expected = (np.array(ids, dtype=np.int64), np.array(counts, dtype=np.int64))
    report = {
        CLASS_IDS: expected[0].copy(),
        CLASS_COUNTS: expected[1].copy(),
        CORRECT_GLOBAL: np.array([5, 1, 0], np.float32),
        CORRECT_LOCAL: np.array([4, 3, 2], np.float32),
    }
    return report, expected


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: r.update({CLASS_IDS: np.array([0, 1, 7])}), "class(es) 7 ('class-7')"),
        (lambda r: r.update({CLASS_COUNTS: np.array([5, 3, 3])}), "'class-counts'"),
        (lambda r: r[CORRECT_GLOBAL].__setitem__(1, np.nan), "NaN"),
        (lambda r: r[CORRECT_LOCAL].__setitem__(2, 3), "outside 0 to"),
        (lambda r: r[CORRECT_LOCAL].__setitem__(0, 1.5), "not whole counts"),
        (lambda r: r.pop(CORRECT_LOCAL), "expected"),
        (lambda r: r.update({CORRECT_GLOBAL: np.array([1.0, 1.0])}), "shape"),
    ],
)
def test_a_report_that_does_not_fit_the_slice_is_rejected(damage, message):
    report, expected = genuine()
    check_report(report, expected, with_local=True, class_names=NAMES)
    damage(report)
    with pytest.raises(RejectedReport, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_report(report, expected, with_local=True, class_names=NAMES)


def test_the_server_leaves_out_a_client_whose_report_is_rejected(tiny_config):
    """A client answering NaN accuracy is named in rounds.csv and scores nothing."""
    from clients.client_app import evaluate
    from server.continual_loop import run_continual_learning
    from server.in_process_grid import InProcessGrid

    config = tiny_config(method="prototypes", eval_local=True, num_tasks=2, rounds_per_task=1)

    def nan_from_client_1(message, context):
        reply = evaluate(message, context)
        if context.node_config["partition-id"] == 1:
            arrays = {k: v.numpy() for k, v in reply.content[REPORT].items()}
            arrays[CORRECT_GLOBAL] = np.full_like(arrays[CORRECT_GLOBAL], np.nan)
            reply.content[REPORT] = state_to_record(arrays)
        return reply

    from clients.client_app import train

    grid = InProcessGrid(train, config.to_run_config(), 2, evaluate=nan_from_client_1)
    metrics = run_continual_learning(grid, config, base_dir=config.output_dir)
    for row in metrics["client_accuracy"]["global"]["accuracy_all_seen"]:
        assert row[1] is None and row[0] is not None
    assert metrics["client_accuracy"]["global"]["clients_scored"] == [1, 1]
    rows = [r for r in csv.DictReader((config.output_dir / "rounds.csv").open())]
    evaluations = [r for r in rows if r["phase"] == "evaluate"]
    assert all("rejected: 'correct-global' holds NaN" in r["failed_clients"] for r in evaluations)
    assert all(r["failures"] == "1" for r in evaluations)
    assert json.loads((config.output_dir / "metrics.json").read_text()) == metrics


def test_without_eval_local_no_client_is_asked_to_evaluate(tiny_config):
    config = tiny_config(method="prototypes", num_tasks=2, rounds_per_task=1)
    metrics, grid = run_in_process(config)
    assert "client_accuracy" not in metrics and grid.evaluated == []
    rows = list(csv.DictReader((config.output_dir / "rounds.csv").open()))
    assert {r["phase"] for r in rows} == {"train"}


def test_expected_slice_counts_each_seen_task_s_test_samples_once(sampled_run):
    config, _, _ = sampled_run
    data = load_experiment(config).data
    task = data.stream.task(1)
    totals = sum(expected_slice(data, task, client, 3)[1].sum() for client in range(3))
    assert totals == sum(len(data.stream.test_indices(data.stream.task(j))) for j in range(2))
