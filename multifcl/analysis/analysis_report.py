"""Writes the analysis of a run: `analysis.md` in the run directory, with its figures and
CSV tables under `analysis/`."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multifcl.analysis.analysis_figures import cka_drift_heatmap, redundancy_curves
from multifcl.analysis.checkpoint_analysis import CheckpointAnalysis
from multifcl.analysis.finished_run import FinishedRun
from multifcl.analysis.robustness import RobustnessRow
from multifcl.reporting.report_figures import run_title
from multifcl.results.folder_layout import METRICS_FILE, RunFolderError, read_json

FOLDER = "analysis"
REPORT = "analysis.md"
TABLE_FRACTIONS = (0.1, 0.2, 0.5, 1.0)
ACCEPTABLE_LOSS = 1.0  # accuracy points: what "keeps the accuracy" means in the text


@dataclass
class AnalysisReport:
    run: FinishedRun
    checkpoints: CheckpointAnalysis
    draws: int
    seed: int
    robustness: list[RobustnessRow] | None = None
    robustness_group: str = ""


def write_report(report: AnalysisReport) -> Path:
    """Write the CSVs, the PNGs and `analysis.md`; return the path of `analysis.md`."""
    run, found = report.run, report.checkpoints
    folder = run.path / FOLDER
    folder.mkdir(exist_ok=True)
    config = run.config
    name = run_title(config.to_run_config())
    cka_drift_heatmap(
        found.cka_drift, found.block_labels, f"CKA drift: {name}", folder / "cka_drift.png"
    )
    redundancy_curves(found.redundancy, f"Diffused redundancy: {name}", folder / "redundancy.png")
    _write_csvs(report, folder)
    sections = [
        f"# Analysis: {name}\n",
        (
            f"Run `{run.path.name}`: {run.num_tasks} task checkpoints. Every measurement uses a "
            f"fixed random subset (seed {report.seed}) of up to {found.samples_per_task} test "
            "samples per seen task (all of a task's when it holds fewer); task 1's subset is the "
            "probe set "
            f"({found.probe_size} held-out samples). Numbers: `{FOLDER}/*.csv`.\n"
        ),
        *_equizero_line(run.path),
        _cka_section(found),
        _redundancy_section(found, report.draws),
        _collapse_section(found),
    ]
    if report.robustness is not None:
        sections.append(_robustness_section(report.robustness, report.robustness_group))
    path = run.path / REPORT
    path.write_text("\n".join(sections))
    return path


def _cka_section(found: CheckpointAnalysis) -> str:
    drift = found.cka_drift
    tasks = range(1, drift.shape[1] + 1)
    lowest = np.nanargmin(np.nan_to_num(drift, nan=np.inf), axis=0)
    lines = [
        "## CKA drift\n",
        f"![CKA drift]({FOLDER}/cka_drift.png)\n",
        (
            "Linear CKA, per block, between the probe set's representation after task 1 and "
            "after task t: 1 means the block represents the first task's data as it did (up to "
            "rotation and scale); lower means drift, the footprint of forgetting.\n"
        ),
        "| after task | " + " | ".join(str(t) for t in tasks) + " |",
        "|---|" + "---:|" * len(tasks),
        "| last block | " + " | ".join(f"{v:.3f}" for v in drift[-1]) + " |",
        "| lowest block | "
        + " | ".join(f"{drift[b, t]:.3f} ({found.block_labels[b]})" for t, b in enumerate(lowest))
        + " |",
        "",
    ]
    if found.client_cka:
        lines += [
            "Clients against the global model of the last round (per-block CKA on the probe):\n",
            "| client | lowest block | last block |",
            "|---|---:|---:|",
        ]
        for client, values in found.client_cka.items():
            lines.append(f"| {client} | {np.nanmin(values):.3f} | {values[-1]:.3f} |")
        lines.append("")
    else:
        lines.append(
            "Client against global CKA: not available (the run kept no client snapshots in "
            "`client-snapshots/`; runs with save-task-checkpoints = true write them).\n"
        )
    return "\n".join(lines)


def _redundancy_section(found: CheckpointAnalysis, draws: int) -> str:
    lines = [
        "## Diffused redundancy\n",
        f"![Diffused redundancy]({FOLDER}/redundancy.png)\n",
        (
            f"Cosine prototype classifier ({found.prototype_source}) with features and prototypes "
            f"restricted to random subsets of the final feature's dimensions, {draws} draws per "
            "fraction; and linear CKA between the subset and the full feature.\n"
        ),
        "| after task | "
        + " | ".join(f"acc {100 * f:.0f}%" for f in TABLE_FRACTIONS)
        + " | "
        + " | ".join(f"CKA {100 * f:.0f}%" for f in TABLE_FRACTIONS[:-1])
        + " |",
        "|---|" + "---:|" * (2 * len(TABLE_FRACTIONS) - 1),
    ]
    for task, curve in enumerate(found.redundancy, start=1):
        points = {round(p.fraction, 2): p for p in curve}
        accuracy = [f"{points[f].accuracy:.1f}" for f in TABLE_FRACTIONS if f in points]
        cka = [f"{points[f].cka:.3f}" for f in TABLE_FRACTIONS[:-1] if f in points]
        lines.append(f"| {task} | " + " | ".join(accuracy + cka) + " |")
    lines += ["", _compression_hint(found.redundancy[-1]), ""]
    return "\n".join(lines)


def _compression_hint(curve) -> str:
    """What the last checkpoint's curve suggests for shortening prototype messages."""
    full = curve[-1].accuracy
    enough = [p for p in curve if p.accuracy >= full - ACCEPTABLE_LOSS]
    smallest = min(enough, key=lambda p: p.fraction)
    if smallest.fraction >= 1.0:
        return (
            "After the last task, every subset loses more than "
            f"{ACCEPTABLE_LOSS:.0f} accuracy point: the information is not diffused enough "
            "to shorten prototype messages without a cost."
        )
    return (
        f"After the last task, {100 * smallest.fraction:.0f}% of the dimensions "
        f"({smallest.dims}) keep the accuracy within {ACCEPTABLE_LOSS:.0f} point of the full "
        f"width ({smallest.accuracy:.1f}% vs {full:.1f}%). This suggests prototype messages "
        f"could carry only such a random subset of coordinates (a mask every party derives "
        f"from a shared seed), cutting their size by {100 * (1 - smallest.fraction):.0f}%."
    )


