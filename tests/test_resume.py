"""Checkpoints and exact resume: a run killed with SIGKILL and resumed from its run folder
ends with the same accuracy matrix, global state and rounds.csv as a run never stopped.

The runs happen in subprocesses (`python -m tests.test_resume CONFIG KILL`) that drive the
real strategy and ClientApp handler through the in-process grid and kill themselves hard
at a chosen point.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.metrics import AccuracyHistory
from multifcl.results.checkpoints import (
    Checkpoint,
    CheckpointError,
    RngStates,
    latest_checkpoint,
    save_task_state,
)
from multifcl.results.resume import open_resumable_run

REPO = Path(__file__).resolve().parents[1]
RUN = {  # tests/conftest.py TINY with 3 rounds per task, fine-tuning (SGD with seeds), 2 of 3
    # clients sampled per round (the draw must survive SIGKILL and resume too)
    "dataset": "synthetic",
    "backbone": "vit-tiny",
    "num-tasks": 2,
    "rounds-per-task": 3,
    "local-epochs": 1,
    "batch-size": 16,
    "partition": "dirichlet",
    "beta": 0.5,
    "method": "finetune",
    "fraction-train": 0.67,
    "eval-local": True,  # the clients' per-client matrices must resume exactly too
    "val-fraction": 0.1,  # and the validation split's matrices
}
NODES = 3
TIMING_COLUMNS = ("seconds", "seconds_per_step", "client_seconds", "client_peak_rss_mb")


def run_worker(run_config: dict, kill: dict | None = None) -> subprocess.CompletedProcess:
    """One run in a fresh process; `kill` names where it SIGKILLs itself."""
    return subprocess.run(
        [sys.executable, "-m", "tests.test_resume", json.dumps(run_config), json.dumps(kill)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run (keeping the per-task states too)."""
    folder = tmp_path_factory.mktemp("reference") / "run"
    done = run_worker({**RUN, "output-dir": str(folder), "save-task-checkpoints": True})
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def comparable_rows(folder: Path) -> list[dict]:
    rows = list(csv.DictReader((folder / "rounds.csv").open()))
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def assert_same_results(folder: Path, reference: Path) -> None:
    metrics = json.loads((folder / "metrics.json").read_text())
    expected = json.loads((reference / "metrics.json").read_text())
    assert metrics["tasks_finished"] == 2
    assert metrics["accuracy_matrix"] == expected["accuracy_matrix"]
    clients = metrics["client_accuracy"]  # the local models of task 2 round 1 were resumed
    assert (
        clients["local"]["accuracy_matrices"]
        == expected["client_accuracy"]["local"]["accuracy_matrices"]
    )
    trained = [row for row in comparable_rows(reference) if row["phase"] == "train"]
    task2 = [set(map(int, row["sampled_clients"].split(";"))) for row in trained[-3:]]
    scored = {c for c, v in enumerate(clients["local"]["accuracy_all_seen"][-1]) if v is not None}
    assert scored == set().union(*task2)  # every client trained in task 2 has its own model
    assert metrics["val_accuracy_matrix"][1][1] is not None  # val-fraction's rows resumed
    assert metrics == expected
    state, expected_state = latest_checkpoint(folder).state, latest_checkpoint(reference).state
    assert sorted(state) == sorted(expected_state)
    assert all(np.array_equal(state[k], expected_state[k]) for k in state)
    assert comparable_rows(folder) == comparable_rows(reference)
    draws = {row["sampled_clients"] for row in trained}
    assert len(draws) > 1 and all(len(d.split(";")) == 2 for d in draws)


