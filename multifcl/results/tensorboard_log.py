"""Optional TensorBoard event files (`logger = "tensorboard"`): per-round and per-task scalars.

Written beside the JSON/CSV results, which stay the reference; the events are for watching
a run live (`tensorboard --logdir <output-dir>/tensorboard`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from multifcl.config import ConfigError
from multifcl.metrics import RoundRecord

INSTALL_HINT = 'pip install -e ".[tensorboard]"'
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
)
SUMMARY_SCALARS = ("last", "avg", "forgetting", "bwt")


def require_tensorboard() -> None:
    """Raise a one-line ConfigError when the tensorboard package is not installed."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "run config key 'logger': 'tensorboard' needs the tensorboard package; "
            f"install it with {INSTALL_HINT}"
        )


class TensorBoardLog:
    """Scalars of one run: `round/*` by global round, `task/*`, `summary/*` and
    `cil_per_task/*` by the number of tasks trained so far."""

    def __init__(self, folder: Path, rounds_per_task: int) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.rounds_per_task = rounds_per_task
        self._writer = SummaryWriter(log_dir=str(folder))

    def log_round(self, record: RoundRecord) -> None:
        """Every numeric field of a training round's record at step (task - 1) * rounds +
        round (the clients' evaluation rows are in rounds.csv only)."""
        if record.phase != "train":
            return
        step = (record.task - 1) * self.rounds_per_task + record.round
        for name in ROUND_SCALARS:
            value = getattr(record, name)
            if value is not None:
                self._writer.add_scalar(f"round/{name}", float(value), step)
        self._writer.flush()

    def log_task(self, metrics: dict) -> None:
        """A_t, TIL A_t, all-seen-class accuracy, the summary so far, and a[t][j] for j <= t."""
        tasks = metrics["tasks_finished"]
        row = metrics["accuracy_matrix"][tasks - 1]
        scalars = {
            "task/A_t": metrics["stage_accuracy"][-1],
            "task/til_A_t": metrics["til"]["stage_accuracy"][-1],
            "task/accuracy_all_seen_classes": metrics["accuracy_all_seen_classes"][-1],
            **{f"summary/{name}": metrics[name] for name in SUMMARY_SCALARS},
            **{f"cil_per_task/task_{j + 1}": row[j] for j in range(tasks)},
        }
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, float(value), tasks)
        self._writer.flush()
        if tasks == metrics["num_tasks"]:
            self._writer.close()
