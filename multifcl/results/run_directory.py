"""Writes a run's results: config.json, partition.json, rounds.csv, metrics.json and
accuracy.png, and feeds the trackers `logger` names (run_loggers.py).

metrics.json and the plot are rewritten after every task (atomically), so an
interrupted run still leaves consistent results for the tasks it finished.

Each run has an identity, a random id written into config.json (`run-id`) and into every
checkpoint, so a resume can tell its own checkpoints from another run's.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import datetime
from pathlib import Path

from multifcl.atomic_files import replace_atomically, replace_text_atomically
from multifcl.config import ConfigError, ExperimentConfig
from multifcl.data import FederatedStream
from multifcl.features import remove_spilled_features
from multifcl.metrics import AccuracyHistory, RoundRecord
from multifcl.reporting.report_figures import run_title
from multifcl.results.folder_layout import (
    CONFIG_FILE,
    METRICS_FILE,
    PARTITION_FILE,
    PLOT_FILE,
    ROUNDS_FILE,
    RUN_FILES,
    RUN_ID_KEY,
)
from multifcl.results.partition_file import partition_counts
from multifcl.results.run_loggers import RunLoggers, require_loggers


def new_run_id() -> str:
    return uuid.uuid4().hex


def saved_run_id(folder: Path) -> str | None:
    """The id in the run's config.json; None when it has none (a run from before run ids)
    or the file cannot be read (the resume checks report that)."""
    try:
        saved = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    return saved.get(RUN_ID_KEY) if isinstance(saved, dict) else None


def default_output_dir(config: ExperimentConfig, base: Path, now: datetime | None = None) -> Path:
    """`base/runs/<timestamp>-<method>`, with `-2`, `-3`, ... when a run started in the same
    second already has that folder."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    folder = (base / "runs" / f"{stamp}-{config.method}").resolve()
    suffix = 1
    while (folder.parent / _suffixed(folder.name, suffix)).exists():
        suffix += 1
    return folder.parent / _suffixed(folder.name, suffix)


def _suffixed(name: str, suffix: int) -> str:
    return name if suffix == 1 else f"{name}-{suffix}"


class RunDirectory:
    """One run's output folder. A new run (not `resume`) gets `run_id` (a new one if not
    given) and refuses a folder that already holds a run's files."""

    def __init__(
        self, path: Path, logger: str = "none", resume: bool = False, run_id: str | None = None
    ) -> None:
        self.path = path.resolve()
        self.title = ""  # names method, data set and backbone once started
        require_loggers(logger)  # before any long work, not at the first round
        self._loggers = RunLoggers([], 1)
        self.run_id = run_id if resume else run_id or new_run_id()
        held = [name for name in RUN_FILES if (self.path / name).exists()]
        if not resume and held:
            raise ConfigError(
                f"run config key 'output-dir': {str(self.path)!r} already holds a run "
                f"({', '.join(held)}); continue it with resume-from='{self.path}' "
                "or choose another folder"
            )

    def start(self, config: ExperimentConfig, extra: dict) -> None:
        """Create the folder and write config.json (with the run id) and the rounds.csv
        header."""
        self.path.mkdir(parents=True, exist_ok=True)
        remove_spilled_features(self.path)
        payload = {RUN_ID_KEY: self.run_id, **config.to_run_config(), **extra}
        self.title = run_title(payload)
        replace_text_atomically(self.path / CONFIG_FILE, json.dumps(payload, indent=2) + "\n")
        with open(self.path / ROUNDS_FILE, "w", newline="") as handle:
            csv.writer(handle).writerow(RoundRecord.columns())
        self._loggers = RunLoggers.open(config, self.path, self.run_id, payload)

    def reopen(self, config: ExperimentConfig, rounds_kept: int) -> None:
        """Continue an interrupted run in this folder: rounds.csv keeps its header and first
        `rounds_kept` rows (rows written after the resumed checkpoint are dropped), under
        today's header (columns an older version did not write stay empty)."""
        self.title = run_title(config.to_run_config())
        remove_spilled_features(self.path)
        with open(self.path / ROUNDS_FILE, newline="") as handle:
            rows = list(csv.DictReader(handle))[:rounds_kept]
        text = io.StringIO()
        writer = csv.DictWriter(text, RoundRecord.columns(), restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        replace_text_atomically(self.path / ROUNDS_FILE, text.getvalue())
        saved = {RUN_ID_KEY: self.run_id, **config.to_run_config()}
        self._loggers = RunLoggers.open(config, self.path, self.run_id or new_run_id(), saved)

    def write_partition(
        self, data: FederatedStream, num_clients: int, held: list[int] | None = None
    ) -> None:
        """Write partition.json: per task, the clients x classes training-sample counts of
        the partitions in `held` (default: all)."""
        counts = partition_counts(data, num_clients, held)
        replace_text_atomically(self.path / PARTITION_FILE, json.dumps(counts) + "\n")

    def append_round(self, record: RoundRecord) -> None:
        with open(self.path / ROUNDS_FILE, "a", newline="") as handle:
            csv.writer(handle).writerow(record.as_row())
        self._loggers.log_round(record)

    def write_metrics(
        self, accuracy: AccuracyHistory, num_tasks: int, extra: dict | None = None
    ) -> dict:
        """Write metrics.json (`AccuracyHistory.metrics`, and `extra`) and accuracy.png for
        the tasks (stages) evaluated so far; return the metrics."""
        metrics = {**accuracy.metrics(num_tasks), **(extra or {})}
        replace_text_atomically(self.path / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
        self._plot(accuracy.cil, metrics["stage_accuracy"])
        self._loggers.log_task(metrics, self.path / PLOT_FILE)
        return metrics

    def _plot(self, cil: list[list[float | None]], stages: list[float]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 4))
        steps = list(range(1, len(cil) + 1))
        for task in range(max(len(row) for row in cil)):  # each task from when it is seen
            points = [
                (step, row[task])
                for step, row in zip(steps, cil, strict=True)
                if task < len(row) and row[task] is not None
            ]
            axis.plot(*zip(*points, strict=True), marker="o", label=f"task {task + 1}")
        axis.plot(steps, stages, color="black", linewidth=2.5, marker="s", label="A_t (mean)")
        axis.set(
            xlabel="after training task", ylabel="CIL accuracy (%)", ylim=(0, 100), xticks=steps
        )
        axis.set_title(f"CIL accuracy per task\n{self.title}", fontsize=10)
        axis.legend(fontsize=7, ncol=2)
        axis.grid(alpha=0.3)
        figure.tight_layout()
        png = self.path / PLOT_FILE
        replace_atomically(
            png, lambda stream: figure.savefig(stream, format="png", dpi=120, bbox_inches="tight")
        )
        plt.close(figure)
