"""One table from several `multifcl compare` folders (rows tuned over different keys).

    python benchmarks/combine_comparisons.py runs/tuned/sgd runs/tuned/analytic ... \\
        --figure docs/figures/compare_tuned_accuracy_curves.png

Prints the comparison table of every row of every folder (Last, Avg, forgetting, BWT, TIL
Last as mean ± std over its seeds; bytes and seconds per round), then a table of how each
row was tuned: its backbone, the folder's grid, the chosen point and its validation Avg
(rows without a grid: "-"). With --figure, the A_t curves of all rows in one plot.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multifcl.reporting import report_figures
from multifcl.reporting.comparison_table import comparison_rows, markdown_table
from multifcl.reporting.run_results import RunResults

CHOSEN = re.compile(r"^Chosen: (.*)\.$", re.MULTILINE)
GRID = re.compile(r"^Grid: `([^`]*)`", re.MULTILINE)


def folder_rows(out: Path) -> tuple[dict[str, list[RunResults]], dict[str, tuple[str, str]]]:
    """A compare folder's finished runs by row label, and each row's (grid, chosen point)."""
    text = (out / "comparison.md").read_text()
    grid = GRID.search(text)
    chosen = dict(
        re.fullmatch(r"(.+?): `(.*)`", item.strip()).groups()
        for item in (CHOSEN.search(text).group(1).split(";") if grid else [])
    )
    labels = [line.split(",")[0] for line in (out / "comparison.csv").read_text().splitlines()[1:]]
    groups = {}
    for label in labels:
        runs = sorted(out.glob(f"runs/{label}-*seed*"))
        groups[label] = [RunResults.load(run) for run in runs]
        if not groups[label]:
            raise SystemExit(f"{str(out)!r}: no finished runs of row {label!r}")
    tuning = {label: (grid.group(1) if grid else "-", chosen.get(label, "-")) for label in labels}
    return groups, tuning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="multifcl compare --out folders")
    parser.add_argument("--figure", type=Path, help="write the A_t curves of every row here")
    args = parser.parse_args()
    groups, tuning = {}, {}
    for out in args.folders:
        found, how = folder_rows(out)
        groups.update(found)
        tuning.update(how)
    print(markdown_table(comparison_rows(groups)))
    print("| row | backbone | grid | chosen |")
    print("|---|---|---|---|")
    for label, runs in groups.items():
        grid, chosen = tuning[label]
        print(f"| {label} | {runs[0].config['backbone']} | `{grid}` | `{chosen}` |")
    if args.figure:
        methods = {label: runs[0].config["method"] for label, runs in groups.items()}
        curves = {
            label: [r.metrics["stage_accuracy"] for r in runs] for label, runs in groups.items()
        }
        setting = report_figures.data_and_backbone([r.config for rs in groups.values() for r in rs])
        print(report_figures.stage_curves(curves, args.figure, methods, setting))


if __name__ == "__main__":
    main()
