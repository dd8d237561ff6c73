"""Crash-safe checkpoints: where a run stands, written atomically after every round.

A checkpoint holds the global state, the accuracy history, the position in the task
stream and the server's random-number generator states, so a killed run continues from
its last complete round with the same results as a run that was never interrupted.

Files live in `<run>/checkpoints/checkpoint-<step>.npz` (a plain `np.savez` archive, no
pickle). Each is written to a temporary file, flushed to disk and renamed into place, and
the two newest are kept: a truncated or corrupt newest file falls back to the one before.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from logging import getLogger
from pathlib import Path

import numpy as np
import torch

from multifcl.atomic_files import replace_atomically
from multifcl.metrics.accuracy_history import AccuracyHistory
from multifcl.metrics.client_accuracy import ClientStage
from multifcl.results.folder_layout import CHECKPOINT_FOLDER, CLIENT_SNAPSHOT_FOLDER, TASK_FOLDER

State = dict[str, np.ndarray]

KEPT = 2  # the newest and the previous good one
FORMAT_VERSION = 1
_STATE_PREFIX = "state/"
_LOCAL_PREFIX = "local/"  # local/<partition id>/<state key>
_META = "meta"
_NUMPY_RNG = "rng/numpy"
_TORCH_RNG = "rng/torch"
_CUDA_RNG_PREFIX = "rng/cuda-"

logger = getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file cannot be used (missing, truncated, corrupt or of another format)."""


@dataclass
class RngStates:
    """The process-wide generators of Python, numpy and torch (CPU and every CUDA device)."""

    python: tuple
    numpy: tuple
    torch: np.ndarray
    cuda: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def capture(cls) -> RngStates:
        cuda = [s.numpy() for s in torch.cuda.get_rng_state_all()] if _cuda_ready() else []
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state().numpy(), cuda)

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(torch.from_numpy(self.torch.copy()))
        if self.cuda and torch.cuda.is_available() and len(self.cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.from_numpy(s.copy()) for s in self.cuda])


@dataclass
class Checkpoint:
    """A run's position after a merged round or after a task's evaluation.

    `task` is the 0-based task in progress; `rounds_done` of its rounds are merged into
    `state`; the task is evaluated once `accuracy` has its rows. `rounds_logged` is the number of
    rows of rounds.csv that belong to this point (later rows are dropped on resume).
    `run_id` is the identity of the run that wrote it (None before run ids existed).
    `local_models` (eval-local) holds, by partition id, each client's model after its last
    local training in the task so far, for the clients' evaluation at the task's end.
    """

    step: int
    task: int
    rounds_done: int
    state: State
    accuracy: AccuracyHistory
    rounds_logged: int
    rng: RngStates
    run_id: str | None = None
    local_models: dict[int, State] = field(default_factory=dict)

    @property
    def task_evaluated(self) -> bool:
        return self.accuracy.tasks_evaluated > self.task

    @property
    def file_name(self) -> str:
        return f"checkpoint-{self.step:06d}.npz"

    def save(self, run_path: Path) -> Path:
        """Write `checkpoints/checkpoint-<step>.npz` atomically; keep only the newest two."""
        folder = run_path / CHECKPOINT_FOLDER
        path = folder / self.file_name
        _write_npz(path, self._arrays())
        for old in _checkpoint_files(folder)[KEPT:]:
            old.unlink(missing_ok=True)
        return path

    def _arrays(self) -> dict[str, np.ndarray]:
        python_version, python_state, python_gauss = self.rng.python
        numpy_kind, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = self.rng.numpy
        meta = {
            "format": FORMAT_VERSION,
            "run_id": self.run_id,
            "step": self.step,
            "task": self.task,
            "rounds_done": self.rounds_done,
            "cil": self.accuracy.cil,
            "til": self.accuracy.til,
            "cil_all_seen": self.accuracy.cil_all_seen,
            "cil_equizero": self.accuracy.cil_equizero,
            "client_stages": [stage.as_json() for stage in self.accuracy.clients],
            "val_cil": self.accuracy.val_cil,
            "val_til": self.accuracy.val_til,
            "local_models": {str(p): sorted(s) for p, s in sorted(self.local_models.items())},
            "rounds_logged": self.rounds_logged,
            "state_keys": sorted(self.state),
            "python_rng": [python_version, list(python_state), python_gauss],
            "numpy_rng": [numpy_kind, int(numpy_pos), int(numpy_has_gauss), float(numpy_gauss)],
            "cuda_devices": len(self.rng.cuda),
        }
        arrays = {_STATE_PREFIX + key: np.asarray(value) for key, value in self.state.items()}
        for partition, local in self.local_models.items():
            for key, value in local.items():
                arrays[f"{_LOCAL_PREFIX}{partition}/{key}"] = np.asarray(value)
        arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        arrays[_NUMPY_RNG] = np.asarray(numpy_keys, dtype=np.uint32)
        arrays[_TORCH_RNG] = self.rng.torch
        for index, cuda_state in enumerate(self.rng.cuda):
            arrays[f"{_CUDA_RNG_PREFIX}{index}"] = cuda_state
        return arrays

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Read and check one checkpoint file; CheckpointError (one line) when unusable."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}  # reads every CRC
            meta = json.loads(arrays.pop(_META).tobytes().decode())
            if meta.get("format") != FORMAT_VERSION:
                raise CheckpointError(f"format {meta.get('format')!r}, expected {FORMAT_VERSION}")
            state = {
                name[len(_STATE_PREFIX) :]: value
                for name, value in arrays.items()
                if name.startswith(_STATE_PREFIX)
            }
            if sorted(state) != meta["state_keys"]:
                raise CheckpointError("the global state's arrays are incomplete")
            python_version, python_state, python_gauss = meta["python_rng"]
            numpy_kind, numpy_pos, numpy_has_gauss, numpy_gauss = meta["numpy_rng"]
            rng = RngStates(
                (python_version, tuple(python_state), python_gauss),
                (numpy_kind, arrays[_NUMPY_RNG], numpy_pos, numpy_has_gauss, numpy_gauss),
                arrays[_TORCH_RNG],
                [arrays[f"{_CUDA_RNG_PREFIX}{i}"] for i in range(meta["cuda_devices"])],
            )
            return cls(
                step=int(meta["step"]),
                task=int(meta["task"]),
                rounds_done=int(meta["rounds_done"]),
                state=state,
                accuracy=AccuracyHistory(
                    meta["cil"],
                    meta["til"],
                    meta["cil_all_seen"],
                    meta.get("cil_equizero", []),
                    [ClientStage.from_json(saved) for saved in meta.get("client_stages", [])],
                    meta.get("val_cil", []),
                    meta.get("val_til", []),
                ),
                rounds_logged=int(meta["rounds_logged"]),
                rng=rng,
                run_id=meta.get("run_id"),
                local_models=_local_models(arrays, meta.get("local_models", {})),
            )
        except CheckpointError as error:
            raise CheckpointError(f"checkpoint {str(path)!r} is unusable: {error}") from None
        except Exception as error:  # noqa: BLE001 - any failure to read means the file is unusable
            reason = " ".join(f"{type(error).__name__}: {error}".split())
            raise CheckpointError(f"checkpoint {str(path)!r} is unusable: {reason}") from None


