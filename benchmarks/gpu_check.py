"""GPU check: ViT-B/16 throughput and model-FLOPs utilization, MultiFCL rounds, and the
paper preset end to end, on one CUDA GPU.

ViT-B/16 is built from its config with random weights (`vit-b16-random`; nothing is
downloaded): speed does not depend on the weights. Data are CIFAR-100-shaped (100 classes,
500 train and 100 test images of 32x32 per class, 10 tasks), made in memory and resized to
224 px by the backbone. Stages, each timed and capped by the time budget:

1. images/s and MFU (benchmarks/model_flops.py: FLOPs per image counted on the step,
   the GPU's dense peak by name) of feature extraction (no gradients, every expert tap)
   in bf16 and in fp32 (TF32 unless --no-tf32), and of a training step (forward and
   backward through the frozen backbone into the adapters, the experts' cross-entropy,
   an SGD step) in fp32/TF32 (what `precision = "auto"` trains in) and bf16;
2. MultiFCL (first-task bottleneck adapters, 4 experts) over 10 clients for 2 tasks: seconds
   per round (every client's `train_client` in turn, then the server's `merge`) and the
   server's evaluation seconds after each task; in task 2 one extra round without the
   feature cache, for the ratio. Work per client is cut (fewer images per class) when the
   throughput measured in 1 says the rounds would not fit the budget.

`--paper` instead runs the CIFAR-100 10-task MultiFCL preset (10 clients, 5 rounds x 5
epochs) through the real server loop (benchmarks/paper_preset.py) and prints its wall time
and seconds per round against the paper's 228 s / 150 s. `--dry-run` runs the same code on
the CPU in seconds (the 4-block `vit-tiny`, a few images; a test runs it).

Needs python with torch (CUDA), transformers, peft and numpy (`--paper`: the project's
requirements, flwr included), run from the repo root:

    PYTHONPATH=. python3 benchmarks/gpu_check.py [--json out.json] [--paper] [--dry-run]
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

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.model_flops import counted_flops, peak_tflops, utilization
from benchmarks.paper_preset import DRY, PAPER, PRESET, run_paper_preset
from multifcl.backbones import Backbone, load_backbone
from multifcl.backbones.loading import compile_backbone
from multifcl.backbones.precision import pass_precision, tf32_enabled, use_tf32
from multifcl.config import ExperimentConfig
from multifcl.data import FederatedStream
from multifcl.data.sources import synthetic_splits
from multifcl.evaluation import evaluate_seen_tasks
from multifcl.methods.multifcl import MultiFCLMethod
from multifcl.metrics.resources import peak_rss_mb
from multifcl.seeding import derive_seed

NUM_CLASSES, NUM_TASKS, TRAIN_PER_CLASS, TEST_PER_CLASS, SOURCE_SIZE = 100, 10, 500, 100, 32
TASKS_RUN = 2


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one check runs: the full GPU check or the CPU dry run."""

    backbone: str
    device: str
    clients: int
    train_per_class: int
    test_per_class: int
    extract_batch: int
    train_batch: int


FULL = Setting("vit-b16-random", "cuda", 10, TRAIN_PER_CLASS, TEST_PER_CLASS, 256, 64)
DRY_RUN = Setting("vit-tiny", "cpu", 2, 4, 2, 16, 16)


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


def cifar100_shaped(setting: Setting, seed: int = 0):
    """Class-conditional 32x32 images: a fixed random pattern per class plus noise."""
    return synthetic_splits(
        seed, NUM_CLASSES, setting.train_per_class, setting.test_per_class, SOURCE_SIZE
    )


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


