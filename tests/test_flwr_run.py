"""One real end-to-end `flwr run .` in simulation: SuperLink, Ray actors, the FAB, all of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parents[1]
LOCAL_SUPERLINK_PORT = 39091  # the port `flwr` uses for the SuperLink it starts itself


def superlink_is_running() -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{LOCAL_SUPERLINK_PORT}/health", timeout=1)
        return True
    except OSError:
        return False


def superlink_pids(flwr_home: Path) -> list[int]:
    """Process ids of the SuperLink started for this FLWR_HOME (found by its log path)."""
    marker = f"{flwr_home}/local-superlink/superlink.log"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if marker in argv and any(arg.endswith("flower-superlink") for arg in argv):
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def flwr_env(tmp_path):
    if superlink_is_running():
        pytest.skip(f"a SuperLink already listens on port {LOCAL_SUPERLINK_PORT}; it would be reused")
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    yield env, workdir
    pids = superlink_pids(home)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def flwr(env, cwd, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["flwr", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_flwr_run_completes_and_writes_results(flwr_env, tmp_path):
    env, cwd = flwr_env
    output = tmp_path / "results"
    overrides = (
        f"dataset='synthetic' num-tasks=2 rounds-per-task=1 partition='iid' "
        f"method='finetune' output-dir='{output}'"
    )
    started = flwr(
        env, cwd, "run", str(APP_DIR), "--format", "json", "--stream",
        "--federation-config", "num-supernodes=2 client-resources-num-cpus=1", "-c", overrides,
    )
    reply = json.loads(started.stdout)  # `--format json` exits 0 even on errors: read it
    assert reply["success"], reply.get("error-message")
    listing = json.loads(flwr(env, cwd, "list", "--run-id", reply["run-id"], "--format", "json").stdout)
    run = listing["runs"][0]
    logs = flwr(env, cwd, "log", reply["run-id"], "--show").stdout
    assert run["status"] == "finished:completed", (run["status-details"], logs[-3000:])
    metrics = json.loads((output / "metrics.json").read_text())
    assert len(metrics["accuracy_matrix"]) == 2 and metrics["tasks_finished"] == 2
    assert (output / "rounds.csv").read_text().count("\n") == 3  # header + 2 rounds
    assert "task 2/2 round 1/1" in logs