def _collapse_section(found: CheckpointAnalysis) -> str:
    etf = found.collapse[-1].vertex_angle is not None
    header = "| after task | classes | NC1 | ETF Gram deviation |" + (
        " angle to ETF vertex (deg) |" if etf else ""
    )
    lines = [
        "## Neural collapse\n",
        f"Measured on {found.collapse_space} of the seen tasks' test subsets. NC1 = "
        "tr(Sigma_W Sigma_B^+)/C (0: every sample on its class mean); ETF Gram deviation = mean "
        "absolute difference between the cosine Gram of the centred class means and the "
        "simplex ETF's (0: the class means form a simplex ETF)"
        + ("; angle = mean angle between each class mean and its fixed ETF vertex." if etf else ".")
        + "\n",
        header,
        "|---|---:|---:|---:|" + ("---:|" if etf else ""),
    ]
    for m in found.collapse:
        row = f"| {m.task} | {m.classes} | {m.nc1:.3f} | {m.etf_gram_deviation:.3f} |"
        if etf:
            row += f" {m.vertex_angle:.1f} |"
        lines.append(row)
    lines.append("")
    return "\n".join(lines)


def _robustness_section(rows: list[RobustnessRow], group: str) -> str:
    lines = [
        "## Robustness to rotations and flips\n",
        (
            "The final model on the union of the test subsets, every image transformed; equizero "
            f"(group `{group}`) tries every transform of the group and keeps the most confident "
            "prediction (CIL accuracy, %).\n"
        ),
        f"| test set | plain | equizero ({group}) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r.test_set} | {r.plain:.1f} | {r.equizero:.1f} |" for r in rows]
    lines.append("")
    return "\n".join(lines)


def _equizero_line(run_path: Path) -> list[str]:
    """The run's own equizero result from metrics.json, when it was evaluated with it."""
    try:
        metrics = read_json(run_path, METRICS_FILE)
    except RunFolderError:
        return []
    if "equizero" not in metrics or "last" not in metrics:
        return []
    return [
        (
            f"Run evaluation (metrics.json): CIL Last {metrics['last']:.2f}%, with equizero "
            f"{metrics['equizero']['last']:.2f}%.\n"
        )
    ]


def _write_csvs(report: AnalysisReport, folder: Path) -> None:
    found = report.checkpoints
    _write_csv(
        folder / "cka_drift.csv",
        ["block", "after_task", "cka"],
        [
            [found.block_labels[b], t + 1, value]
            for (b, t), value in np.ndenumerate(found.cka_drift)
        ],
    )
    _write_csv(
        folder / "redundancy.csv",
        ["after_task", "fraction", "dims", "accuracy", "accuracy_std", "cka", "cka_std"],
        [
            [task, p.fraction, p.dims, p.accuracy, p.accuracy_std, p.cka, p.cka_std]
            for task, curve in enumerate(found.redundancy, start=1)
            for p in curve
        ],
    )
    _write_csv(
        folder / "neural_collapse.csv",
        ["after_task", "classes", "nc1", "etf_gram_deviation", "vertex_angle_degrees"],
        [[m.task, m.classes, m.nc1, m.etf_gram_deviation, m.vertex_angle] for m in found.collapse],
    )
    if found.client_cka:
        _write_csv(
            folder / "client_cka.csv",
            ["client", "block", "cka"],
            [
                [client, found.block_labels[b], value]
                for client, values in found.client_cka.items()
                for b, value in enumerate(values)
            ],
        )
    if report.robustness is not None:
        _write_csv(
            folder / "robustness.csv",
            ["test_set", "plain", "equizero", "group"],
            [[r.test_set, r.plain, r.equizero, report.robustness_group] for r in report.robustness],
        )


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
