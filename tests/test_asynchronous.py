"""Asynchronous streams (docs/asynchronous.md): the schedule, the stage metrics, the
server's checks of each client's own task, the synchronous special case, and a run."""

from __future__ import annotations

import csv
import itertools
import json
import logging

import numpy as np
import pytest
from rich.console import Console

from clients.client_app import train
from multifcl.client_stream_schedule import IDLE, StreamSchedule
from multifcl.config import ConfigError, ExperimentConfig
from multifcl.config_names import check_names
from multifcl.data import Task
from multifcl.experiment import load_experiment
from multifcl.heads.experts import HOLDER_COUNTS
from multifcl.methods.multifcl import ADAPTER_PREFIX, ADAPTER_ROUNDS
from multifcl.metrics.continual import summarize, summarize_stages
from multifcl.reporting.report_command import render_report
from multifcl.reporting.run_results import RunResults
from multifcl.results.checkpoints import latest_checkpoint
from multifcl.results.folder_layout import is_finished
from multifcl.results.summary_table import print_summary
from multifcl.update_validation import RejectedUpdate, check_trained_claim
from strategies.continual import RoundFailed
from tests.conftest import TINY, run_in_process

TIMING_COLUMNS = ("seconds", "seconds_per_step", "client_seconds", "client_peak_rss_mb")


def _config(**changes) -> ExperimentConfig:
    return ExperimentConfig(**{**TINY, **changes})


def test_per_client_schedule_covers_every_round_and_task():
    config = _config(num_tasks=4, client_task_order="per-client", client_start_delay_rounds=5)
    schedule = StreamSchedule.of(config, 6)
    assert schedule.total_rounds == 4 * 2 + 5
    assert min(schedule.offsets) == 0 and max(schedule.offsets) == 5
    assert all(sorted(order) == [0, 1, 2, 3] for order in schedule.orders)
    assert len(set(schedule.orders)) > 1  # the clients' orders differ
    table = np.array(schedule.client_tasks())
    assert ((table != IDLE).sum(axis=0) > 0).all()  # no round without a training client
    for client, row in enumerate(table):  # each task R rounds, in the client's order
        trained = row[row != IDLE]
        assert trained.tolist() == [t for t in schedule.orders[client] for _ in range(2)]
    seen = [schedule.seen_tasks(stage) for stage in schedule.stages]
    assert all(set(a) <= set(b) for a, b in itertools.pairwise(seen))
    assert seen[-1] == [0, 1, 2, 3]
    assert StreamSchedule.of(config, 6) == schedule  # drawn from the seed alone


def test_shared_order_without_delay_is_the_task_stream():
    schedule = StreamSchedule.of(_config(num_tasks=3), 4)
    assert [(s.first_round, s.last_round) for s in schedule.stages] == [(1, 2), (3, 4), (5, 6)]
    assert [schedule.seen_tasks(s) for s in schedule.stages] == [[0], [0, 1], [0, 1, 2]]
    assert [schedule.ended_tasks(s) for s in schedule.stages] == [[0], [1], [2]]
    assert schedule.training(4) == {c: (1, 2) for c in range(4)}


def test_stage_summary_of_a_triangular_matrix_is_the_synchronous_one():
    matrix = [[90.0], [70.0, 80.0], [50.0, 60.0, 75.0]]
    assert summarize_stages(matrix) == summarize(matrix)
    stages = summarize_stages([[None, 40.0], [10.0, 30.0], [20.0, 35.0]])
    assert stages.stage_accuracy == [40.0, 20.0, 27.5]
    assert stages.forgetting == pytest.approx(((10 - 20) + (40 - 35)) / 2)
    assert stages.bwt == pytest.approx(((20 - 10) + (35 - 40)) / 2)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"client_start_delay_rounds": 4}, "client-start-delay-rounds"),  # T x R = 4
        ({"client_task_order": "random"}, "client-task-order"),
        ({"client_task_order": "per-client", "clients_per_task": "1+1"}, "client-task-order"),
        ({"client_start_delay_rounds": 1, "eval_local": True}, "client-start-delay-rounds"),
    ],
)
def test_bad_values_fail_in_one_line_naming_the_key(changes, key):
    with pytest.raises(ConfigError, match=f"^run config key '{key}'") as error:
        _config(**changes)
    assert "\n" not in str(error.value)


def test_a_method_that_cannot_run_asynchronously_is_refused():
    with pytest.raises(ConfigError, match="^run config key 'client-task-order': method 'pilora'"):
        check_names(_config(method="pilora", client_task_order="per-client"))
    with pytest.raises(ConfigError, match="at least 2 clients"):
        StreamSchedule.of(_config(client_start_delay_rounds=1), 1)


def test_a_reply_must_name_the_task_it_was_sent():
    task = Task(1, range(2, 4), range(4))
    check_trained_claim((1, [2, 3]), task, required=True)
    check_trained_claim(None, task, required=False)
    for claim, reason in [
        (None, "does not name"),
        ((0, [0, 1]), "trained task 1, but this client was sent task 2"),
        ((1, [3, 4]), r"classes \[4\] are not classes of task 2"),
    ]:
        with pytest.raises(RejectedUpdate, match=reason):
            check_trained_claim(claim, task, required=True)


