"""Optional experiment trackers (`logger`): TensorBoard event files and W&B runs.

The run folder's JSON/CSV files stay the reference; a tracker is for watching runs live and
comparing them in its own tool. Every tracker is a `Sink` fed by `RunLoggers`, the one call
site: the same scalars, under the same names, on the same two axes:

- `round/*` (every numeric field of a round's record) by the global round,
  (task - 1) * rounds-per-task + round;
- `task/*`, `summary/*` and `cil_per_task/task_<j>` by the number of tasks trained so far.

Only the server logs (one tracker run per run); clients never do.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from multifcl.config import ConfigError, ExperimentConfig, logger_names
from multifcl.metrics import RoundRecord
from multifcl.results.folder_layout import TENSORBOARD_FOLDER, every_step_finished

INSTALL_HINTS = {  # logger -> the package it imports and the extra that installs it
    "tensorboard": ("tensorboard", 'pip install -e ".[tensorboard]"'),
    "wandb": ("wandb", 'pip install -e ".[wandb]"'),
}
ROUND_SCALARS = (
    "train_loss",
    "bytes_up",
    "bytes_down",
    "seconds",
    "clients",
    "failures",
    "seconds_per_step",
    "class_mean_cosine",
    "prototype_movement",
    "client_seconds",
    "client_peak_rss_mb",
    "feature_cache_hits",
    "feature_cache_misses",
)
SUMMARY_SCALARS = ("last", "avg", "forgetting", "bwt")
ROUND_AXIS = "global_round"
TASK_AXIS = "tasks_trained"


@dataclass(frozen=True)
class Scalars:
    """Named values at one step of one axis (`ROUND_AXIS` or `TASK_AXIS`)."""

    axis: str
    step: int
    values: dict[str, float]


class Sink(Protocol):
    """One tracker of one run."""

    def write(self, scalars: Scalars) -> None: ...

    def finish(self, metrics: dict, plot: Path) -> None:
        """After the last task: the final metrics and accuracy.png; then close."""


def require_loggers(value: str) -> None:
    """Raise a one-line ConfigError when a logger's package is not installed (at start,
    before any long work)."""
    for name in logger_names(value):
        package, hint = INSTALL_HINTS[name]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"run config key 'logger': {name!r} needs the {package} package; "
                f"install it with {hint}"
            )


def round_scalars(record: RoundRecord, rounds_per_task: int) -> Scalars:
    """Every numeric field of the round's record, at its global round."""
    values = {f"round/{name}": getattr(record, name) for name in ROUND_SCALARS}
    step = (record.task - 1) * rounds_per_task + record.round
    return Scalars(ROUND_AXIS, step, {k: float(v) for k, v in values.items() if v is not None})


def task_scalars(metrics: dict) -> Scalars:
    """A_t, TIL A_t, all-seen-class accuracy, the summary so far, and a[t][j] for every
    task j seen after t (j <= t; in an asynchronous stream's stage, the seen ones)."""
    tasks = metrics["tasks_finished"]
    row = metrics["accuracy_matrix"][tasks - 1]
    values = {
        "task/A_t": metrics["stage_accuracy"][-1],
        "task/til_A_t": metrics["til"]["stage_accuracy"][-1],
        "task/accuracy_all_seen_classes": metrics["accuracy_all_seen_classes"][-1],
        **{f"summary/{name}": metrics[name] for name in SUMMARY_SCALARS},
        **{f"cil_per_task/task_{j + 1}": a for j, a in enumerate(row) if a is not None},
    }
    if "val" in metrics:  # val-fraction > 0
        values["task/val_A_t"] = metrics["val"]["stage_accuracy"][-1]
    return Scalars(TASK_AXIS, tasks, {k: float(v) for k, v in values.items()})


class RunLoggers:
    """The trackers `logger` names for one run folder; none for `logger = "none"`."""

    def __init__(self, sinks: list[Sink], rounds_per_task: int) -> None:
        self.sinks = sinks
        self.rounds_per_task = rounds_per_task

    @classmethod
    def open(
        cls, config: ExperimentConfig, folder: Path, run_id: str, run_config: dict
    ) -> RunLoggers:
        """Open each tracker of the run in `folder`; `run_config` is what config.json holds."""
        sinks: list[Sink] = []
        for name in logger_names(config.logger):
            if name == "tensorboard":
                from multifcl.results.tensorboard_log import TensorBoardLog

                sinks.append(TensorBoardLog(folder / TENSORBOARD_FOLDER))
            else:
                from multifcl.results.wandb_log import WandbLog

                sinks.append(WandbLog(config, folder, run_id, run_config))
        return cls(sinks, config.rounds_per_task)

    def log_round(self, record: RoundRecord) -> None:
        """A training round's scalars (the clients' evaluation rows are in rounds.csv only)."""
        if record.phase == "train":
            self._write(round_scalars(record, self.rounds_per_task))

    def log_task(self, metrics: dict, plot: Path) -> None:
        """The task's scalars; after the last task also the final metrics and plot."""
        self._write(task_scalars(metrics))
        if every_step_finished(metrics):
            for sink in self.sinks:
                sink.finish(metrics, plot)

    def _write(self, scalars: Scalars) -> None:
        for sink in self.sinks:
            sink.write(scalars)
