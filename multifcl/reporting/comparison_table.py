"""The comparison table: per label, metrics as mean ± std over seeds, and cost per round."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from multifcl.reporting.byte_units import format_bytes
from multifcl.reporting.run_results import RunResults

METRICS = {  # column title: how to read it from metrics.json
    "Last": lambda m: m["last"],
    "Avg": lambda m: m["avg"],
    "Forgetting": lambda m: m["forgetting"],
    "BWT": lambda m: m["bwt"],
    "TIL Last": lambda m: m["til"]["last"],
}
COSTS = {  # column title: rounds.csv column averaged over rounds, then over runs
    "bytes up/round": "bytes_up",
    "bytes down/round": "bytes_down",
    "s/round": "seconds",
}


@dataclass
class ComparisonRow:
    """One label's runs summarized: (mean, std or None with one run) per metric, mean costs."""

    label: str
    runs: int
    metrics: dict[str, tuple[float, float | None]]
    costs: dict[str, float | None]


def comparison_rows(groups: Mapping[str, Sequence[RunResults]]) -> list[ComparisonRow]:
    """One row per label, in the mapping's order; std uses ddof=1 (None with one run)."""
    rows = []
    for label, runs in groups.items():
        metrics = {}
        for title, read in METRICS.items():
            values = [float(read(run.metrics)) for run in runs]
            std = statistics.stdev(values) if len(values) > 1 else None
            metrics[title] = (statistics.fmean(values), std)
        costs = {}
        for title, column in COSTS.items():
            means = [m for m in (run.mean_of_rounds(column) for run in runs) if m is not None]
            costs[title] = statistics.fmean(means) if means else None
        rows.append(ComparisonRow(label, len(runs), metrics, costs))
    return rows


def markdown_table(rows: Sequence[ComparisonRow]) -> str:
    """Metrics as `mean ± std` (`n/a` for the std of one run), bytes in B/kB/MB/GB."""
    titles = ["label", "runs", *METRICS, *COSTS]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for row in rows:
        cells = [row.label, str(row.runs)]
        cells += [_mean_std(*row.metrics[title]) for title in METRICS]
        cells += [_cost(title, row.costs[title]) for title in COSTS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[ComparisonRow], path: Path) -> Path:
    """Plain numbers: `<metric>_mean`, `<metric>_std` (empty with one run), costs in B and s."""
    names = {title: title.lower().replace(" ", "_") for title in METRICS}
    costs = {"bytes up/round": "bytes_up_per_round", "bytes down/round": "bytes_down_per_round"}
    costs["s/round"] = "seconds_per_round"
    header = ["label", "runs"]
    header += [f"{names[t]}_{part}" for t in METRICS for part in ("mean", "std")]
    header += [costs[t] for t in COSTS]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            cells: list = [row.label, row.runs]
            for title in METRICS:
                mean, std = row.metrics[title]
                cells += [round(mean, 4), "" if std is None else round(std, 4)]
            cells += ["" if row.costs[t] is None else round(row.costs[t], 4) for t in COSTS]
            writer.writerow(cells)
    return path


def _mean_std(mean: float, std: float | None) -> str:
    return f"{mean:.2f} ± {'n/a' if std is None else f'{std:.2f}'}"


def _cost(title: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return format_bytes(value) if title.startswith("bytes") else f"{value:.2f}"
