"""GPU check: ViT-B/16 throughput in fp32 and bf16, and MultiFCL round times, on one GPU.

ViT-B/16 is built from its config with random weights (nothing is downloaded): speed does
not depend on the weights. Data are CIFAR-100-shaped (100 classes, 500 train and 100 test
images of 32x32 per class, 10 tasks), made in memory and resized to 224 px by the backbone.
Stages, each timed and capped by the time budget:

1. feature extraction images/s (no gradients, every expert tap) in fp32 and bf16;
2. training images/s (forward and backward through the backbone into the adapters, the
   experts' cross-entropy, an SGD step) in fp32 and bf16;
3. MultiFCL (first-task bottleneck adapters, 4 experts) over 10 clients for 2 tasks: seconds
   per round (every client's `train_client` in turn, then the server's `merge`) and the
   server's evaluation seconds after each task; in task 2 one extra round without the
   feature cache, for the ratio. Work per client is cut (fewer images per class) when the
   throughput measured in 1-2 says the rounds would not fit the budget.

Needs only python with torch (CUDA), transformers, peft and numpy, run from the repo root:

    PYTHONPATH=. python3 benchmarks/gpu_check.py [--json out.json]
    PYTHONPATH=. python3 benchmarks/gpu_check.py --smoke     # tiny CPU run of every stage
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multifcl.backbones import Backbone, load_backbone
from multifcl.backbones.vision_transformer import TransformerBackbone
from multifcl.config import ExperimentConfig
from multifcl.data import DatasetSplits, FederatedStream, InMemoryImages
from multifcl.evaluation import evaluate_seen_tasks
from multifcl.methods.multifcl import MultiFCLMethod
from multifcl.metrics.resources import peak_rss_mb
from multifcl.seeding import derive_seed

NUM_CLASSES, NUM_TASKS, TRAIN_PER_CLASS, TEST_PER_CLASS, SOURCE_SIZE = 100, 10, 500, 100, 32
TASKS_RUN = 2


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one check runs: the full GPU check or the CPU smoke version."""

    backbone: str
    device: str
    clients: int
    train_per_class: int
    test_per_class: int
    extract_batch: int
    train_batch: int


FULL = Setting("vit-b16", "cuda", 10, TRAIN_PER_CLASS, TEST_PER_CLASS, 256, 64)
SMOKE = Setting("vit-tiny", "cpu", 2, 8, 4, 16, 16)


class Clock:
    """Seconds since the start, and what is left of the budget."""

    def __init__(self, budget: float) -> None:
        self.started = time.perf_counter()
        self.budget = budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.budget - self.elapsed()


def report(text: str) -> None:
    print(text, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_backbone(setting: Setting) -> Backbone:
    """ViT-B/16 (random weights, from its config) or, for the smoke run, the tiny preset."""
    if setting.backbone == "vit-tiny":
        return load_backbone("vit-tiny", setting.device)
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(), add_pooling_layer=False)  # ViT-B/16 at 224 px
    return TransformerBackbone(model, "vit-b16").to(setting.device)


def cifar100_shaped(setting: Setting, seed: int = 0) -> DatasetSplits:
    """Class-conditional 32x32 images: a fixed random pattern per class plus noise."""
    generator = torch.Generator().manual_seed(seed)

    def make(per_class: int) -> InMemoryImages:
        images = torch.empty(
            (NUM_CLASSES * per_class, 3, SOURCE_SIZE, SOURCE_SIZE), dtype=torch.uint8
        )
        for c in range(NUM_CLASSES):  # one class at a time bounds the float memory
            pattern = torch.rand((1, 3, SOURCE_SIZE, SOURCE_SIZE), generator=generator) * 255
            noise = torch.randn((per_class, 3, SOURCE_SIZE, SOURCE_SIZE), generator=generator)
            block = (pattern + 40 * noise).clamp(0, 255).to(torch.uint8)
            images[c * per_class : (c + 1) * per_class] = block
        labels = np.repeat(np.arange(NUM_CLASSES), per_class).astype(np.int64)
        return InMemoryImages(images, labels)

    names = [f"class {c}" for c in range(NUM_CLASSES)]
    return DatasetSplits(make(setting.train_per_class), make(setting.test_per_class), names)


