"""Client sampling per round (`fraction-train`, `min-train-clients`): a subset drawn from
(seed, task, round), sent to alone, recorded in rounds.csv, the same after a resume; bad
values refused at start in one line; a class whose holders are never sampled reported."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import numpy as np
import pytest

from clients.client_app import train
from multifcl.client_sampling import ClientSampler, never_sampled_classes
from multifcl.config import ConfigError, ExperimentConfig
from protocol.messages import CONFIG
from server import continual_loop
from server.continual_loop import run_continual_learning
from tests.conftest import TINY, in_process_grid, run_in_process

TIMING_COLUMNS = ("seconds", "seconds_per_step", "client_seconds", "client_peak_rss_mb")
SAMPLED = {"fraction_train": 0.5, "method": "finetune", "rounds_per_task": 3}


def ten_clients(**changes) -> ClientSampler:
    return ClientSampler({1000 + p: p for p in range(10)}, **{"fraction": 0.3, **changes})


def rows_of(folder) -> list[dict]:
    rows = list(csv.DictReader((folder / "rounds.csv").open()))
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def test_the_sample_depends_on_seed_task_and_round_alone():
    sampler = ten_clients(seed=3)
    draws = {(t, r): sampler.partition_ids(t, r) for t in range(2) for r in range(1, 6)}
    assert all(len(d) == 3 and d == sorted(set(d)) for d in draws.values())
    assert draws == {(t, r): ten_clients(seed=3).partition_ids(t, r) for t, r in draws}
    assert len({tuple(d) for d in draws.values()}) > 5  # it changes across rounds and tasks
    assert any(ten_clients(seed=4).partition_ids(t, r) != d for (t, r), d in draws.items())
    assert sampler.node_ids(1, 2) == [1000 + p for p in draws[1, 2]]


@pytest.mark.parametrize(
    "fraction, min_clients, size",
    [(1.0, 1, 10), (0.3, 1, 3), (0.25, 1, 2), (0.05, 1, 1), (0.3, 5, 5), (0.5, 12, 10)],
)
def test_a_round_samples_floor_of_the_fraction_but_at_least_min_train_clients(
    fraction, min_clients, size
):
    sampler = ten_clients(fraction=fraction, min_clients=min_clients)
    assert sampler.size == size and len(sampler.partition_ids(0, 1)) == size


def test_never_sampled_classes_are_those_no_sampled_holder_has():
    sampler = ClientSampler({10: 0, 11: 1, 12: 2}, fraction=0.34)  # one client per round
    sampled = {p for r in (1, 2) for p in sampler.partition_ids(0, r)}
    holdings = {0: {0, 1}, 1: {1, 2}, 2: {3}}
    missed = set().union(*holdings.values()) - set().union(*(holdings[p] for p in sampled))
    assert never_sampled_classes(sampler, 0, 2, holdings) == sorted(missed)
    assert never_sampled_classes(ClientSampler({10: 0, 11: 1, 12: 2}), 0, 1, holdings) == []


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("fraction-train", 0.0, "must be in (0, 1], got 0.0"),
        ("fraction-train", 1.5, "must be in (0, 1], got 1.5"),
        ("min-train-clients", 0, "must be > 0, got 0"),
    ],
)
def test_a_bad_sampling_value_is_one_line_naming_its_key(key, value, message):
    with pytest.raises(ConfigError) as refused:
        ExperimentConfig.from_run_config({key: value})
    assert str(refused.value) == f"run config key '{key}': {message}"


def test_more_min_train_clients_than_the_federation_fails_before_any_round(tmp_path):
    config = ExperimentConfig(**TINY, output_dir=tmp_path / "run", min_train_clients=3)
    grid = in_process_grid(config, 2)
    with pytest.raises(ConfigError) as refused:
        run_continual_learning(grid, config, tmp_path)
    assert str(refused.value) == (
        "run config key 'min-train-clients': 3 is more than the federation's 2 clients"
    )
    assert grid.sent == [] and grid.queried == []


def test_only_the_sampled_nodes_get_the_round_and_rounds_csv_names_them(tiny_config, tmp_path):
    config = tiny_config(**SAMPLED)
    metrics, grid = run_in_process(config, 4, base_dir=tmp_path)
    sent = defaultdict(set)
    for message in grid.sent:
        round_config = message.content.config_records[CONFIG]
        sent[round_config["task"] + 1, round_config["round"]].add(message.metadata.dst_node_id)
    rows = rows_of(config.output_dir)
    sampler = ClientSampler({1000 + p: p for p in range(4)}, 0.5, 1, config.seed)
    assert len(rows) == len(sent) == 6 and all(r["merged"] == "True" for r in rows)
    draws = set()
    for row in rows:
        task, server_round = int(row["task"]), int(row["round"])
        partitions = sampler.partition_ids(task - 1, server_round)
        assert row["sampled_clients"] == ";".join(str(p) for p in partitions)
        assert sent[task, server_round] == {1000 + p for p in partitions}
        assert row["clients"] == "2" and row["failures"] == "0"
        draws.add(row["sampled_clients"])
    assert len(draws) > 1 and metrics["tasks_finished"] == 2


class Interrupted(BaseException):
    """Stands in for a killed server: not caught as a failed client."""


def interrupting(after: int):
    """The ClientApp's train handler, which interrupts the run at its `after`+1-th call."""
    calls = []

    def handler(message, context):
        calls.append(message)
        if len(calls) > after:
            raise Interrupted
        return train(message, context)

    return handler


