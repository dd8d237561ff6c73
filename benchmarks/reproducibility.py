"""Write REPRODUCIBILITY.md from the paper presets and finished run folders, never by hand.

    python benchmarks/reproducibility.py --runs runs/paper/cifar100-10tasks-beta0.5-multifcl
    python benchmarks/reproducibility.py --runs runs/compare-5methods runs/ablation-5x5

Each `--runs` folder is a `multifcl compare` (or compare_in_process.py) output folder: its
finished runs (`OUT/runs/<label>-seed<k>/`, read through multifcl.results.folder_layout)
fill the rows they measure: a paper preset's row when the label is the preset's stem (and
the runs' config is the preset's), an offline-proxy row when OUT is named like the proxy
comparison below. Rows not measured now keep what the file already says; the paper's
numbers come from each preset's header. `--hardware` names the machine the runs ran on
(default: this one).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from multifcl.results.folder_layout import (
    CONFIG_FILE,
    METRICS_FILE,
    RunFolderError,
    is_finished,
    read_json,
)

PAPER_DIR = ROOT / "configs" / "paper"
RECORD = ROOT / "REPRODUCIBILITY.md"
PAPER_NUMBERS = re.compile(r"^# Paper's numbers, Last / Avg / F \(%\): (.+)$", re.MULTILINE)
PRESET_COMMAND = (
    "multifcl compare --methods configs/paper/{name}.toml --seeds 0 1 2 --out runs/paper/{name} "
    '--federation "num-supernodes=10 client-resources-num-cpus=1 client-resources-num-gpus=0.25"'
)
NOT_COMPARED = ("data-root", "split-file")  # paths differ between machines
PROXY_DATA = "dataset='imagefolder' data-root='{data_root}' backbone='efficientnet-lite0'"
PROXY_STREAM = "num-tasks=5 max-train-per-class=200"
PROXY_SETTINGS = {
    "dataset": "imagefolder",
    "backbone": "efficientnet-lite0",
    "num-tasks": 5,
    "max-train-per-class": 200,
}
ABLATION = " ".join(
    f"configs/ablation/{row}.toml"
    for row in ("1-base", "2-adapter", "3-init", "4-experts", "5-full")
)


@dataclass(frozen=True)
class ProxyComparison:
    """One of the README's offline comparisons: its output folder's name, the command that
    wrote it, the run-config values every run must have, its rows."""

    folder: str
    title: str
    command: str
    settings: dict
    labels: tuple[str, ...]


PROXIES = (
    ProxyComparison(
        "compare-5methods",
        "Five methods, 2 rounds x 1 local epoch per task (README: Comparing methods over seeds)",
        "python benchmarks/compare_in_process.py --methods prototypes finetune multifcl pilora "
        "lwf --seeds 0 1 2 --out runs/compare-5methods "
        f'--overrides "{PROXY_DATA} {PROXY_STREAM}"',
        {**PROXY_SETTINGS, "rounds-per-task": 2, "local-epochs": 1},
        ("prototypes", "finetune", "multifcl", "pilora", "lwf"),
    ),
    ProxyComparison(
        "ablation-5x5",
        "MultiFCL ablation, 5 rounds x 5 local epochs per task (README: MultiFCL ablation)",
        f"python benchmarks/compare_in_process.py --seeds 0 1 2 --out runs/ablation-5x5 "
        f"--methods {ABLATION} "
        f'--overrides "{PROXY_DATA} {PROXY_STREAM} rounds-per-task=5 local-epochs=5"',
        {**PROXY_SETTINGS, "rounds-per-task": 5, "local-epochs": 5},
        ("1-base", "2-adapter", "3-init", "4-experts", "5-full"),
    ),
)


class RecordError(ValueError):
    """A run folder that does not match the row it would fill; one line naming both."""


@dataclass(frozen=True)
class Measured:
    """A row's numbers from its finished runs: 'mean ± std' cells, the seeds, the date."""

    cells: dict[str, str]  # metric -> "mean ± std" (or the value, with one seed)
    seeds: str
    finished: str  # the date the newest run finished

    @classmethod
    def of(cls, runs: list[Path]) -> Measured:
        metrics = [read_json(run, METRICS_FILE) for run in runs]
        seeds = sorted(read_json(run, CONFIG_FILE)["seed"] for run in runs)
        keys = ("last", "avg", "forgetting", "forgetting_first_task")
        newest = max((run / METRICS_FILE).stat().st_mtime for run in runs)
        return cls(
            {key: _mean_std([m[key] for m in metrics]) for key in keys},
            " ".join(map(str, seeds)),
            date.fromtimestamp(newest).isoformat(),
        )


def _mean_std(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def finished_groups(out: Path) -> dict[str, list[Path]]:
    """A comparison folder's finished runs by row label (`<label>-seed<k>`)."""
    groups: dict[str, list[Path]] = {}
    for run in sorted((out / "runs").glob("*-seed*")):
        if is_finished(run):
            groups.setdefault(run.name.rsplit("-seed", 1)[0], []).append(run)
    if not groups:
        raise RecordError(f"--runs: {str(out)!r} holds no finished run under runs/")
    return groups


def check_config(runs: list[Path], expected: dict, row: str) -> None:
    for run in runs:
        saved = read_json(run, CONFIG_FILE)
        for key, value in expected.items():
            if key not in NOT_COMPARED and saved.get(key) != value:
                raise RecordError(
                    f"{run}: {key}={saved.get(key)!r}, but row {row!r} needs {key}={value!r}"
                )


def measure(outs: list[Path], presets: dict[str, dict]) -> dict[str, tuple[Measured, str]]:
    """Row key -> (its numbers, the data root its runs read), for every row the folders
    measure."""
    proxies = {proxy.folder: proxy for proxy in PROXIES}
    found = {}
    for out in outs:
        proxy = proxies.get(out.name)
        for label, runs in finished_groups(out).items():
            if label in presets:
                check_config(runs, presets[label], label)
                key = label
            elif proxy is not None and label in proxy.labels:
                check_config(runs, proxy.settings, f"{proxy.folder}/{label}")
                key = f"{proxy.folder}/{label}"
            else:
                continue
            data_root = read_json(runs[0], CONFIG_FILE).get("data-root", "")
            found[key] = (Measured.of(runs), data_root)
    return found


def kept_rows(record: Path) -> dict[str, list[str]]:
    """The measured cells (ours, seeds, hardware, date) of the rows the file has now."""
    if not record.exists():
        return {}
    kept = {}
    for line in record.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip()[1:-1].split("|")]
        if line.startswith("| `") and len(cells) >= 5:
            kept[cells[0].strip("`")] = cells[-4:]
    return kept


