"""One real end-to-end `flwr run .` in simulation: SuperLink, Ray actors, the FAB, all of it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from multifcl.local_flower import LocalFlower, superlink_is_running

APP_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture
def flower(tmp_path):
    if superlink_is_running():
        pytest.skip("a SuperLink already listens on the local port; it would be reused")
    (tmp_path / "home").mkdir()
    with LocalFlower(home=tmp_path / "home", workdir=tmp_path) as local:
        yield local


def test_flwr_run_completes_and_writes_results(flower, tmp_path):
    output = tmp_path / "results"
    run = flower.run(
        APP_DIR,
        overrides=(
            "dataset='synthetic' num-tasks=2 rounds-per-task=1 partition='iid' "
            f"method='finetune' save-task-checkpoints=true output-dir='{output}'"
        ),
        federation="num-supernodes=2 client-resources-num-cpus=1",
    )
    assert run.completed, (run.status, run.details, run.logs[-3000:])
    metrics = json.loads((output / "metrics.json").read_text())
    assert len(metrics["accuracy_matrix"]) == 2 and metrics["tasks_finished"] == 2
    assert (output / "rounds.csv").read_text().count("\n") == 3  # header + 2 rounds
    assert "task 2/2 round 1/1" in run.logs
    rows = list(csv.DictReader((output / "rounds.csv").open()))
    assert all(float(r["client_seconds"]) > 0 and float(r["client_peak_rss_mb"]) > 50 for r in rows)
    assert len(list((output / "client-snapshots").glob("client-*.npz"))) == 2


def test_bad_input_fails_the_run_with_a_one_line_reason(flower, tmp_path):
    run = flower.run(APP_DIR, overrides="beta=-1.0 dataset='synthetic'")
    assert run.status == "finished:failed"
    assert "run config key 'beta': must be > 0, got -1.0" in run.details
