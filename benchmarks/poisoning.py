"""Accuracy under poisoned updates: `robust-merge` none vs each robust rule (README table).

In-process runs (the real server loop, strategy, validation and ClientApp over
`server.in_process_grid.InProcessGrid`; not `flwr run`) of the `prototypes` method with
EfficientNet-Lite0 (96 px) on an offline CIFAR-10 image folder: 5 tasks of 2 classes,
`--train-per-class` training images per class, `--test-per-class` test images per class
(a folder of links to the first ones in name order, under `runs/`; 0: the whole test set),
Dirichlet beta 0.5, seed 0, the defaults otherwise (2 rounds per task). The first `a` of `n` clients are attackers: each of their
replies is the genuine one with every feature row (`class-means`) replaced by

- `scaled`: the row x 1e30 (the README's finding), once with the update-norm bounds on
  (the default) and once with them off (`max-row-norm-ratio = 0`), so the merge alone
  faces it;
- `sign-flipped`: minus the row;
- `random`: a Gaussian row of the same norm (a fresh draw per row, round and client).

The frozen backbone's features do not depend on the merge, so every run in this process
shares one backbone, one data stream and one cache of train and test features.

    python benchmarks/poisoning.py --data-root /abs/path/cifar10-jpg \
        [--train-per-class 100] [--test-per-class 300]

Prints a Markdown table of Last (accuracy on all classes after the last task, %).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.app import Message

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients import client_app
from clients.client_app import train
from multifcl import evaluation
from multifcl.backbones import load_backbone
from multifcl.config import ROBUST_MERGES, ExperimentConfig
from multifcl.data import FederatedStream, load_splits
from multifcl.experiment import Experiment
from multifcl.features import FeatureCache
from multifcl.methods import build_method
from protocol.broadcast import assemble_state
from protocol.messages import CONFIG, content_to_update, update_to_content
from server import continual_loop
from server.in_process_grid import InProcessGrid

SCALE = 1e30
SETTINGS = [(3, 1), (10, 1), (10, 3)]  # (clients, attackers): at most (n - 1) // 2 attackers
ATTACKS = ["scaled", "scaled, bounds off", "sign-flipped", "random"]


def corrupt_rows(rows: np.ndarray, attack: str, rng: np.random.Generator) -> np.ndarray:
    """The attacker's version of genuine (k, d) feature rows."""
    if attack.startswith("scaled"):
        return rows * np.float32(SCALE)
    if attack == "sign-flipped":
        return -rows
    if attack == "random":
        noise = rng.standard_normal(rows.shape)
        norms = np.linalg.norm(rows, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1)[:, None]
        return (noise * norms).astype(rows.dtype)
    raise ValueError(f"unknown attack {attack!r}")


def attacking(attackers: int, attack: str | None, experiment: Experiment):
    """The real ClientApp handler; partitions below `attackers` corrupt their feature rows."""

    def handler(message: Message, context) -> Message:
        reply = train(message, context)
        partition = context.node_config["partition-id"]
        if attack is None or partition >= attackers:
            return reply
        round_config = message.content[CONFIG]
        task = experiment.data.stream.task(int(round_config["task"]))
        state = assemble_state(message.content, context.state)  # what `train` assembled
        update = content_to_update(reply.content)
        rng = np.random.default_rng([partition, task.index, int(round_config["round"])])
        for key in sorted(experiment.method.update_layout(state, task).feature_rows):
            update.arrays[key] = corrupt_rows(update.arrays[key], attack, rng)
        return Message(update_to_content(update), reply_to=message)

    return handler


class KeepAllCache(FeatureCache):
    """A feature cache that keeps every task's features: runs after the first reuse them."""

    def keep_only(self, keep) -> None:
        pass


def share_experiments(base: ExperimentConfig) -> None:
    """Make every run in this process build its method over one backbone, one data stream
    and one train and one test feature cache (instead of loading them per run)."""
    backbone = load_backbone(base.backbone, base.device, base.image_size, base.precision)
    data = FederatedStream(load_splits(base, backbone.image_size), base)
    train_cache, test_cache = KeepAllCache(2**34), KeepAllCache(2**34)
    built: dict[ExperimentConfig, Experiment] = {}

    def load_experiment(config: ExperimentConfig) -> Experiment:
        if config not in built:
            method = build_method(config, backbone, data.stream.class_names)
            method.feature_cache = train_cache
            evaluation._CACHES[method] = test_cache
            built[config] = Experiment(config, backbone, data, method)
        return built[config]

    client_app.load_experiment = continual_loop.load_experiment = load_experiment


def test_subset(data_root: Path, per_class: int, folder: Path) -> Path:
    """`data_root` with only the first `per_class` test images of each class (links)."""
    if not per_class:
        return data_root
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "test").mkdir(parents=True)
    (folder / "train").symlink_to(data_root / "train")
    for class_folder in sorted((data_root / "test").iterdir()):
        (folder / "test" / class_folder.name).mkdir()
        for image in sorted(class_folder.iterdir())[:per_class]:
            (folder / "test" / class_folder.name / image.name).symlink_to(image)
    return folder


def run(base: ExperimentConfig, folder: Path, clients: int, attackers: int, attack, rule) -> dict:
    changes = {"robust_merge": rule, "output_dir": folder}
    if attack == "scaled, bounds off":
        changes["max_row_norm_ratio"] = 0.0
    config = ExperimentConfig(**{**vars(base), **changes})
    experiment = continual_loop.load_experiment(config)
    grid = InProcessGrid(attacking(attackers, attack, experiment), config.to_run_config(), clients)
    return continual_loop.run_continual_learning(grid, config, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=300)
    parser.add_argument("--num-tasks", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/poisoning/results.json"))
    parser.add_argument("--rules", nargs="+", choices=ROBUST_MERGES, default=list(ROBUST_MERGES))
    args = parser.parse_args()
    base = ExperimentConfig(
        method="prototypes",
        dataset="imagefolder",
        data_root=test_subset(
            args.data_root.resolve(), args.test_per_class, args.out.parent.resolve() / "data"
        ),
        backbone="efficientnet-lite0",
        num_tasks=args.num_tasks,
        max_train_per_class=args.train_per_class,
        seed=args.seed,
    )
    share_experiments(base)
    rows = [(n, 0, None) for n in sorted({n for n, _ in SETTINGS})]
    rows += [(n, a, attack) for n, a in SETTINGS for attack in ATTACKS]
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for n, a, attack in rows:
            cells = {}
            for rule in args.rules:
                started = time.perf_counter()
                folder = Path(scratch) / f"{n}-{a}-{attack}-{rule}".replace(" ", "")
                metrics = run(base, folder, n, a, attack, rule)
                cells[rule] = round(metrics["last"], 1)
                print(
                    f"n={n} a={a} {attack} {rule}: Last {cells[rule]} "
                    f"({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
            results.append({"clients": n, "attackers": a, "attack": attack or "none", **cells})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print("\n| clients | attackers | attack | " + " | ".join(args.rules) + " |")
    print("|---|---|---|" + "---|" * len(args.rules))
    for r in results:
        cells = " | ".join(f"{r[rule]:.1f}" for rule in args.rules)
        print(f"| {r['clients']} | {r['attackers']} | {r['attack']} | {cells} |")


if __name__ == "__main__":
    main()