def _results(folder) -> tuple[dict, list[dict]]:
    metrics = json.loads((folder / "metrics.json").read_text())
    with open(folder / "rounds.csv", newline="") as rows:
        rounds = [
            {k: v for k, v in row.items() if k not in TIMING_COLUMNS}
            for row in csv.DictReader(rows)
        ]
    return metrics, rounds


def test_stage_path_reduces_to_the_synchronous_run(tmp_path, monkeypatch):
    """Shared order and no delay through the stage code path (each client sent its own task,
    the stage evaluation): metrics.json and rounds.csv are those of the synchronous path."""
    config = _config(method="finetune", fraction_train=0.67, output_dir=tmp_path / "tasks")
    run_in_process(config, num_nodes=3)
    monkeypatch.setattr("server.continual_loop.uses_stages", lambda config: True)
    staged = _config(method="finetune", fraction_train=0.67, output_dir=tmp_path / "stages")
    run_in_process(staged, num_nodes=3)
    assert _results(tmp_path / "stages") == _results(tmp_path / "tasks")


ASYNC = {"client_task_order": "per-client", "client_start_delay_rounds": 3, "max_round_retries": 0}
NODES = 4


@pytest.fixture(scope="module")
def asynchronous_run(tmp_path_factory):
    """A per-client-order run with delays over 4 clients: its config, metrics and grid."""
    config = _config(**ASYNC, output_dir=tmp_path_factory.mktemp("asynchronous") / "run")
    metrics, grid = run_in_process(config, num_nodes=NODES)
    return config, metrics, grid


def test_per_client_order_with_delays_runs_stage_by_stage(asynchronous_run, tmp_path):
    config, metrics, grid = asynchronous_run
    schedule = StreamSchedule.of(config, NODES)
    assert metrics["num_stages"] == len(schedule.stages) == 4  # ceil((2 x 2 + 3) / 2)
    assert len(metrics["accuracy_matrix"]) == 4
    assert all(a is not None for a in metrics["accuracy_matrix"][-1])
    assert metrics["stream_schedule"]["client_tasks"] == schedule.client_tasks()
    own = metrics["client_seen_accuracy"]  # each client on the tasks it has trained
    matrix, rows = metrics["accuracy_matrix"], schedule.client_tasks()
    stream = load_experiment(config).data.stream
    sizes = [len(stream.test_indices(task)) for task in stream]
    for stage, scores in zip(schedule.stages, own["accuracy_own_seen"], strict=True):
        for client, score in enumerate(scores):
            trained = {t for t in rows[client][: stage.last_round] if t != IDLE}
            weighted = sum(matrix[stage.index][t] * sizes[t] for t in trained)
            expected = weighted / sum(sizes[t] for t in trained) if trained else None
            assert score == pytest.approx(expected)
    assert None in own["accuracy_own_seen"][0]  # a late client has trained nothing yet
    assert own["mean"][-1] == pytest.approx(metrics["last"])  # every client saw every task
    sent: dict[int, list[int]] = {}  # partition -> the tasks its messages named, in order
    for message in grid.sent:
        node = message.metadata.dst_node_id
        sent.setdefault(node - 1000, []).append(message.content["config"]["task"])
    for client, row in enumerate(schedule.client_tasks()):
        assert sent[client] == [t for t in row if t != IDLE]
    figures = render_report([RunResults.load(config.output_dir)], tmp_path / "report", print)
    assert tmp_path / "report" / "schedule-run.png" in figures
    assert is_finished(config.output_dir)  # every stage done: compare reuses it, not reruns it
    console = Console(width=200, record=True)
    print_summary(metrics, "run", console)
    header = next(line for line in console.export_text().splitlines() if "after stage" in line)
    assert header.count("task ") == 2  # a column per global task, not per stage


def test_asynchronous_prototypes_end_with_the_synchronous_class_means(asynchronous_run, tmp_path):
    """Class means of a frozen encoder do not depend on when a client sends them: every
    holder's contribution is kept across rounds, so the per-client, delayed run ends with
    the synchronous run's prototypes over all of each class's samples (each class's holders
    train it in different rounds here)."""
    config, _, _ = asynchronous_run
    synchronous = _config(output_dir=tmp_path / "sync")
    run_in_process(synchronous, num_nodes=NODES)
    final = latest_checkpoint(config.output_dir).state
    expected = latest_checkpoint(synchronous.output_dir).state
    schedule = StreamSchedule.of(config, NODES)
    first_rounds = {row.index(t) for row in schedule.client_tasks() for t in range(2)}
    assert len(first_rounds) > 2  # the clients start a task in different rounds
    np.testing.assert_array_equal(final["class-counts"], expected["class-counts"])
    assert final["class-counts"].sum() == len(load_experiment(config).data.stream.train_labels)
    np.testing.assert_allclose(final["prototypes"], expected["prototypes"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(final["class-holders"], expected["class-holders"])


def test_asynchronous_lwf_distils_every_other_class_towards_the_model_it_receives(tmp_path):
    config = _config(**ASYNC, method="lwf", output_dir=tmp_path / "run")
    experiment = load_experiment(config)
    method, stream = experiment.method, experiment.data.stream
    state = method.initial_state()
    assert not any(key.startswith("teacher/") for key in state)  # no task ends for all
    state = {key: value + 0.01 for key, value in state.items()}  # not the method's own init
    task = stream.task(1)
    method.train_client(state, experiment.data.client_train_set(task, 0, 1), task, seed=1)
    outside = [c for c in range(stream.num_classes) if c not in task.classes]
    assert method._distilled.tolist() == outside
    for key, value in method.teacher.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), state[key], err_msg=key)
    metrics, _ = run_in_process(config, num_nodes=NODES)
    assert metrics["num_stages"] == 4 and all(a is not None for a in metrics["accuracy_matrix"][-1])


