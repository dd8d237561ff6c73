"""A run directory read back: config.json, metrics.json, rounds.csv and partition.json."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from multifcl.results.partition_file import PARTITION_FILE

MISSING_HINT = "not a run folder, or one whose first task has not finished"


class RunFolderError(ValueError):
    """A folder is not a readable run directory; the message names the folder and file."""


@dataclass
class RunResults:
    """One run's saved results."""

    path: Path
    config: dict
    metrics: dict
    rounds: list[dict[str, str]]  # rounds.csv rows as written (a retried round has several)

    @classmethod
    def load(cls, path: Path) -> RunResults:
        path = Path(path).resolve()
        if not path.is_dir():
            raise RunFolderError(f"run folder {str(path)!r} does not exist")
        return cls(
            path,
            _read_json(path / "config.json"),
            _read_json(path / "metrics.json"),
            _read_rounds(path / "rounds.csv"),
        )

    @property
    def name(self) -> str:
        return self.path.name

    def partition(self) -> dict | None:
        """The saved partition.json, or None for runs written before it existed."""
        file = self.path / PARTITION_FILE
        return _read_json(file) if file.is_file() else None

    def per_round(self, column: str) -> list[tuple[int, float]]:
        """(task, value) for each round in order; the attempts of a retried round are summed."""
        totals: dict[tuple[int, int], float] = {}
        for row in self.rounds:
            key = (int(row["task"]), int(row["round"]))
            totals[key] = totals.get(key, 0.0) + float(row.get(column) or 0.0)
        return [(task, value) for (task, _), value in totals.items()]

    def mean_of_rounds(self, column: str) -> float | None:
        """The mean over rounds of a rounds.csv column (None for a run without rounds)."""
        values = [value for _, value in self.per_round(column)]
        return sum(values) / len(values) if values else None

    def bytes_per_round(self) -> list[tuple[int, float, float]]:
        """(task, bytes up, bytes down) of every round, in order."""
        down = [value for _, value in self.per_round("bytes_down")]
        return [(task, up, d) for (task, up), d in zip(self.per_round("bytes_up"), down)]


def is_finished(path: Path) -> bool:
    """True when `path/metrics.json` is readable and records every task as finished."""
    try:
        metrics = json.loads((path / "metrics.json").read_text())
        return metrics["tasks_finished"] == metrics["num_tasks"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{str(file)!r} is missing: {MISSING_HINT}") from None
    except (OSError, ValueError) as error:
        raise RunFolderError(f"{str(file)!r} cannot be read: {error}") from None


def _read_rounds(file: Path) -> list[dict[str, str]]:
    try:
        with open(file, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:  # the columns the report reads must be numbers
            int(row["task"]), int(row["round"]), float(row["bytes_up"]), float(row["bytes_down"])
        return rows
    except FileNotFoundError:
        raise RunFolderError(f"{str(file)!r} is missing: {MISSING_HINT}") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunFolderError(f"{str(file)!r} cannot be read: {error!r}") from None
