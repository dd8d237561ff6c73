"""The layout of a run folder, the one place its file names are spelled, and reading it
back with one error type (`RunFolderError`) for resume, reporting and analysis."""

from __future__ import annotations

import csv
import json
from pathlib import Path

CONFIG_FILE = "config.json"  # the run config, the run id and the stream's facts
METRICS_FILE = "metrics.json"  # accuracy matrices and their summaries, after every task
ROUNDS_FILE = "rounds.csv"  # one row per attempt of a round: costs and failed clients
PARTITION_FILE = "partition.json"  # per task, clients x classes training-sample counts
PLOT_FILE = "accuracy.png"
TENSORBOARD_FOLDER = "tensorboard"
ADAPTERS_FOLDER = "adapters"  # adapters exported for reuse outside this tool
CHECKPOINT_FOLDER = "checkpoints"  # checkpoint-<step>.npz, the newest two
TASK_FOLDER = "task-checkpoints"  # task-<t>.npz with save-task-checkpoints
CLIENT_SNAPSHOT_FOLDER = "client-snapshots"  # client-<node>.npz with save-task-checkpoints
RUN_ID_KEY = "run-id"  # the run's identity in config.json and in every checkpoint
# what a run writes first: a folder holding any of them belongs to a run
RUN_FILES = (CONFIG_FILE, ROUNDS_FILE, METRICS_FILE, CHECKPOINT_FOLDER, TASK_FOLDER)
MISSING_HINT = "not a run folder, or one whose first task has not finished"


class RunFolderError(ValueError):
    """A folder is not a readable run folder; the message names the folder and file."""


def existing_run_folder(path: Path) -> Path:
    """The folder, resolved; RunFolderError when it does not exist."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise RunFolderError(f"run folder {str(path)!r} does not exist")
    return path


def read_json(folder: Path, name: str) -> dict:
    """A JSON file of the run folder (`CONFIG_FILE`, `METRICS_FILE`, `PARTITION_FILE`)."""
    file = folder / name
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{str(file)!r} is missing: {MISSING_HINT}") from None
    except (OSError, ValueError) as error:
        raise RunFolderError(f"{str(file)!r} cannot be read: {error}") from None


def read_rounds(folder: Path) -> list[dict[str, str]]:
    """rounds.csv's rows as written, once the columns reports read are numbers."""
    file = folder / ROUNDS_FILE
    try:
        with open(file, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            int(row["task"]), int(row["round"]), float(row["bytes_up"]), float(row["bytes_down"])
        return rows
    except FileNotFoundError:
        raise RunFolderError(f"{str(file)!r} is missing: {MISSING_HINT}") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunFolderError(f"{str(file)!r} cannot be read: {error!r}") from None


def is_finished(folder: Path) -> bool:
    """True when the folder's metrics.json is readable and records every task as finished."""
    try:
        return every_step_finished(read_json(folder, METRICS_FILE))
    except (RunFolderError, KeyError, TypeError):
        return False


def every_step_finished(metrics: dict) -> bool:
    """True when metrics.json records every task (an asynchronous stream: every stage)."""
    return metrics["tasks_finished"] == metrics.get("num_stages", metrics["num_tasks"])
