"""Compare methods on one run config over several seeds, through real `flwr run`s.

Each row is a method name or a preset TOML file (for example `configs/ablation/*.toml`).
Prints a markdown table (mean +- std over seeds) of Last, Avg, forgetting, BWT and the
time and bytes per run, and writes it with every run's results under --out.

    python benchmarks/compare_methods.py --methods prototypes finetune --seeds 0 1 2 \
        --overrides "dataset='imagefolder' data-root='/abs/cifar10-jpg' num-tasks=5"
    python benchmarks/compare_methods.py --methods configs/ablation/*.toml --overrides ...
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
import tomllib
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.local_flower import LocalFlower, superlink_is_running

APP_DIR = Path(__file__).resolve().parents[1]
COLUMNS = ("last", "avg", "forgetting", "bwt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["prototypes", "finetune"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--overrides", default="", help="run-config overrides shared by all runs")
    parser.add_argument("--federation", default="num-supernodes=2 client-resources-num-cpus=1")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if superlink_is_running():
        sys.exit("a SuperLink already listens on the local port; end it first")
    out = (args.out or APP_DIR / "runs" / f"compare-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    out.mkdir(parents=True, exist_ok=False)

    results: dict[str, list[dict]] = {_row_name(method): [] for method in args.methods}
    with LocalFlower(workdir=out) as flower:
        for method in args.methods:
            for seed in args.seeds:
                run_dir = out / f"{_row_name(method)}-seed{seed}"
                overrides = _row_overrides(method)
                overrides.append(f"{args.overrides} seed={seed} output-dir='{run_dir}'".strip())
                started = time.perf_counter()
                run = flower.run(APP_DIR, overrides, args.federation)
                seconds = time.perf_counter() - started
                if not run.completed:
                    sys.exit(f"{method} seed {seed}: {run.status}: {run.details}")
                metrics = json.loads((run_dir / "metrics.json").read_text())
                metrics["wall_seconds"] = seconds
                metrics["bytes"] = _total_bytes(run_dir / "rounds.csv")
                results[_row_name(method)].append(metrics)
                print(
                    f"{method} seed {seed}: last {metrics['last']:.2f} in {seconds:.0f} s",
                    flush=True,
                )

    table = _markdown(results, len(args.seeds))
    header = (
        f"Overrides: `{args.overrides}`; federation: `{args.federation}`; seeds {args.seeds}\n\n"
    )
    (out / "comparison.md").write_text(header + table)
    print()
    print(header + table)


def _row_name(row: str) -> str:
    """A method name, or a preset file's parent and stem (`ablation/1-base`)."""
    if not row.endswith(".toml"):
        return row
    path = Path(row)
    return f"{path.parent.name}-{path.stem}"


def _row_overrides(row: str) -> list[str]:
    """The run-config overrides of a row: its preset file's pairs, or `method='<name>'`.

    `flwr run` refuses a TOML file together with key=value pairs, so presets are inlined.
    """
    if not row.endswith(".toml"):
        return [f"method='{row}'"]
    path = Path(row)
    if not path.is_file():
        sys.exit(f"--methods: preset file {row!r} does not exist")
    pairs = tomllib.loads(path.read_text())
    return [" ".join(f"{key}={_toml_value(value)}" for key, value in pairs.items())]


def _toml_value(value: bool | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"'{value}'" if isinstance(value, str) else str(value)


def _total_bytes(rounds_csv: Path) -> int:
    with open(rounds_csv) as handle:
        return sum(int(r["bytes_up"]) + int(r["bytes_down"]) for r in csv.DictReader(handle))


def _markdown(results: dict[str, list[dict]], num_seeds: int) -> str:
    lines = [
        "| method | Last | Avg | Forgetting | BWT | TIL Last | wall s/run | MB/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, runs in results.items():
        cells = [_mean_std([r[key] for r in runs]) for key in COLUMNS]
        cells.append(_mean_std([r["til"]["last"] for r in runs]))
        cells.append(f"{statistics.mean(r['wall_seconds'] for r in runs):.0f}")
        cells.append(f"{statistics.mean(r['bytes'] for r in runs) / 1e6:.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


if __name__ == "__main__":
    main()
