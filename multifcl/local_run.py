"""Run the app once, as `flwr run . --stream` does, on a local SuperLink of its own.

    multifcl run -c "method='multifcl' backbone='efficientnet-lite0'"
    multifcl run -c configs/paper/cifar100-10tasks-beta0.5-multifcl.toml \\
        --federation-config "num-supernodes=10 client-resources-num-cpus=1"

Unlike a bare `flwr run`: the config is checked before anything starts (one line naming the
key, the nearest known key for a misspelling); the SuperLink gets free ports (or Flower's
FLWR_LOCAL_* port variables) and a private FLWR_HOME, so no other user's or job's SuperLink
is reused and none is left running; results without `output-dir` go to ./runs/ under the
current folder; the runtime dependency install is off; and the exit status says how the run
ended: 0 completed, 1 failed (its one-line reason printed last), 130 interrupted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from multifcl.check_config import check
from multifcl.cli import CommandError
from multifcl.compare import APP_DIR
from multifcl.interrupts import signals_held, sigterm_as_interrupt
from multifcl.local_flower import LocalFlower, PortInUse

SUMMARY = "flwr run the app on a SuperLink of its own; exit status 0 only when it completed"
EXAMPLES = (
    "multifcl run",
    "multifcl run -c \"method='multifcl' backbone='efficientnet-lite0'\"",
    (
        "multifcl run -c configs/paper/cifar100-10tasks-beta0.5-multifcl.toml "
        '--federation-config "num-supernodes=10 client-resources-num-cpus=1"'
    ),
)


class RunEnded(CommandError):
    """The run failed (status 1) or was interrupted (130)."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--run-config",
        dest="overrides",
        action="append",
        default=[],
        metavar="CONFIG",
        help='a TOML file or "key=value ..." pairs, as `flwr run -c` takes them',
    )
    parser.add_argument(
        "--federation-config",
        default="num-supernodes=2 client-resources-num-cpus=1",
        help="flwr's simulation settings (default: num-supernodes=2 client-resources-num-cpus=1)",
    )
    parser.add_argument("--app", type=Path, default=APP_DIR, help="the Flower app folder")


def run(args: argparse.Namespace) -> int:
    app = args.app.resolve()
    check(args.overrides, app)
    try:
        flower = LocalFlower(workdir=Path.cwd())
    except (PortInUse, ValueError) as error:
        raise CommandError(str(error)) from None
    try:
        with sigterm_as_interrupt():
            result = flower.run(app, args.overrides, args.federation_config, echo=True)
    except KeyboardInterrupt:
        raise RunEnded("interrupted; the SuperLink and its run are ended", 130) from None
    except RuntimeError as error:
        raise RunEnded(str(error), 1) from None
    finally:
        with signals_held():
            flower.close()
    if not result.completed:
        raise RunEnded(f"run {result.run_id} {result.status}: {result.details.strip()}", 1)
    print(f"multifcl run: run {result.run_id} {result.status}")
    return 0