def _local_models(arrays: Mapping[str, np.ndarray], keys: Mapping[str, list]) -> dict:
    """The saved local models by partition id; CheckpointError when one is incomplete."""
    models = {}
    for partition, names in keys.items():
        prefix = f"{_LOCAL_PREFIX}{partition}/"
        local = {n[len(prefix) :]: v for n, v in arrays.items() if n.startswith(prefix)}
        if sorted(local) != names:
            raise CheckpointError(f"client {partition}'s local model is incomplete")
        models[int(partition)] = local
    return models


def latest_checkpoint(run_path: Path, warn: Callable[[str], None] = logger.warning) -> Checkpoint:
    """The newest checkpoint of the run that reads cleanly.

    Each unusable newer file is reported by `warn` in one line and renamed to `*.corrupt`,
    so the next checkpoint written continues the sequence from the good one. Raises
    CheckpointError when the run has no usable checkpoint at all.
    """
    folder = run_path / CHECKPOINT_FOLDER
    for stale in folder.glob("*.tmp"):  # a write that was cut off before its rename
        stale.unlink(missing_ok=True)
    candidates = _checkpoint_files(folder)
    for index, path in enumerate(candidates):
        try:
            return Checkpoint.load(path)
        except CheckpointError as error:
            fallback = candidates[index + 1].name if index + 1 < len(candidates) else "none left"
            warn(f"{error}; falling back to the previous one ({fallback})")
            path.replace(path.with_name(path.name + ".corrupt"))
    found = "no checkpoint files" if not candidates else "no readable checkpoint"
    raise CheckpointError(f"{str(folder)!r} holds {found}")


def save_task_state(run_path: Path, task_index: int, state: State) -> Path:
    """Keep `task-checkpoints/task-<t>.npz` (t 1-based): the global state after that task,
    keys as in the state, for later analysis."""
    path = run_path / TASK_FOLDER / f"task-{task_index + 1:02d}.npz"
    _write_npz(path, state)
    return path


def save_client_states(run_path: Path, states: Mapping[int, State]) -> list[Path]:
    """Keep `client-snapshots/client-<node id>.npz`: each client's model after the run's
    last round (the state that round started from, with only that client's update merged),
    in the global state's format, for client-against-global analysis."""
    paths = []
    for node, state in sorted(states.items()):
        path = run_path / CLIENT_SNAPSHOT_FOLDER / f"client-{node}.npz"
        _write_npz(path, state)
        paths.append(path)
    return paths


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """`arrays` as an .npz (no pickle), replaced atomically and flushed to disk."""
    values = {key: np.asarray(value) for key, value in arrays.items()}
    replace_atomically(path, lambda stream: np.savez(stream, **values), durable=True)


def _checkpoint_files(folder: Path) -> list[Path]:
    """Checkpoint files, newest first."""
    return sorted(folder.glob("checkpoint-*.npz"), reverse=True)


def _cuda_ready() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()
