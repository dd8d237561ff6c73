"""Check a run config before Flower sees it: every key known (the nearest one suggested for
a misspelling), every value valid, with the app's defaults for the rest.

    multifcl check-config -c "method='multifcl' num-tasks=5"
    multifcl check-config -c configs/paper/cifar100-10tasks-beta0.5-multifcl.toml

`-c` takes what `flwr run -c` takes (a TOML file or `key=value` pairs) and may be repeated,
later ones winning. Flower itself refuses an unknown key with `Invalid run configuration`
and names it only in the SuperLink's log; a bad value ends the run `failed` after start-up.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from multifcl.compare import APP_DIR, RunConfig, app_defaults, parse_key_values, read_preset
from multifcl.config import ExperimentConfig
from multifcl.config_names import check_names

SUMMARY = "validate run-config overrides (files or key=value pairs) against the app's keys"
EXAMPLES = (
    "multifcl check-config -c \"method='multifcl' num-tasks=5\"",
    "multifcl check-config -c configs/paper/cifar100-10tasks-beta0.5-multifcl.toml",
)


def read_overrides(text: str) -> RunConfig:
    """One `-c` value: a TOML file when it names one, else `key=value` pairs."""
    return read_preset(text, "-c") if text.endswith(".toml") else parse_key_values(text, "-c")


def check(overrides: list[str], app_dir: Path = APP_DIR) -> ExperimentConfig:
    """The validated config the overrides give over the app's defaults."""
    values = app_defaults(app_dir)
    for text in overrides:
        values.update(read_overrides(text))
    return check_names(ExperimentConfig.from_run_config(values))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        dest="overrides",
        action="append",
        default=[],
        metavar="CONFIG",
        help='a TOML file or "key=value ..." pairs, as `flwr run -c` takes them',
    )
    parser.add_argument("--app", type=Path, default=APP_DIR, help="the Flower app folder")


def run(args: argparse.Namespace) -> int:
    config = check(args.overrides, args.app.resolve())
    print(
        f"ok: {config.method} on {config.dataset} with {config.backbone}, "
        f"{config.num_tasks} tasks x {config.rounds_per_task} rounds"
    )
    return 0