def throughput_steps(method: MultiFCLMethod, setting: Setting):
    """(extract, train) steps on random images; each returns the images it processed."""
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
    def extract(count: int = setting.extract_batch) -> int:
        method.expert_features(backbone.preprocess(images[:count]))
        return count

    def train(count: int = setting.train_batch) -> int:
        pixels = backbone.preprocess(images[:count])
        logits = method.experts.logits(method.expert_features(pixels))
        loss = sum(F.cross_entropy(z, labels[:count]) for z in logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return count

    return adapters, extract, train


def throughput(
    method: MultiFCLMethod, setting: Setting, seconds: float, peaks
) -> tuple[dict, dict]:
    """Images/s (printed with MFU) of extraction and training in fp32 (TF32 when on) and
    bf16; and the FLOPs per image of each step."""
    backbone = method.backbone
    adapters, extract, train = throughput_steps(method, setting)
    for value in adapters:
        value.requires_grad_(True)
    fp32_math = "tf32" if backbone.device.type == "cuda" and tf32_enabled() else "fp32"
    stages = (("extract", "bf16"), ("extract", "fp32"), ("train", "fp32"), ("train", "bf16"))
    results: dict = {}
    try:
        flops = {
            "extract": counted_flops(lambda: extract(2)),
            "train": counted_flops(lambda: train(2)),
        }
        report(
            f"  FLOPs per image (counted): extraction {flops['extract'] / 1e9:.4g} G, "
            f"training step {flops['train'] / 1e9:.4g} G (forward + backward to the adapters)"
        )
        for name, precision in stages:
            backbone.precision = precision
            math = fp32_math if precision == "fp32" else "bf16"
            step = extract if name == "extract" else train
            rate = images_per_second(step, backbone.device, seconds)
            results[f"{name}-{precision}"] = rate
            mfu = utilization(rate, flops[name], math, peaks)
            report(f"  {name:8s} {math:4s}: {rate:9.1f} images/s, {mfu}")
    finally:
        for value in adapters:
            value.requires_grad_(False)
        backbone.precision = method.config.precision
    return results, flops


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
    train_rate = rates[f"train-{pass_precision(device, config.precision, True)}"]
    extract_rate = rates[f"extract-{pass_precision(device, config.precision, False)}"]
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


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dry-run", "--smoke", action="store_true", help="tiny CPU run of every stage"
    )
    parser.add_argument("--paper", action="store_true", help="the paper preset end to end")
    parser.add_argument("--preset", type=Path, default=PRESET, help="with --paper")
    parser.add_argument("--budget-seconds", type=float, default=330.0)
    parser.add_argument("--bench-seconds", type=float, default=10.0, help="per throughput stage")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per task")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's; exits when a CUDA run finds no GPU."""
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device visible (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}); run on a machine with a GPU, or use --dry-run",
            file=sys.stderr,
        )
        sys.exit(2)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or "cpu"


def stage_config(args: argparse.Namespace, setting: Setting) -> ExperimentConfig:
    return ExperimentConfig(
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
        tf32=args.tf32,
        use_text_init=False,  # the packaged text model is not needed for timings
    )


def check_stages(args, setting: Setting, clock: Clock, name: str) -> dict:
    """Stages 1 and 2: throughput and MFU, then MultiFCL rounds."""
    config = stage_config(args, setting)
    bench_seconds = 0.1 if args.dry_run else args.bench_seconds
    started = time.perf_counter()
    backbone = load_backbone(setting.backbone, setting.device, precision=config.precision)
    if args.compile:
        compile_backbone(backbone)
    report(
        f"[{clock.elapsed():5.1f} s] backbone {setting.backbone}: {backbone.num_blocks} blocks, "
        f"d={backbone.feature_dim}, {backbone.image_size} px input, built in "
        f"{time.perf_counter() - started:.1f} s, compiled: {args.compile}"
    )
    probe = MultiFCLMethod(config, backbone, [f"class {c}" for c in range(NUM_CLASSES)])
    report(
        f"[{clock.elapsed():5.1f} s] throughput (batch {setting.extract_batch} extract, "
        f"{setting.train_batch} train), {bench_seconds:g} s each:"
    )
    rates, flops = throughput(probe, setting, bench_seconds, peak_tflops(name))
    results = {"images-per-second": rates, "flops-per-image": flops}
    del probe
    device = backbone.device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    report(
        f"[{clock.elapsed():5.1f} s] MultiFCL, {setting.clients} clients, {TASKS_RUN} tasks x "
        f"{args.rounds} rounds x {args.epochs} epochs, precision {args.precision}:"
    )
    results["federated"] = federated(setting, backbone, config, rates, clock)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        results["peak-gpu-gib"] = peak
        report(f"  peak GPU memory (federated stage): {peak:.2f} GiB")
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(argv)
    setting = DRY_RUN if args.dry_run else FULL
    clock = Clock(args.budget_seconds)
    device = torch.device(setting.device)
    name = device_name(device)
    use_tf32(args.tf32, device)
    import transformers

    report(
        f"gpu_check on {name}: torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"transformers {transformers.__version__}, python {platform.python_version()}, "
        f"fp32 matmuls use TF32: {device.type == 'cuda' and tf32_enabled()}"
    )
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results: dict = {"device": name, "setting": dataclasses.asdict(setting), "args": arguments}
    if args.paper:
        changes = {"precision": args.precision, "tf32": args.tf32, "compile": args.compile}
        shape = DRY if args.dry_run else PAPER
        results["paper"] = run_paper_preset(shape, args.preset, setting.device, changes, report)
    else:
        results.update(check_stages(args, setting, clock, name))
    rss = peak_rss_mb() / 2**10
    results["peak-rss-gib"] = rss
    results["total-seconds"] = clock.elapsed()
    report(f"peak host RSS {rss:.2f} GiB; gpu_check finished in {clock.elapsed():.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
