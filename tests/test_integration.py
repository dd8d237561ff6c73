"""The real strategy, server loop and ClientApp handler, driven in-process (no Ray)."""

import csv
import json

import numpy as np
import pytest
import torch
from flwr.app import Message

from clients.client_app import train
from multifcl.config import ConfigError
from multifcl.experiment import load_experiment
from protocol.messages import CONFIG
from server.continual_loop import run_continual_learning
from tests.conftest import in_process_grid, run_in_process, sent_states


@pytest.mark.parametrize("method", ["prototypes", "finetune"])
def test_two_tasks_two_rounds_two_clients(method, tiny_config, tmp_path):
    config = tiny_config(method=method)
    metrics, grid = run_in_process(config, base_dir=tmp_path)

    run = config.output_dir
    assert {p.name for p in run.iterdir()} >= {
        "config.json",
        "metrics.json",
        "rounds.csv",
        "accuracy.png",
    }
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["accuracy_matrix"][0][1] is None and saved["accuracy_matrix"][1][0] is not None
    assert len(saved["til_accuracy_matrix"]) == 2 and saved == json.loads(json.dumps(metrics))
    rows = list(csv.DictReader((run / "rounds.csv").open()))
    assert [(r["task"], r["round"]) for r in rows] == [
        ("1", "1"),
        ("1", "2"),
        ("2", "1"),
        ("2", "2"),
    ]
    assert all(int(r["bytes_up"]) > 0 and int(r["bytes_down"]) > 0 for r in rows)
    assert all(r["clients"] == "2" and r["failures"] == "0" for r in rows)
    # the clients' own compute and memory, as their replies report them
    assert all(0 < float(r["client_seconds"]) <= float(r["seconds"]) for r in rows)
    assert all(float(r["client_peak_rss_mb"]) > 50 for r in rows)
    sent = [
        (m.metadata.dst_node_id, m.content[CONFIG]["task"], m.content[CONFIG]["round"])
        for m in grid.sent
    ]
    assert sent == [(n, t, r) for t in (0, 1) for r in (1, 2) for n in (1000, 1001)]
    # the synthetic classes are easy: the current task is learned well by both methods
    assert saved["accuracy_matrix"][1][1] > 60.0


def test_federated_prototypes_equal_the_central_class_means(tiny_config):
    config = tiny_config(method="prototypes", partition="dirichlet", beta=0.3)
    experiment = load_experiment(config)
    _, grid = run_in_process(config, num_nodes=3)
    # the state sent in the last round, against class means computed from all data in one place
    last_sent = sent_states(grid)[-1][1]
    method, data = experiment.method, experiment.data
    central = method.initial_state()
    task = data.stream.task(0)
    central = method.merge(
        central, [method.train_client(central, data.client_train_set(task, 0, 1), task, 0)]
    )
    assert np.allclose(last_sent["prototypes"][:5], central["prototypes"][:5], atol=1e-5)
    assert np.array_equal(last_sent["class-counts"][:5], central["class-counts"][:5])


def test_failing_client_is_recorded_and_the_round_merges_the_others(tiny_config, tmp_path):
    config = tiny_config(method="finetune", num_tasks=2, rounds_per_task=1)

    def flaky(message: Message, context):
        if context.node_config["partition-id"] == 1:
            raise RuntimeError("disk on fire")
        return train(message, context)

    run_in_process(config, base_dir=tmp_path, handler=flaky)
    rows = list(csv.DictReader((config.output_dir / "rounds.csv").open()))
    assert [(r["clients"], r["failures"]) for r in rows] == [("1", "1"), ("1", "1")]


def test_finetune_merge_is_the_sample_weighted_mean(tiny_config):
    config = tiny_config(method="finetune")
    experiment = load_experiment(config)
    method, data = experiment.method, experiment.data
    state = method.initial_state()
    task = data.stream.task(0)
    updates = [
        method.train_client(state, data.client_train_set(task, c, 3), task, c) for c in range(3)
    ]
    merged = method.merge(state, updates)
    weights = np.array([u.num_examples for u in updates], float)
    expected = sum(w * u.arrays["head.weight"] for w, u in zip(weights, updates)) / weights.sum()
    assert np.allclose(merged["head.weight"], expected, atol=1e-6)
    assert not np.allclose(merged["head.weight"], state["head.weight"])


def test_finetune_leaves_the_shared_backbone_untouched(tiny_config):
    config = tiny_config(method="finetune")
    experiment = load_experiment(config)
    before = {k: v.clone() for k, v in experiment.backbone.state_dict().items()}
    task = experiment.data.stream.task(0)
    data = experiment.data.client_train_set(task, 0, 2)
    experiment.method.train_client(experiment.method.initial_state(), data, task, seed=1)
    after = experiment.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_an_existing_run_is_not_overwritten(tiny_config, tmp_path):
    config = tiny_config(rounds_per_task=1)
    run_in_process(config, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="already holds a run"):
        run_in_process(config, base_dir=tmp_path)


def test_bad_data_stops_the_run_before_any_round_and_writes_nothing(tiny_config, tmp_path):
    from multifcl.data import DataError

    config = tiny_config(partition="iid")
    grid = in_process_grid(config, num_nodes=300)  # more clients than samples
    with pytest.raises(DataError, match="no samples"):
        run_continual_learning(grid, config, base_dir=tmp_path)
    assert grid.sent == []
    assert not config.output_dir.exists()


def test_initial_state_does_not_move_with_training_in_the_same_process(tiny_config):
    experiment = load_experiment(tiny_config(method="finetune"))
    method, task = experiment.method, experiment.data.stream.task(0)
    before = method.initial_state()
    method.train_client(before, experiment.data.client_train_set(task, 0, 2), task, seed=3)
    after = method.initial_state()
    assert all(np.array_equal(before[key], after[key]) for key in before)
