"""Real end-to-end `flwr run .`s in simulation: SuperLink, Ray actors, the FAB, all of it;
each on a SuperLink of its own (free ports), so nothing else on the machine interferes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from multifcl.local_flower import LocalFlower

APP_DIR = Path(__file__).resolve().parents[1]
RUN = (
    "dataset='synthetic' num-tasks=2 rounds-per-task=1 partition='iid' method='finetune' "
    "save-task-checkpoints=true"
)


@pytest.fixture
def flower(tmp_path):
    (tmp_path / "home").mkdir()
    with LocalFlower(home=tmp_path / "home", workdir=tmp_path) as local:
        yield local


def test_flwr_run_completes_with_results_independent_of_cpus_per_client(flower, tmp_path):
    output = tmp_path / "results-1cpu"
    run = flower.run(
        APP_DIR,
        overrides=f"{RUN} output-dir='{output}'",
        federation="num-supernodes=2 client-resources-num-cpus=1",
    )
    assert run.completed, (run.status, run.details, run.logs[-3000:])
    metrics = json.loads((output / "metrics.json").read_text())
    assert len(metrics["accuracy_matrix"]) == 2 and metrics["tasks_finished"] == 2
    assert json.loads((output / "config.json").read_text())["torch-threads"] == 1
    assert (output / "rounds.csv").read_text().count("\n") == 3  # header + 2 rounds
    assert "task 2/2 round 1/1" in run.logs
    rows = list(csv.DictReader((output / "rounds.csv").open()))
    assert all(float(r["client_seconds"]) > 0 and float(r["client_peak_rss_mb"]) > 50 for r in rows)
    assert len(list((output / "client-snapshots").glob("client-*.npz"))) == 2

    # the same config through `multifcl run` (a SuperLink of its own), 2 CPUs per client
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    finished = subprocess.run(
        [sys.executable, "-m", "multifcl.cli", "run", "--app", str(APP_DIR), "-c", RUN]
        + ["--federation-config", "num-supernodes=2 client-resources-num-cpus=2"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.strip().splitlines()[-1].endswith("finished:completed")
    (second,) = (workdir / "runs").iterdir()  # results default to ./runs/ of the caller
    assert (
        json.loads((second / "metrics.json").read_text())["accuracy_matrix"]
        == (metrics["accuracy_matrix"])
    )


def test_bad_input_fails_the_run_with_a_one_line_reason(flower, tmp_path):
    run = flower.run(APP_DIR, overrides="lr='fast' dataset='synthetic'")
    assert run.status == "finished:failed"
    assert "run config key 'lr': expected a number, got 'fast'" in run.details
    assert run.logs.count("run config key 'lr'") == 1
    assert "Traceback" not in run.logs and "config.py" not in run.logs


def _processes_working_in(folder: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                found.append((entry / "cmdline").read_bytes().decode(errors="replace"))
        except OSError:
            continue
    return found


def test_an_interrupted_comparison_leaves_no_process_and_says_how_to_continue(tmp_path):
    out = tmp_path / "compare"
    command = [sys.executable, "-m", "multifcl.compare", "--methods", "finetune"]
    command += ["--out", str(out), "--overrides", "dataset='synthetic' rounds-per-task=50"]
    compare = subprocess.Popen(
        command, cwd=APP_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "runs" / "finetune-seed0" / "rounds.csv").exists():
            assert compare.poll() is None and time.monotonic() < deadline, compare.stderr.read()
            time.sleep(0.5)
        assert _processes_working_in(out.resolve())  # the SuperLink, simulation and Ray
        compare.send_signal(signal.SIGINT)
        _, stderr = compare.communicate(timeout=60)
    finally:
        compare.kill()
    assert compare.returncode == 130
    assert stderr.strip().splitlines()[-1].startswith("multifcl compare: interrupted;")
    assert "Continue with: multifcl compare --methods finetune" in stderr
    assert "Traceback" not in stderr
    time.sleep(1)
    assert _processes_working_in(out.resolve()) == []
