"""Render the figures of one or more runs (finished, or as far as they got).

    multifcl report RUN_DIR [RUN_DIR ...] [--out DIR]

Writes into DIR (default: <first RUN_DIR>/report):
  accuracy_curves.png        A_t after each task, one line per method and config (from each
                             run's config.json: its seeds are averaged, +- std band)
  accuracy_matrix-<run>.png  the CIL accuracy matrix a[t][j] of each run, as a heatmap
  partition-<run>.png        training samples per client and class in each task (from
                             partition.json, or rebuilt from config.json for older runs;
                             identical partitions are drawn once)
  bytes_per_round.png        bytes up and down per round, one line per method and config
  client_accuracy-<run>.png  (eval-local runs) each client's accuracy on its own test slice
                             after each task, global vs its own model: mean, ± std, worst
  schedule-<run>.png         (asynchronous runs) clients x global rounds coloured by the task
                             trained, stage ends, next to A_s and the mean and worst client's
                             accuracy on its own seen classes

Runs are labelled by method and seed. A method run with several configs gets one line per
config, labelled by the keys that tell them apart; runs that differ in more than method and
seed are reported in one warning line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.data import DataError
from multifcl.reporting import report_figures
from multifcl.reporting.client_accuracy_figure import client_accuracy
from multifcl.reporting.run_results import RunFolderError, RunResults
from multifcl.reporting.schedule_figure import stream_schedule
from multifcl.results.resume import RESULT_NEUTRAL_KEYS

SUMMARY = (
    "figures of finished runs: accuracy curves and matrices, partitions, bytes per round, "
    "per-client accuracy"
)
FALLBACK_IMAGE_SIZE = 32  # only used to resize files of mixed sizes; counts do not depend on it
# run-config keys that do not make runs different experiments
SAME_EXPERIMENT_KEYS = RESULT_NEUTRAL_KEYS | {"seed"}
RUN_KEYS_BESIDE_CONFIG = ("num-clients",)  # saved beside the run config, changes results
NAMED_DIFFERENCES = 3  # keys named in a label or warning
EXAMPLES = (
    "multifcl report runs/first-compare/runs/*-seed0",
    "multifcl report runs/20250101-120000-multifcl --out figures",
)


@dataclass
class RunGroup:
    """The runs of one method and config (its seeds): one line in the figures."""

    label: str
    method: str
    runs: list[RunResults]


def render_report(
    runs: Sequence[RunResults], out: Path, echo: Callable[[str], None] = print
) -> list[Path]:
    """Write every figure for `runs` into `out`; return the files written."""
    groups = group_runs(runs, echo)
    methods = {group.label: group.method for group in groups}
    setting = report_figures.data_and_backbone([run.config for run in runs])
    written = [
        report_figures.stage_curves(
            {group.label: [r.metrics["stage_accuracy"] for r in group.runs] for group in groups},
            out / "accuracy_curves.png",
            methods,
            setting,
        )
    ]
    for run in runs:
        title = f"{run_label(run)}: CIL a[t][j] (%)\n{report_figures.run_title(run.config)}"
        written.append(
            report_figures.accuracy_matrix(
                run.metrics["accuracy_matrix"], title, out / f"accuracy_matrix-{run.name}.png"
            )
        )
    written.extend(_client_accuracy_figures(runs, out))
    written.extend(_schedule_figures(runs, out))
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
            f"{run_label(run)}: training samples per client and class\n"
            f"{describe_partition(run.config)}"
        )
        written.append(report_figures.partition(counts, title, out / f"partition-{run.name}.png"))
    written.append(
        report_figures.bytes_per_round(
            {group.label: [r.bytes_per_round() for r in group.runs] for group in groups},
            out / "bytes_per_round.png",
            methods,
            setting,
        )
    )
    return written


def _client_accuracy_figures(runs: Sequence[RunResults], out: Path) -> list[Path]:
    """The per-client accuracy figure of every run with client-side evaluation."""
    written = []
    for run in runs:
        clients = run.metrics.get("client_accuracy")
        if clients:
            title = (
                f"{run_label(run)}: {clients['num_clients']} clients' accuracy on their own "
                f"test slices\n{report_figures.run_title(run.config)}"
            )
            path = out / f"client_accuracy-{run.name}.png"
            written.append(client_accuracy(clients, title, path))
    return written


def _schedule_figures(runs: Sequence[RunResults], out: Path) -> list[Path]:
    """The schedule figure (who trains which task when) of every asynchronous run."""
    written = []
    for run in runs:
        if "stream_schedule" in run.metrics:
            title = f"{run_label(run)}: {report_figures.run_title(run.config)}"
            written.append(stream_schedule(run.metrics, title, out / f"schedule-{run.name}.png"))
    return written


def run_label(run: RunResults) -> str:
    """`<method> seed <k>`, from the run's config."""
    return f"{run.config.get('method', '?')} seed {run.config.get('seed', '?')}"


