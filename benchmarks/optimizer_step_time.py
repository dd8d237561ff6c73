"""Seconds per local training step of one client with sgd, msam and sam, and the ratio to sgd.

The client is client 0 of 2 in task 0 of the quickstart run (digits, vit-tiny), in two cases:
`small`, the `finetune` method's `TrainableTop` (a copy of the last block and the final norm,
and a linear head; the trunk is frozen), and `full`, a trainable copy of the whole backbone
and an MLP head (over 5M parameters, where the optimizer's own passes over the weights
count). A step is `optimizer.step(closure)`, the closure zeroing the grads and running
forward and backward, as a client's loop does; the images are preprocessed beforehand, so
every optimizer times the same batches and only what differs. Each repeat reloads the
initial weights, builds the optimizer, warms up, then times `--steps` steps; the optimizers
take turns within each repeat, so background load hits them alike. Prints, per case, the
median seconds per step per optimizer and its ratio to sgd.

    python benchmarks/optimizer_step_time.py [--steps 20] [--repeats 7] [--threads 1]
        [--batch-size 32] [--cases small full]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multifcl.backbones import Backbone
from multifcl.config import ExperimentConfig
from multifcl.experiment import Experiment, load_experiment
from multifcl.methods.base import batches
from multifcl.optim import build_optimizer, restore_unperturbed

OPTIMIZERS = ("sgd", "msam", "sam")
CASES = ("small", "full")
FULL_HIDDEN = 2304  # the full case's MLP width: with vit-tiny, 5.5M trained parameters
NUM_CLIENTS = 2
WARMUP_STEPS = 5

Batch = tuple[torch.Tensor, torch.Tensor]


def client_batches(experiment: Experiment) -> tuple[list[Batch], int]:
    """Client 0's preprocessed task-0 batches, and the number of classes seen in task 0."""
    task = experiment.data.stream.task(0)
    data = experiment.data.client_train_set(task, 0, NUM_CLIENTS)
    generator = torch.Generator().manual_seed(0)
    prepared = [
        (experiment.backbone.preprocess(images), labels)
        for images, labels in batches(data, experiment.config.batch_size, generator)
    ]
    return prepared, task.seen_classes.stop


class FullyTrainable(nn.Module):
    """A trainable copy of the whole backbone, then a two-hidden-layer MLP head of width
    `FULL_HIDDEN`: over 5M trained parameters, most of them cheap to run, so the optimizer's
    own passes over the weights weigh as much as they can."""

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone).requires_grad_(True)
        self.head = nn.Sequential(
            nn.Linear(backbone.feature_dim, FULL_HIDDEN),
            nn.ReLU(),
            nn.Linear(FULL_HIDDEN, FULL_HIDDEN),
            nn.ReLU(),
            nn.Linear(FULL_HIDDEN, num_classes),
        ).to(backbone.device)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixels))


def case_model(case: str, experiment: Experiment) -> nn.Module:
    """The trained module of a case; its trainable parameters are the ones optimized."""
    if case == "small":
        return experiment.method.model
    return FullyTrainable(experiment.backbone, experiment.method.num_classes).eval()


def time_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    prepared: list[Batch],
    seen: int,
    steps: int,
) -> float:
    """Seconds per step over `steps` steps, cycling through the batches from the first."""

    def closure_for(images: torch.Tensor, labels: torch.Tensor) -> Callable[[], torch.Tensor]:
        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images)[:, :seen], labels)
            loss.backward()
            return loss

        return closure

    start = time.perf_counter()
    for step in range(steps):
        optimizer.step(closure_for(*prepared[step % len(prepared)]))
    return (time.perf_counter() - start) / steps


def benchmark_case(
    case: str,
    experiment: Experiment,
    configs: dict[str, ExperimentConfig],
    prepared: list[Batch],
    seen: int,
    args: argparse.Namespace,
) -> None:
    """Time every optimizer on one case and print its medians and ratios to sgd."""
    model = case_model(case, experiment)
    initial = copy.deepcopy(model.state_dict())
    trained = [p for p in model.parameters() if p.requires_grad]
    print(f"case {case}: {sum(p.numel() for p in trained):,} trained parameters")
    seconds: dict[str, list[float]] = {name: [] for name in OPTIMIZERS}
    for _ in range(args.repeats):
        for name in OPTIMIZERS:
            model.load_state_dict(initial)
            optimizer = build_optimizer(configs[name], trained)
            time_steps(model, optimizer, prepared, seen, WARMUP_STEPS)
            seconds[name].append(time_steps(model, optimizer, prepared, seen, args.steps))
            restore_unperturbed(optimizer)
    baseline = statistics.median(seconds["sgd"])
    for name in OPTIMIZERS:
        median = statistics.median(seconds[name])
        spread = f"{min(seconds[name]) * 1e3:.2f}-{max(seconds[name]) * 1e3:.2f}"
        print(
            f"{case:5s} {name:5s} {median * 1e3:8.2f} ms/step  {median / baseline:5.2f}x sgd  "
            f"(repeats {spread} ms)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (the run config's torch-threads)"
    )
    parser.add_argument("--batch-size", type=int, default=ExperimentConfig.batch_size)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    args = parser.parse_args()
    config = ExperimentConfig(
        method="finetune",
        dataset="digits",
        backbone="vit-tiny",
        device="cpu",
        batch_size=args.batch_size,
        torch_threads=args.threads,
    )
    experiment = load_experiment(config)
    prepared, seen = client_batches(experiment)
    configs = {name: replace(config, optimizer=name) for name in OPTIMIZERS}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{len(prepared)} batches of <= {config.batch_size} images; "
        f"median of {args.repeats} repeats x {args.steps} steps (after {WARMUP_STEPS} warm-up)"
    )
    for case in args.cases:
        benchmark_case(case, experiment, configs, prepared, seen, args)


if __name__ == "__main__":
    main()
