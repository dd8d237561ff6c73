"""Render the figures of one or more runs (finished, or as far as they got).

    multifcl report RUN_DIR [RUN_DIR ...] [--out DIR]

Writes into DIR (default: <first RUN_DIR>/report):
  accuracy_curves.png        A_t after each task, one line per label (a run folder's name
                             without `-seed<k>`: seeds of one label are averaged, +- std band)
  accuracy_matrix-<run>.png  the CIL accuracy matrix a[t][j] of each run, as a heatmap
  partition-<run>.png        training samples per client and class in each task (from
                             partition.json, or rebuilt from config.json for older runs;
                             identical partitions are drawn once)
  bytes_per_round.png        bytes up and down per round, one line per label
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.data import DataError
from multifcl.reporting import figures
from multifcl.reporting.run_results import RunFolderError, RunResults

SUMMARY = "figures of finished runs: accuracy curves and matrices, partitions, bytes per round"
FALLBACK_IMAGE_SIZE = 32  # only used to resize files of mixed sizes; counts do not depend on it


def render_report(
    runs: Sequence[RunResults], out: Path, echo: Callable[[str], None] = print
) -> list[Path]:
    """Write every figure for `runs` into `out`; return the files written."""
    by_label = group_by_label(runs)
    written = [
        figures.stage_curves(
            {
                label: [r.metrics["stage_accuracy"] for r in group]
                for label, group in by_label.items()
            },
            out / "accuracy_curves.png",
        )
    ]
    for run in runs:
        title = f"{run.name}\n{run.config.get('method')} on {run.config.get('dataset')}: CIL a[t][j] (%)"
        written.append(
            figures.accuracy_matrix(
                run.metrics["accuracy_matrix"], title, out / f"accuracy_matrix-{run.name}.png"
            )
        )
    drawn: dict[str, str] = {}
    for run in runs:
        counts = partition_of(run, echo)
        if counts is None:
            continue
        key = json.dumps(counts, sort_keys=True)
        if key in drawn:
            echo(f"partition of {run.name} is the same as that of {drawn[key]}: drawn once")
            continue
        drawn[key] = run.name
        title = (
            f"{run.name}: training samples per client and class\n{describe_partition(run.config)}"
        )
        written.append(figures.partition(counts, title, out / f"partition-{run.name}.png"))
    written.append(
        figures.bytes_per_round(
            {label: [r.bytes_per_round() for r in group] for label, group in by_label.items()},
            out / "bytes_per_round.png",
        )
    )
    return written


def group_by_label(runs: Sequence[RunResults]) -> dict[str, list[RunResults]]:
    """Runs by label (folder name without `-seed<k>`), in the order first seen."""
    groups: dict[str, list[RunResults]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return groups


def partition_of(run: RunResults, echo: Callable[[str], None] = print) -> dict | None:
    """The run's partition.json, else rebuilt from its config.json (None when that fails)."""
    saved = run.partition()
    if saved is not None:
        return saved
    from multifcl.data import FederatedStream, load_splits
    from multifcl.results.partition_file import partition_counts

    try:
        config = ExperimentConfig.from_saved_run(run.config)
        splits = load_splits(config, config.image_size or FALLBACK_IMAGE_SIZE)
        return partition_counts(FederatedStream(splits, config), int(run.config["num-clients"]))
    except (ConfigError, DataError, KeyError) as error:
        echo(f"partition of {run.name}: no partition.json and cannot rebuild it ({error}); skipped")
        return None


def describe_partition(config: dict) -> str:
    """For example `dirichlet partition, beta = 0.05, 10 clients`."""
    kind = config.get("partition", "?")
    detail = {
        "dirichlet": f", beta = {config.get('beta')}",
        "quality": f", alpha = {config.get('alpha')}",
    }
    return f"{kind} partition{detail.get(kind, '')}, {config.get('num-clients', '?')} clients"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders")
    parser.add_argument("--out", type=Path, default=None, help="default: <first RUN_DIR>/report")


def run(args: argparse.Namespace) -> int:
    from multifcl.cli import CommandError

    try:
        runs = [RunResults.load(path) for path in dict.fromkeys(p.resolve() for p in args.runs)]
    except RunFolderError as error:
        raise CommandError(str(error)) from None
    out = (args.out or runs[0].path / "report").resolve()
    for path in render_report(runs, out):
        print(path)
    return 0
