"""`logger = "tensorboard"`: event files with per-round and per-task scalars."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.metrics import AccuracyHistory, RoundRecord
from multifcl.results import RunDirectory
from tests.conftest import run_in_process


def test_a_tiny_run_writes_round_and_task_scalars(tiny_config, tmp_path):
    config = tiny_config(method="finetune", logger="tensorboard")  # 2 tasks x 2 rounds
    run_in_process(config, base_dir=tmp_path)
    events = EventAccumulator(str(config.output_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags >= {
        "round/train_loss",
        "round/bytes_up",
        "round/bytes_down",
        "round/seconds",
        "round/clients",
        "task/A_t",
        "task/til_A_t",
        "task/accuracy_all_seen_classes",
        "summary/last",
        "summary/avg",
        "summary/forgetting",
        "summary/bwt",
        "cil_per_task/task_1",
        "cil_per_task/task_2",
    }
    assert [e.step for e in events.Scalars("round/bytes_up")] == [1, 2, 3, 4]
    assert [e.value for e in events.Scalars("round/clients")] == [2.0] * 4
    metrics = json.loads((config.output_dir / "metrics.json").read_text())
    a_t = events.Scalars("task/A_t")
    assert [e.step for e in a_t] == [1, 2]
    assert [e.value for e in a_t] == pytest.approx(metrics["stage_accuracy"], abs=1e-4)
    assert [e.step for e in events.Scalars("cil_per_task/task_2")] == [2]
    assert events.Scalars("cil_per_task/task_1")[-1].value == pytest.approx(
        metrics["accuracy_matrix"][1][0], abs=1e-4
    )


def test_the_default_logger_writes_no_event_files(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.start(ExperimentConfig(num_tasks=1), {})
    run.append_round(RoundRecord(1, 1, 2, 10, 20, 0.5, 1.0))
    run.write_metrics(AccuracyHistory([[80.0]], [[90.0]], [80.0]), 1)
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_an_unknown_logger_is_refused():
    with pytest.raises(ConfigError, match="run config key 'logger': unknown value 'mlflow'"):
        ExperimentConfig.from_run_config({"logger": "mlflow"})