def test_asynchronous_multifcl_trains_its_adapters_once_in_a_round_of_mixed_tasks(tmp_path):
    """The first-task adapter set trains in the first merged round that carries it, FedAvg
    over the clients of global task 0 only, while other clients of that round train task 1."""
    config = _config(**ASYNC, method="multifcl", use_text_init=False, output_dir=tmp_path / "run")
    rows = StreamSchedule.of(config, NODES).client_tasks()
    first = min(row.index(0) for row in rows)  # the first global round training task 0
    assert {row[first] for row in rows} >= {0, 1}  # it mixes tasks 0 and 1
    run_in_process(config, num_nodes=NODES)
    state = latest_checkpoint(config.output_dir).state
    initial = load_experiment(config).method.initial_state()
    assert state[ADAPTER_ROUNDS].tolist()[0] == 1  # one adapter-only round, then frozen
    adapters = [key for key in state if key.startswith(ADAPTER_PREFIX)]
    assert adapters and any(not np.array_equal(state[k], initial[k]) for k in adapters)
    # every class's row and count cover all its holders, whenever each trained it
    stream = load_experiment(config).data.stream
    expected = np.bincount(stream.train_labels, minlength=stream.num_classes)
    np.testing.assert_array_equal(state["class-counts"], expected)
    np.testing.assert_array_equal(state[HOLDER_COUNTS].sum(axis=1), expected)


def test_a_failing_client_delays_no_other_client(tmp_path):
    """Client 0 fails every round it is sent: every other client trains its own schedule
    in the same global rounds, and each round records one failure where client 0 trained."""
    config = _config(**ASYNC, min_fit_fraction=0.01, output_dir=tmp_path / "run")

    def client_0_fails(message, context):
        if context.node_config["partition-id"] == 0:
            raise RuntimeError("client 0 is broken")
        return train(message, context)

    metrics, _ = run_in_process(config, num_nodes=NODES, handler=client_0_fails)
    schedule = StreamSchedule.of(config, NODES)
    rounds = _results(config.output_dir)[1]
    assert len(rounds) == schedule.total_rounds  # no round added, none retried
    assert all(row["merged"] == "True" for row in rounds)
    for global_round, row in enumerate(rounds, start=1):
        training = schedule.training(global_round)
        assert int(row["failures"]) == (0 in training)
        assert int(row["clients"]) == len(training) - (0 in training)
    assert metrics["num_stages"] == len(schedule.stages) and metrics["tasks_finished"] == 4


def test_an_interrupted_asynchronous_run_resumes_to_the_same_results(
    asynchronous_run, tmp_path, caplog
):
    reference, _, _ = asynchronous_run
    config = _config(**ASYNC, output_dir=tmp_path / "run")
    calls = []
    schedule = StreamSchedule.of(config, NODES)
    before = sum(len(schedule.training(r)) for r in range(1, schedule.stages[2].first_round))

    def dies_in_stage_3(message, context):
        calls.append(message)
        if len(calls) > before:  # past the messages of stages 1 and 2: every client fails
            raise RuntimeError("the machine went away")
        return train(message, context)

    with pytest.raises(RoundFailed):
        run_in_process(config, num_nodes=NODES, handler=dies_in_stage_3)
    resumed = ExperimentConfig(**{**vars(config), "resume_from": config.output_dir})
    with caplog.at_level(logging.INFO, logger="flwr"):
        run_in_process(resumed, num_nodes=NODES, base_dir=tmp_path)
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.endswith("next: stage 3 round 1") for line in lines)
    assert any("7 global rounds in 4 stages" in line for line in lines)  # 2 x 2 + 3 rounds
    assert any(line.startswith("stage 4/4 round 1/1: ") for line in lines)  # the short stage
    assert any(line.startswith("stage 4/4 done in ") for line in lines)
    metrics, rounds = _results(config.output_dir)
    expected_metrics, expected_rounds = _results(reference.output_dir)
    assert metrics == expected_metrics
    assert [r for r in rounds if r["merged"] == "True"] == expected_rounds