def test_killed_twice_and_resumed_gives_results_identical_to_an_unbroken_run(reference, tmp_path):
    """Killed mid-round in task 2; its newest checkpoint then truncated; the resumed run is
    killed again while evaluating task 2; the second resume finishes the run."""
    folder = tmp_path / "run"
    config = {**RUN, "output-dir": str(folder), "save-task-checkpoints": True}
    killed = run_worker(config, {"handler": [1, 2, 1]})  # task 2, round 2, second client
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [(r["task"], r["round"], r["phase"]) for r in comparable_rows(folder)] == [
        ("1", "1", "train"),
        ("1", "2", "train"),
        ("1", "3", "train"),
        ("1", "4", "evaluate"),  # the clients' evaluation after task 1
        ("2", "1", "train"),
    ]
    newest = max((folder / "checkpoints").glob("checkpoint-*.npz"))
    assert newest.name == "checkpoint-000005.npz"  # initial, 3 rounds, evaluation, 1 round
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    resume = {**config, "resume-from": str(folder), "output-dir": ""}
    killed = run_worker(resume, {"evaluate": 1})  # evaluating task 2 (task 1 was evaluated)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    warnings = [line for line in killed.stderr.splitlines() if "unusable" in line]
    assert len(warnings) == 1, killed.stderr[-3000:]
    assert "checkpoint-000005.npz" in warnings[0]
    assert "falling back to the previous one (checkpoint-000004.npz)" in warnings[0]
    assert "next: task 2 round 1" in killed.stderr  # the round of the bad file is redone
    assert json.loads((folder / "metrics.json").read_text())["tasks_finished"] == 1

    resumed = run_worker(resume)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "next: evaluation of task 2" in resumed.stderr
    assert "unusable" not in resumed.stderr
    assert_same_results(folder, reference)
    for task in (1, 2):  # per-task states, bit-identical to the uninterrupted run's
        name = f"task-checkpoints/task-{task:02d}.npz"
        with np.load(folder / name) as saved, np.load(reference / name) as expected:
            assert saved.files == expected.files
            assert all(np.array_equal(saved[k], expected[k]) for k in saved.files)


def test_task_checkpoints_hold_the_global_state_after_each_task(reference):
    final = latest_checkpoint(reference).state
    with np.load(reference / "task-checkpoints" / "task-02.npz") as last:
        assert sorted(last.files) == sorted(final)
        assert all(np.array_equal(last[k], final[k]) for k in final)
    with np.load(reference / "task-checkpoints" / "task-01.npz") as first:
        assert not all(np.array_equal(first[k], final[k]) for k in final)
    assert json.loads((reference / "config.json").read_text())["backbone"] == "vit-tiny"


def test_resuming_a_finished_run_returns_its_metrics_without_training(reference, tmp_path):
    from tests.conftest import run_in_process

    config = ExperimentConfig.from_run_config({**RUN, "resume-from": str(reference)})
    metrics, grid = run_in_process(config, NODES, base_dir=tmp_path)
    assert grid.sent == []
    assert metrics == json.loads((reference / "metrics.json").read_text())


def test_a_resume_with_other_clients_stops_before_any_round(reference, tmp_path):
    from server.continual_loop import run_continual_learning
    from tests.conftest import in_process_grid

    config = ExperimentConfig.from_run_config({**RUN, "resume-from": str(reference)})
    grid = in_process_grid(config, NODES + 1)
    with pytest.raises(ConfigError, match="^run config key 'resume-from': the run had 3 clients"):
        run_continual_learning(grid, config, tmp_path)
    assert grid.sent == []


def test_a_resume_with_result_changing_keys_is_refused_listing_them(reference):
    changed = {**RUN, "lr": 0.02, "seed": 7, "resume-from": str(reference)}
    neutral = {"round-timeout": 60.0, "min-fit-fraction": 0.2, "max-round-retries": 5}
    config = ExperimentConfig.from_run_config({**changed, **neutral})
    with pytest.raises(ConfigError) as refused:
        open_resumable_run(config, warn=print)
    message = str(refused.value)
    assert message.startswith("run config key 'resume-from': ") and "\n" not in message
    assert "lr: 0.01 -> 0.02" in message and "seed: 0 -> 7" in message
    assert "round-timeout" not in message and "min-fit-fraction" not in message
    fine = ExperimentConfig.from_run_config({**RUN, **neutral, "resume-from": str(reference)})
    assert open_resumable_run(fine, warn=print)[0] == reference


@pytest.mark.parametrize(
    "make_folder, expected",
    [
        (lambda tmp: tmp / "missing", "does not exist"),
        (lambda tmp: tmp, "has no readable config.json"),
    ],
)
def test_a_resume_from_a_folder_without_a_run_is_one_line(make_folder, expected, tmp_path):
    config = ExperimentConfig.from_run_config({**RUN, "resume-from": str(make_folder(tmp_path))})
    with pytest.raises(ConfigError, match=f"^run config key 'resume-from': .*{expected}"):
        open_resumable_run(config, warn=print)


def test_a_resume_from_a_run_without_checkpoints_is_one_line(tmp_path):
    config = ExperimentConfig.from_run_config({**RUN, "resume-from": str(tmp_path)})
    (tmp_path / "config.json").write_text(json.dumps(config.to_run_config()))
    with pytest.raises(ConfigError) as refused:
        open_resumable_run(config, warn=print)
    assert str(refused.value) == (
        f"run config key 'resume-from': nothing to resume from: "
        f"'{tmp_path / 'checkpoints'}' holds no checkpoint files"
    )