def this_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"model name\s*: (.+)", Path("/proc/cpuinfo").read_text())
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    gpus = len(list(Path("/proc/driver/nvidia/gpus").glob("*")))
    return f"{os.cpu_count()} CPU cores ({cpu}), " + (f"{gpus} NVIDIA GPU(s)" if gpus else "no GPU")


def paper_numbers(preset: Path) -> str:
    found = PAPER_NUMBERS.search(preset.read_text())
    return found.group(1).strip() if found else "none given"


def row(key: str, first: list[str], measured: tuple[Measured, str] | None, kept, hardware, third):
    """A table row: the key, the fixed cells, then ours, seeds, hardware and date."""
    if measured is not None:
        numbers = measured[0]
        ours = " / ".join(numbers.cells[name] for name in ("last", "avg", third))
        last = [ours, numbers.seeds, hardware, numbers.finished]
    else:
        last = kept.get(key, ["", "", "", ""])
    return "| " + " | ".join([f"`{key}`", *first, *last]) + " |"


def render(papers: dict[str, str], measured: dict, kept: dict, hardware: str) -> str:
    """The whole file: the presets' table (`papers`: preset -> the paper's numbers), then
    each proxy comparison's command and table."""
    lines = [HEADER, PRESET_TABLE_HEAD]
    for name, paper in papers.items():
        command = f"`{PRESET_COMMAND.format(name=name)}`"
        lines.append(
            row(name, [paper, command], measured.get(name), kept, hardware, "forgetting_first_task")
        )
    lines.append(PROXY_INTRO)
    for proxy in PROXIES:
        data_root = next(
            (root for key, (_, root) in measured.items() if key.startswith(f"{proxy.folder}/")),
            "/abs/path/cifar10-jpg",
        )
        lines += [f"\n### {proxy.title}\n", "```bash", proxy.command.format(data_root=data_root)]
        lines += ["```\n", PROXY_TABLE_HEAD]
        for label in proxy.labels:
            key = f"{proxy.folder}/{label}"
            lines.append(row(key, [], measured.get(key), kept, hardware, "forgetting"))
    return "\n".join(lines) + "\n"


HEADER = """# Reproducibility

Which configurations have been run, with which command, on what hardware and when: every
paper preset in `configs/paper/` with the MultiFCL paper's numbers beside ours, and the
offline proxy the README reports. **Generated** by `python benchmarks/reproducibility.py --runs
<comparison folders>` from finished run folders; do not edit the tables by hand. An empty
"ours" cell means the row has not been run: the presets need CIFAR-100 or ImageNet-R and
the CLIP ViT-B/16 weights, which the machine that wrote this record does not have.

Numbers are CIL accuracy in percent, mean ± std over seeds (std with ddof 1). For the
presets, Last / Avg / F with F the paper's forgetting of the first task (a[0][0] minus
a[T-1][0]), as the paper reports it; for the proxy, Last / Avg / Forgetting (Chaudhry et
al., as the README). Hardware is what the generator was told (`--hardware`, default the
machine it ran on); the date is when the newest run of the row finished.

## Paper presets (CIFAR-100 and ImageNet-R, CLIP ViT-B/16, 10 clients)
"""
PRESET_TABLE_HEAD = (
    "| preset | paper Last / Avg / F | command | ours Last / Avg / F | seeds | hardware | date |\n"
    "|---|---|---|---|---|---|---|"
)
PROXY_INTRO = """
## Offline proxy (CIFAR-10 JPEG folder, EfficientNet-Lite0, 2 clients)

Not a reproduction of the paper: the README's offline comparisons, run through the
in-process path (`benchmarks/compare_in_process.py`: the same plan and runs as `multifcl
compare`, each run on the real server loop and ClientApp in one process)."""
PROXY_TABLE_HEAD = (
    "| comparison/row | ours Last / Avg / Forgetting | seeds | hardware | date |\n"
    "|---|---|---|---|---|"
)


def write_record(
    outs: list[Path], record: Path = RECORD, hardware: str | None = None, paper_dir=PAPER_DIR
) -> Path:
    """Rewrite `record`: the rows `outs` measure now, the others as the file had them."""
    files = sorted(paper_dir.glob("*.toml"))
    presets = {file.stem: tomllib.loads(file.read_text()) for file in files}
    measured = measure(outs, presets)
    papers = {file.stem: paper_numbers(file) for file in files}
    text = render(papers, measured, kept_rows(record), hardware or this_machine())
    record.write_text(text)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="comparison folders")
    parser.add_argument("--record", type=Path, default=RECORD, help="default: REPRODUCIBILITY.md")
    parser.add_argument("--hardware", default=None, help="default: this machine")
    args = parser.parse_args()
    try:
        print(write_record([out.resolve() for out in args.runs], args.record, args.hardware))
    except (RecordError, RunFolderError) as error:
        print(f"reproducibility: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