def test_a_resumed_sampled_run_matches_an_unbroken_one(tiny_config, tmp_path):
    reference = tiny_config(**SAMPLED, output_dir=tmp_path / "reference")
    run_in_process(reference, 4, base_dir=tmp_path)
    config = tiny_config(**SAMPLED)
    with pytest.raises(Interrupted):  # in task 2 round 2 (2 clients a round)
        run_in_process(config, 4, base_dir=tmp_path, handler=interrupting(9))
    assert [(r["task"], r["round"]) for r in rows_of(config.output_dir)][-1] == ("2", "1")
    resume = tiny_config(**SAMPLED, output_dir=None, resume_from=config.output_dir)
    run_in_process(resume, 4, base_dir=tmp_path)
    folder, expected = config.output_dir, reference.output_dir
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics == json.loads((expected / "metrics.json").read_text())
    assert rows_of(folder) == rows_of(expected)


def test_classes_whose_holders_are_never_sampled_are_one_warning_and_still_evaluated(
    tiny_config, tmp_path, monkeypatch
):
    config = tiny_config(fraction_train=0.25, rounds_per_task=1, beta=0.1, partition="dirichlet")
    lines = []
    monkeypatch.setattr(continual_loop, "log", lambda level, text, *args: lines.append(text % args))
    metrics, _ = run_in_process(config, 4, base_dir=tmp_path)
    data = load_data(config)
    warned = [line for line in lines if "is sampled in any of its" in line]
    expected = expected_misses(config, data, 4)
    assert expected, "the seed must leave some class's holders unsampled"
    assert len(warned) == len(expected)
    for line, (task, classes) in zip(warned, sorted(expected.items())):
        assert line.startswith(f"multifcl: task {task + 1}: no client holding class ")
        assert all(repr(data.stream.class_names[c]) in line for c in classes)
    assert metrics["tasks_finished"] == 2 and np.all(np.isfinite(metrics["accuracy_matrix"][-1]))


def load_data(config: ExperimentConfig):
    from multifcl.experiment import load_experiment

    return load_experiment(config).data


def expected_misses(config: ExperimentConfig, data, clients: int) -> dict[int, list[int]]:
    """Per task (0-based): the classes some client holds and no sampled client does."""
    sampler = ClientSampler({1000 + p: p for p in range(clients)}, config.fraction_train)
    misses = {}
    for task in data.stream:
        parts = data.client_parts(task, clients)
        holdings = {p: set(data.stream.train_labels[parts[p]].tolist()) for p in range(clients)}
        missed = never_sampled_classes(sampler, task.index, config.rounds_per_task, holdings)
        if missed:
            misses[task.index] = missed
    return misses