def test_a_resume_into_another_output_dir_is_refused(reference, tmp_path):
    config = ExperimentConfig.from_run_config(
        {**RUN, "resume-from": str(reference), "output-dir": str(tmp_path)}
    )
    with pytest.raises(ConfigError, match="^run config key 'output-dir': a resumed run"):
        open_resumable_run(config, warn=print)


# --- the checkpoint files themselves -------------------------------------------------------


def make_checkpoint(step: int) -> Checkpoint:
    state = {
        "head.weight": np.arange(12, dtype=np.float32).reshape(3, 4) * step,
        "counter": np.array(step, dtype=np.int64),  # 0-d arrays stay 0-d
    }
    return Checkpoint(
        step=step,
        task=1,
        rounds_done=step % 3,
        state=state,
        accuracy=AccuracyHistory(
            [[97.5], [88.25, 0.1 + 0.2]],
            [[100.0], [99.0, 98.0]],
            [97.5, 90.0],
            val_cil=[[95.0], [80.0, 1 / 3]],
            val_til=[[100.0], [90.0, 2 / 3]],
        ),
        rounds_logged=step + 4,
        rng=RngStates.capture(),
    )


def test_a_checkpoint_reads_back_exactly_including_the_random_generators(tmp_path):
    checkpoint = make_checkpoint(5)
    path = checkpoint.save(tmp_path)
    expected = (random.random(), np.random.rand(3), torch.rand(3))
    loaded = Checkpoint.load(path)
    assert loaded.state["counter"].shape == () and loaded.state["counter"].dtype == np.int64
    assert np.array_equal(loaded.state["head.weight"], checkpoint.state["head.weight"])
    assert loaded.accuracy == checkpoint.accuracy and loaded.accuracy.cil[1][1] == 0.1 + 0.2
    assert (loaded.step, loaded.task, loaded.rounds_done, loaded.rounds_logged) == (5, 1, 2, 9)
    assert loaded.task_evaluated
    loaded.rng.restore()
    assert random.random() == expected[0]
    assert np.array_equal(np.random.rand(3), expected[1])
    assert torch.equal(torch.rand(3), expected[2])


def test_only_the_two_newest_checkpoints_are_kept_and_writes_are_atomic(tmp_path):
    for step in range(1, 5):
        make_checkpoint(step).save(tmp_path)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["checkpoint-000003.npz", "checkpoint-000004.npz"]
    (tmp_path / "checkpoints" / "checkpoint-000005abc.tmp").write_bytes(b"cut off")
    assert latest_checkpoint(tmp_path).step == 4
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "flip-a-byte", "empty"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(damage, tmp_path):
    for step in (1, 2):
        make_checkpoint(step).save(tmp_path)
    newest = tmp_path / "checkpoints" / "checkpoint-000002.npz"
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "flip-a-byte":  # inside the stored state: the archive's CRC catches it
        stored = make_checkpoint(2).state["head.weight"].tobytes()
        data[data.index(stored) + 20] ^= 0xFF
    else:
        data = bytearray()
    newest.write_bytes(bytes(data))
    warnings: list[str] = []
    loaded = latest_checkpoint(tmp_path, warn=warnings.append)
    assert loaded.step == 1
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith(f"checkpoint '{newest}' is unusable: ")
    assert warnings[0].endswith("falling back to the previous one (checkpoint-000001.npz)")
    assert (tmp_path / "checkpoints" / "checkpoint-000002.npz.corrupt").exists()


