"""A finished run read back for analysis: its config, its per-task checkpoints, and any
client snapshots, with one-line errors for a folder that cannot be analysed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.methods import State
from multifcl.results.folder_layout import (
    CLIENT_SNAPSHOT_FOLDER,
    CONFIG_FILE,
    TASK_FOLDER,
    RunFolderError,
    read_json,
)


class AnalysisError(RunFolderError):
    """The run folder or an analysis option cannot be used; the message is one line."""


@dataclass
class FinishedRun:
    """A run directory with `config.json` and `task-checkpoints/task-<t>.npz`."""

    path: Path
    config: ExperimentConfig
    task_checkpoints: list[Path]  # index t-1 holds the state after task t
    client_snapshots: list[Path]

    @classmethod
    def open(cls, path: Path) -> FinishedRun:
        path = Path(path).expanduser().resolve()
        if not path.is_dir():
            raise AnalysisError(f"run directory {str(path)!r} does not exist")
        if not (path / CONFIG_FILE).is_file():
            raise AnalysisError(f"{str(path)!r} is not a run directory (no {CONFIG_FILE})")
        checkpoints = sorted((path / TASK_FOLDER).glob("task-*.npz"))
        if not checkpoints:
            raise AnalysisError(
                f"{str(path)!r} has no per-task checkpoints ({TASK_FOLDER}/task-01.npz ...); "
                "rerun it with save-task-checkpoints = true"
            )
        expected = [f"task-{t:02d}.npz" for t in range(1, len(checkpoints) + 1)]
        if [p.name for p in checkpoints] != expected:
            names = ", ".join(p.name for p in checkpoints)
            raise AnalysisError(
                f"{str(path / TASK_FOLDER)!r}: expected {', '.join(expected)}, found {names}"
            )
        snapshots = sorted((path / CLIENT_SNAPSHOT_FOLDER).glob("client-*.npz"))
        return cls(path, _read_config(path), checkpoints, snapshots)

    @property
    def num_tasks(self) -> int:
        return len(self.task_checkpoints)


def load_state(path: Path, expected: State, growing: frozenset[str] = frozenset()) -> State:
    """The state stored in `path`, checked against the keys and shapes of `expected` (the
    keys in `growing`, the method's `growing_state_keys`, against their keys only)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            state = {name: archive[name] for name in archive.files}
    except Exception as error:  # noqa: BLE001 - any failure to read means the file is unusable
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise AnalysisError(f"checkpoint {str(path)!r} is unreadable: {reason}") from None
    missing = sorted(set(expected) - set(state))
    if missing:
        raise AnalysisError(
            f"checkpoint {str(path)!r} lacks {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}: it was written by another method or config"
        )
    for key, value in expected.items():
        if key in growing:
            continue
        if state[key].size != value.size:
            raise AnalysisError(
                f"checkpoint {str(path)!r}: {key!r} has shape {state[key].shape}, the run's "
                f"method expects {value.shape}"
            )
        state[key] = state[key].reshape(value.shape)  # scalars may travel as shape (1,)
    return state


def _read_config(path: Path) -> ExperimentConfig:
    """The run's config; extra keys the server stores beside it (class order ...) are skipped."""
    try:
        return ExperimentConfig.from_saved_run(read_json(path, CONFIG_FILE))
    except ConfigError as error:
        raise AnalysisError(f"{str(path / CONFIG_FILE)!r}: {error}") from None
