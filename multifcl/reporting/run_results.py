"""A run folder's saved results read back: config.json, metrics.json, rounds.csv and
partition.json (through `multifcl.results.folder_layout`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from multifcl.results.folder_layout import (
    CONFIG_FILE,
    METRICS_FILE,
    PARTITION_FILE,
    RunFolderError,
    existing_run_folder,
    is_finished,
    read_json,
    read_rounds,
)

__all__ = ["RunFolderError", "RunResults", "is_finished"]


@dataclass
class RunResults:
    """One run's saved results."""

    path: Path
    config: dict
    metrics: dict
    rounds: list[dict[str, str]]  # rounds.csv rows as written (a retried round has several)

    @classmethod
    def load(cls, path: Path) -> RunResults:
        path = existing_run_folder(path)
        return cls(
            path, read_json(path, CONFIG_FILE), read_json(path, METRICS_FILE), read_rounds(path)
        )

    @property
    def name(self) -> str:
        return self.path.name

    def partition(self) -> dict | None:
        """The saved partition.json, or None for runs written before it existed."""
        found = (self.path / PARTITION_FILE).is_file()
        return read_json(self.path, PARTITION_FILE) if found else None

    def per_round(self, column: str) -> list[tuple[int, float]]:
        """(task, value) for each training round in order; the attempts of a retried round
        are summed (the clients' evaluation rows, `phase = evaluate`, are not rounds)."""
        totals: dict[tuple[int, int], float] = {}
        for row in self.rounds:
            if row.get("phase", "train") not in ("train", ""):
                continue
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