def test_no_usable_checkpoint_is_an_error(tmp_path):
    make_checkpoint(1).save(tmp_path)
    (tmp_path / "checkpoints" / "checkpoint-000001.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="holds no readable checkpoint"):
        latest_checkpoint(tmp_path, warn=lambda line: None)


def test_task_state_files_hold_the_state_keys_exactly(tmp_path):
    state = make_checkpoint(2).state
    path = save_task_state(tmp_path, 0, state)
    assert path == tmp_path / "task-checkpoints" / "task-01.npz"
    with np.load(path) as saved:
        assert sorted(saved.files) == sorted(state)
        assert all(np.array_equal(saved[k], state[k]) for k in state)


# --- the subprocess worker -----------------------------------------------------------------


ASYNCHRONOUS_RUN = {  # RUN as an asynchronous stream (which has no eval-local, val-fraction)
    **{key: value for key, value in RUN.items() if key not in ("eval-local", "val-fraction")},
    "method": "lwf",
    "rounds-per-task": 2,
    "client-task-order": "per-client",
    "client-start-delay-rounds": 2,
}


def test_an_asynchronous_run_killed_while_evaluating_a_stage_resumes_exactly(tmp_path):
    reference = tmp_path / "reference"
    assert run_worker({**ASYNCHRONOUS_RUN, "output-dir": str(reference)}).returncode == 0
    folder = tmp_path / "run"
    killed = run_worker({**ASYNCHRONOUS_RUN, "output-dir": str(folder)}, {"evaluate": 2})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert json.loads((folder / "metrics.json").read_text())["tasks_finished"] == 1
    resume = {**ASYNCHRONOUS_RUN, "resume-from": str(folder)}
    assert run_worker(resume).returncode == 0
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics == json.loads((reference / "metrics.json").read_text())
    assert metrics["num_stages"] == 3 and metrics["tasks_finished"] == 3
    state, expected = latest_checkpoint(folder).state, latest_checkpoint(reference).state
    assert sorted(state) == sorted(expected)
    assert all(np.array_equal(state[k], expected[k]) for k in state)
    assert comparable_rows(folder) == comparable_rows(reference)


def _worker(run_config: dict, kill: dict | None) -> None:

    import server.continual_loop as loop
    from clients.client_app import train
    from server.in_process_grid import InProcessGrid

    kill = kill or {}

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def handler(message, context):
        where = [message.content["config"]["task"], message.content["config"]["round"]]
        if kill.get("handler") == [*where, context.node_config["partition-id"]]:
            die()
        return train(message, context)

    evaluations = []

    def or_die(evaluate):  # a task's evaluation, or an asynchronous stage's
        def evaluate_or_die(*args, **kwargs):
            evaluations.append(1)
            if kill.get("evaluate") == len(evaluations):
                die()
            return evaluate(*args, **kwargs)

        return evaluate_or_die

    loop.evaluate_seen_tasks = or_die(loop.evaluate_seen_tasks)
    loop.evaluate_stage = or_die(loop.evaluate_stage)
    config = ExperimentConfig.from_run_config(run_config)
    grid = InProcessGrid(handler, config.to_run_config(), NODES)
    loop.run_continual_learning(grid, config, base_dir=Path.cwd())


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]), json.loads(sys.argv[2]))


class _Crash(BaseException):
    """Stops an in-process run as a crash would (not a client error the server survives)."""


@pytest.mark.parametrize(
    "method, keys",
    [
        ("analytic", {"analytic-projection-dim": 48}),
        ("fedproto", {"rounds-per-task": 2}),
        ("coda-prompt", {"rounds-per-task": 2, "coda-pool-size": 10}),  # l2p: same base
        ("lorm", {"lorm-rank": 4}),
        ("multifcl", {"use-text-init": False, "task1-schedule": "joint"}),  # sampled rows
    ],
)
def test_a_run_stopped_mid_task_resumes_exactly_for_each_method(method, keys, tmp_path):
    """In process (the SIGKILL test above covers `finetune`): stopped in task 2's second
    round, resumed from its checkpoints, the run ends as one never stopped."""
    from clients.client_app import train
    from tests.conftest import run_in_process

    run = {**RUN, "method": method, **keys}
    reference = ExperimentConfig.from_run_config({**run, "output-dir": str(tmp_path / "a")})
    run_in_process(reference, NODES)

    def crashing(message, context):
        config = message.content["config"]
        if (config["task"], config["round"]) == (1, 2):
            raise _Crash
        return train(message, context)

    folder = tmp_path / "b"
    stopped = ExperimentConfig.from_run_config({**run, "output-dir": str(folder)})
    with pytest.raises(_Crash):
        run_in_process(stopped, NODES, handler=crashing)
    resumed = ExperimentConfig.from_run_config({**run, "resume-from": str(folder)})
    _, grid = run_in_process(resumed, NODES, base_dir=tmp_path)
    rounds = {(m.content["config"]["task"], m.content["config"]["round"]) for m in grid.sent}
    assert min(rounds) == (1, 2)  # from the checkpoint: task 1 and round 1 are not redone
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics == json.loads((tmp_path / "a" / "metrics.json").read_text())
    state, expected = latest_checkpoint(folder).state, latest_checkpoint(tmp_path / "a").state
    assert sorted(state) == sorted(expected)
    assert all(np.array_equal(state[k], expected[k]) for k in state)
