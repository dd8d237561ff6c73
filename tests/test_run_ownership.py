"""One owner per run folder (issue 18, findings 1 and 2): a lock on `<run>/.lock` held for
the run's life, and a run id in config.json and in every checkpoint. Another run's folder,
a folder in use, or a checkpoint of another run is refused in one line, before anything is
written or loaded."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from clients.client_app import train
from multifcl.config import ConfigError, ExperimentConfig
from multifcl.results.checkpoints import latest_checkpoint
from multifcl.results.resume import open_resumable_run
from multifcl.results.run_lock import LOCK_FILE, RunLock
from server.continual_loop import run_continual_learning
from tests.conftest import in_process_grid, run_in_process
from tests.test_config import one_line_error
from tests.test_resume import NODES, REPO, RUN, make_checkpoint, run_worker

HOST = socket.gethostname()


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder and its bytes, but the lock file."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != LOCK_FILE
    }


def test_an_interrupted_runs_folder_is_refused_to_a_new_run_and_kept_for_its_resume(tmp_path):
    """Finding 1: run A (lr 0.01) is killed in task 1, before metrics.json exists; a new run
    B (lr 0.05) into the same folder used to rewrite config.json, truncate rounds.csv and
    overwrite A's first checkpoints, so that resuming B loaded A's newer checkpoint."""
    folder = tmp_path / "run"
    run_a = {**RUN, "rounds-per-task": 2, "lr": 0.01, "output-dir": str(folder)}
    killed = run_worker(run_a, {"handler": [0, 2, 1]})  # task 1, round 2, second client
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (folder / "metrics.json").exists()
    before = files_of(folder)

    run_b = ExperimentConfig.from_run_config({**run_a, "lr": 0.05})
    grid = in_process_grid(run_b, NODES)
    message = one_line_error(ConfigError, lambda: run_continual_learning(grid, run_b, tmp_path))
    assert message == (
        f"run config key 'output-dir': '{folder}' already holds a run (config.json, "
        f"rounds.csv, checkpoints); continue it with resume-from='{folder}' or choose "
        "another folder"
    )
    assert files_of(folder) == before and grid.sent == []

    # A's own resume takes its newest checkpoint (resumes run end to end in test_resume.py)
    resume_a = ExperimentConfig.from_run_config({**run_a, "resume-from": str(folder)})
    _, saved, checkpoint = open_resumable_run(resume_a, warn=print)
    assert saved["lr"] == 0.01 and checkpoint.run_id == saved["run-id"]
    assert checkpoint.file_name == "checkpoint-000001.npz"  # the initial state, round 1


def test_a_resume_refuses_a_newest_checkpoint_written_by_another_run(tmp_path):
    """Finding 1, the folder as the old code left it: B's config.json and first checkpoint,
    A's newer checkpoint-000002; the resume used to continue from A's."""
    run_a, run_b = "a" * 32, "b" * 32
    config = ExperimentConfig.from_run_config({**RUN, "resume-from": str(tmp_path)})
    saved = {"run-id": run_b, **config.to_run_config()}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    dataclasses.replace(make_checkpoint(1), run_id=run_b).save(tmp_path)
    dataclasses.replace(make_checkpoint(2), run_id=run_a).save(tmp_path)
    message = one_line_error(ConfigError, lambda: open_resumable_run(config, warn=print))
    assert message == (
        f"run config key 'resume-from': '{tmp_path / 'checkpoints' / 'checkpoint-000002.npz'}' "
        f"was written by run {run_a}, not by the folder's run {run_b} (config.json): another "
        "run wrote into this folder; it cannot be resumed"
    )


def test_a_second_run_into_a_folder_in_use_is_refused_and_the_first_completes(
    tiny_config, tmp_path
):
    """Finding 2: two runs at once into one output-dir both "completed", rounds.csv held both
    runs' rows and config.json did not describe metrics.json."""
    first, second = tiny_config(lr=0.01), tiny_config(lr=0.05)
    folder = first.output_dir
    in_round, go_on = threading.Event(), threading.Event()
    finished: dict = {}

    def held_in_its_first_round(message, context):
        in_round.set()
        go_on.wait(60)
        return train(message, context)

    def run_first() -> None:
        finished["metrics"], _ = run_in_process(
            first, base_dir=tmp_path, handler=held_in_its_first_round
        )

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        assert in_round.wait(120)
        grid = in_process_grid(second)
        message = one_line_error(
            ConfigError, lambda: run_continual_learning(grid, second, tmp_path)
        )
    finally:
        go_on.set()
        thread.join(300)
    saved = json.loads((folder / "config.json").read_text())
    assert message == (
        f"run config key 'output-dir': '{folder}' is in use by run {saved['run-id']} "
        f"(pid {os.getpid()} on host {HOST})"
    )
    assert grid.sent == []
    assert finished["metrics"] == json.loads((folder / "metrics.json").read_text())
    assert saved["lr"] == 0.01 and latest_checkpoint(folder).run_id == saved["run-id"]
    rows = list(csv.DictReader((folder / "rounds.csv").open()))
    assert [(r["task"], r["round"]) for r in rows] == [
        ("1", "1"),
        ("1", "2"),
        ("2", "1"),
        ("2", "2"),
    ]

    message = one_line_error(ConfigError, lambda: run_continual_learning(grid, second, tmp_path))
    assert "already holds a run (config.json, rounds.csv, metrics.json, checkpoints)" in message


# run_lock.py imported by its path: the multifcl.results package would load torch first
HOLD = """
import importlib.util, os, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("run_lock", "multifcl/results/run_lock.py")
run_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_lock)
run_lock.RunLock(Path(sys.argv[1]), "a" * 32).acquire()
if sys.argv[2] == "fork" and os.fork():  # the parent exits; its child keeps the lock
    os._exit(0)
print(os.getpid(), flush=True)
time.sleep(120)
"""


def hold_lock(folder: Path, how: str) -> tuple[subprocess.Popen, int]:
    """A process holding the folder's lock (its child, with `fork`), and that holder's pid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), how], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    return holder, int(holder.stdout.readline())


def test_the_lock_names_its_holder_and_is_free_again_after_kill_9(tmp_path):
    holder, pid = hold_lock(tmp_path, "hold")
    try:
        message = one_line_error(ConfigError, lambda: RunLock(tmp_path, "b" * 32).acquire())
        assert message == (
            f"run config key 'output-dir': '{tmp_path}' is in use by run {'a' * 32} "
            f"(pid {pid} on host {HOST})"
        )
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, naming a dead process
        holder.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == pid
    with RunLock(tmp_path, "b" * 32):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_kept_by_the_child_of_an_exited_holder_says_so(tmp_path):
    holder, child = hold_lock(tmp_path, "fork")
    try:
        holder.wait()
        message = one_line_error(ConfigError, lambda: RunLock(tmp_path, "b" * 32).acquire())
        assert f"(pid {holder.pid} on host {HOST}, which has exited; a process" in message
    finally:
        os.kill(child, signal.SIGKILL)


def test_runs_started_in_the_same_second_get_their_own_default_folders(tmp_path):
    from datetime import datetime

    from multifcl.config import ExperimentConfig
    from multifcl.results.run_directory import default_output_dir

    now, config = datetime(2026, 12, 5, 1, 2, 3), ExperimentConfig()
    first = default_output_dir(config, tmp_path, now)
    assert first.name == "20261205-010203-prototypes"
    first.mkdir(parents=True)
    second = default_output_dir(config, tmp_path, now)
    assert second.name == "20261205-010203-prototypes-2"