def group_runs(runs: Sequence[RunResults], echo: Callable[[str], None] = print) -> list[RunGroup]:
    """Runs by method and config (all keys but SAME_EXPERIMENT_KEYS), in the order first
    seen, each labelled `<method> (seed[s] ...)`; a method with several configs adds the keys
    that tell its groups apart. Echoes one warning when the runs differ in more than method
    and seed."""
    by_config: dict[str, list[RunResults]] = {}
    for run in runs:
        by_config.setdefault(json.dumps(_experiment(run.config), sort_keys=True), []).append(run)
    mixed = _differing_keys([_experiment(r.config) for r in runs], ignored={"method"})
    if mixed:
        echo(
            "warning: these runs differ in more than method and seed: "
            f"{_describe(mixed, runs)}; runs of one config are averaged, never across configs"
        )
    groups: list[RunGroup] = []
    for members in by_config.values():
        method = str(members[0].config.get("method", "?"))
        siblings = [  # the first run of every config of this method
            group[0] for group in by_config.values() if group[0].config.get("method") == method
        ]
        keys = _differing_keys([_experiment(r.config) for r in siblings], ignored=set())
        seeds = sorted({int(r.config.get("seed", 0)) for r in members})
        seed_text = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
        setting = ", ".join(
            f"{key}={_experiment(members[0].config)[key]}" for key in keys[:NAMED_DIFFERENCES]
        )
        label = f"{method} ({setting}; {seed_text})" if setting else f"{method} ({seed_text})"
        if label in {group.label for group in groups}:  # differing beyond the keys named
            label += f" [{members[0].name}]"
        groups.append(RunGroup(label, method, members))
    return groups


def _experiment(config: dict) -> dict:
    """The saved config's keys that make a run a different experiment: the run-config keys
    but SAME_EXPERIMENT_KEYS, and RUN_KEYS_BESIDE_CONFIG (what the server derives and stores
    beside them, a run id or the class order, is left out). A key an older config.json lacks
    counts as its default."""
    defaults = ExperimentConfig().to_run_config()
    keys = [k for k in defaults if k not in SAME_EXPERIMENT_KEYS] + list(RUN_KEYS_BESIDE_CONFIG)
    return {key: config.get(key, defaults.get(key)) for key in keys}


def _differing_keys(configs: Sequence[dict], ignored: set[str]) -> list[str]:
    """The keys (sorted) whose value is not the same in every config."""
    keys = sorted({key for config in configs for key in config} - ignored)
    return [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]


def _describe(keys: Sequence[str], runs: Sequence[RunResults]) -> str:
    """`key (value of run a, value of run b ...)` for the first NAMED_DIFFERENCES keys."""
    parts = []
    for key in keys[:NAMED_DIFFERENCES]:
        values = dict.fromkeys(json.dumps(_experiment(r.config).get(key)) for r in runs)
        parts.append(f"{key} ({' / '.join(values)})")
    more = len(keys) - NAMED_DIFFERENCES
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


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