def images_per_second(step: Callable[[], int], device: torch.device, seconds: float) -> float:
    """Images/s of `step` (returns the images it processed), after two warm-up calls."""
    for _ in range(2):
        step()
    synchronize(device)
    started, images = time.perf_counter(), 0
    while True:
        images += step()
        synchronize(device)
        if time.perf_counter() - started >= seconds:
            break
    return images / (time.perf_counter() - started)


def throughput(method: MultiFCLMethod, setting: Setting, seconds: float) -> dict:
    """Feature-extraction and training images/s in fp32 and bf16."""
    backbone, device = method.backbone, method.backbone.device
    images = torch.randint(0, 256, (setting.extract_batch, 3, SOURCE_SIZE, SOURCE_SIZE))
    images = images.to(torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (setting.train_batch,), device=device)
    state = method.initial_state()
    for m, d in enumerate(method.tap_dims):
        state[f"expert-{m}/prototypes"] = torch.randn(NUM_CLASSES, d).numpy()
    method.experts.load(state)
    adapters = list(method.adapters.parameters([0]).values())
    optimizer = torch.optim.SGD(adapters, lr=0.01, momentum=0.9)

    @torch.no_grad()
    def extract() -> int:
        method.expert_features(backbone.preprocess(images))
        return len(images)

    def train() -> int:
        pixels = backbone.preprocess(images[: setting.train_batch])
        logits = method.experts.logits(method.expert_features(pixels))
        loss = sum(F.cross_entropy(z, labels) for z in logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return setting.train_batch

    results = {}
    for value in adapters:
        value.requires_grad_(True)
    try:
        for precision in ("fp32", "bf16"):
            backbone.precision = precision
            for name, step in (("extract", extract), ("train", train)):
                rate = images_per_second(step, device, seconds)
                results[f"{name}-{precision}"] = rate
                report(f"  {name:8s} {precision}: {rate:9.1f} images/s")
    finally:
        for value in adapters:
            value.requires_grad_(False)
        backbone.precision = method.config.precision
    return results


def run_round(method, state, data, task, round_number, num_clients, device):
    """Every client's `train_client` in turn, then the merge; (new state, seconds)."""
    synchronize(device)
    started = time.perf_counter()
    updates = []
    for client in range(num_clients):
        client_data = data.client_train_set(task, client, num_clients)
        seed = derive_seed(method.config.seed, task.index, round_number, client)
        updates.append(method.train_client(state, client_data, task, seed))
    merged = method.merge(state, updates)
    synchronize(device)
    return merged, time.perf_counter() - started


def federated(
    setting: Setting, backbone: Backbone, config: ExperimentConfig, rates: dict, clock: Clock
) -> dict:
    """MultiFCL over `setting.clients` clients for two tasks; seconds per round and per eval."""
    device = backbone.device
    per_class = setting.train_per_class
    task_images = per_class * NUM_CLASSES // NUM_TASKS
    # one extraction pass (the cache) and local epochs of training per task-1 round
    train_rate, extract_rate = (
        rates[f"train-{config.precision}"],
        rates[f"extract-{config.precision}"],
    )
    task1_round = task_images * (config.local_epochs / train_rate + 1 / extract_rate)
    task2_round = task_images / extract_rate  # the uncached comparison round
    needed = config.rounds_per_task * task1_round + task2_round + 20.0
    if needed > clock.left():
        per_class = max(10, int(per_class * clock.left() / needed))
        report(
            f"  budget: {needed:.0f} s estimated, {clock.left():.0f} s left: "
            f"{per_class} train images per class instead of {setting.train_per_class}"
        )
    config = dataclasses.replace(config, max_train_per_class=per_class)
    data = FederatedStream(cifar100_shaped(setting), config)
    method = MultiFCLMethod(config, backbone, data.stream.class_names)
    state = method.initial_state()
    results: dict = {"train-images-per-class": per_class, "clients": setting.clients}
    for task in list(data.stream)[:TASKS_RUN]:
        holds = [len(data.client_indices(task, c, setting.clients)) for c in range(setting.clients)]
        report(f"  task {task.index + 1}: {sum(holds)} images over clients {holds}")
        if task.index == 1:  # the same round without the cache, not merged
            uncached = MultiFCLMethod(
                dataclasses.replace(config, cache_features=False), backbone, data.stream.class_names
            )
            _, seconds = run_round(uncached, state, data, task, 1, setting.clients, device)
            results["task2-round-seconds-no-cache"] = seconds
            report(f"  task 2 round without feature cache: {seconds:.2f} s")
        for round_number in range(1, config.rounds_per_task + 1):
            state, seconds = run_round(
                method, state, data, task, round_number, setting.clients, device
            )
            results.setdefault(f"task{task.index + 1}-round-seconds", []).append(seconds)
            report(f"  task {task.index + 1} round {round_number}: {seconds:.2f} s")
        synchronize(device)
        started = time.perf_counter()
        stage = evaluate_seen_tasks(method, state, data, task)
        synchronize(device)
        seconds = time.perf_counter() - started
        results[f"task{task.index + 1}-eval-seconds"] = seconds
        report(
            f"  task {task.index + 1} evaluation: {seconds:.2f} s, CIL accuracy per task "
            f"{[round(a, 1) for a in stage.cil]}"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run of every stage")
    parser.add_argument("--budget-seconds", type=float, default=330.0)
    parser.add_argument("--bench-seconds", type=float, default=10.0, help="per throughput stage")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per task")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    setting = SMOKE if args.smoke else FULL
    bench_seconds = 0.5 if args.smoke else args.bench_seconds
    clock = Clock(args.budget_seconds)
    if setting.device == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device visible (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}); run on a machine with a GPU, or use --smoke",
            file=sys.stderr,
        )
        sys.exit(2)
    device = torch.device(setting.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    import transformers

    report(
        f"gpu_check on {name or 'cpu'}: torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"transformers {transformers.__version__}, python {platform.python_version()}, "
        f"fp32 matmuls allow TF32: {torch.backends.cuda.matmul.allow_tf32}"
    )
    config = ExperimentConfig(
        method="multifcl",
        dataset="synthetic",  # only validated; the data come from `cifar100_shaped`
        num_tasks=NUM_TASKS,
        rounds_per_task=args.rounds,
        local_epochs=args.epochs,
        batch_size=setting.train_batch,
        partition="dirichlet",
        beta=0.5,
        device=setting.device,
        precision=args.precision,
        use_text_init=False,  # the packaged text model is not needed for timings
    )
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results: dict = {"device": name, "setting": dataclasses.asdict(setting), "args": arguments}

    started = time.perf_counter()
    backbone = build_backbone(setting)
    backbone.precision = config.precision
    report(
        f"[{clock.elapsed():5.1f} s] backbone {setting.backbone}: {backbone.num_blocks} blocks, "
        f"d={backbone.feature_dim}, {backbone.image_size} px input, built in "
        f"{time.perf_counter() - started:.1f} s"
    )
    probe = MultiFCLMethod(config, backbone, [f"class {c}" for c in range(NUM_CLASSES)])
    report(
        f"[{clock.elapsed():5.1f} s] throughput (batch {setting.extract_batch} extract, "
        f"{setting.train_batch} train), {bench_seconds:.0f} s each:"
    )
    results["images-per-second"] = throughput(probe, setting, bench_seconds)
    del probe
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    report(
        f"[{clock.elapsed():5.1f} s] MultiFCL, {setting.clients} clients, {TASKS_RUN} tasks x "
        f"{args.rounds} rounds x {args.epochs} epochs, {args.precision}:"
    )
    results["federated"] = federated(setting, backbone, config, results["images-per-second"], clock)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        results["peak-gpu-gib"] = peak
        report(f"  peak GPU memory (federated stage): {peak:.2f} GiB")
    rss = peak_rss_mb() / 2**10
    results["peak-rss-gib"] = rss
    results["total-seconds"] = clock.elapsed()
    report(f"peak host RSS {rss:.2f} GiB; gpu_check finished in {clock.elapsed():.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
