"""Performance benchmark (not a test): what the caches, small messages and Flower/Ray cost.

Prints, each as a median over `--repeats` runs, with ratios measured in the same run:

1. seconds per later-task round (task 2) with the client feature cache and without it, for
   MultiFCL with first-task adapters (`--rounds` x `--epochs` per task, in-process, the
   real `train_client` and `merge`);
2. the server's evaluation seconds after the last task with the evaluation cache (earlier
   tasks' test features reused) and without it;
3. bytes uploaded per client in a later-task round for the ViT-B/16, 100-class, 4-expert
   shape (the real client update, serialized as Flower does, float32 and float16), against
   sending every class's prototypes (the paper: 0.38M parameters) and the whole trainable
   model; and the bytes per later-task round of the `flwr run` below, from its rounds.csv;
4. Flower/Ray overhead: wall seconds of `flwr run` against the clients' compute seconds
   (every `train_client` call, timed in-process on the same config, and as the clients
   report it in the run's rounds.csv), and the peak RSS of each client (Ray actor)
   process, with 2 and with 10 clients;
5. our per-client cost at `--many-clients` federation sizes (in-process: server seconds per
   round beside the clients' own compute, and the cache misses per round).
6. start-up: what a fresh process (a Ray actor, the ServerApp) spends before its first round,
   each step timed in a fresh Python process: importing torch, transformers, the ClientApp
   module, loading the backbone, the text encoder (MultiFCL's text init, first used in task
   2 by a client), and a whole `multifcl run` of the quickstart config for scale.

    python benchmarks/perf.py --quick      # about 10 minutes on 2 CPU cores
    python benchmarks/perf.py              # the README's numbers (longer)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.communication import later_task_upload
from benchmarks.gpu_check import run_round as every_client_then_merge
from multifcl.backbones import load_backbone
from multifcl.compare import key_values_text
from multifcl.config import ExperimentConfig
from multifcl.data import DatasetSplits, FederatedStream, load_splits
from multifcl.data.images import ImageFiles
from multifcl.evaluation import evaluate_seen_tasks
from multifcl.features import FeatureCache
from multifcl.methods import build_method
from multifcl.metrics.resources import peak_rss_mb
from multifcl.periodic import Periodic

APP_DIR = Path(__file__).resolve().parents[1]
CIFAR10 = APP_DIR.parent / "shared" / "data" / "cifar10-jpg"
PAPER_LATER_TASK_PARAMETERS = 380_000  # MultiFCL paper: 0.38M parameters per later-task round


@dataclasses.dataclass
class Harness:
    """A config's data, method and clients, built in this process."""

    config: ExperimentConfig
    data: FederatedStream
    method: object
    clients: int


def build(config: ExperimentConfig, clients: int, test_per_class: int | None) -> Harness:
    backbone = load_backbone(config.backbone, "cpu", config.image_size, config.precision)
    splits = load_splits(config, backbone.image_size)
    if test_per_class is not None:
        splits = DatasetSplits(
            splits.train, _first_per_class(splits.test, test_per_class), splits.class_names
        )
    data = FederatedStream(splits, config)
    return Harness(config, data, build_method(config, backbone, data.stream.class_names), clients)


def _first_per_class(split, per_class: int):
    """The first `per_class` samples of each class (files stay undecoded)."""
    keep = np.concatenate(
        [np.flatnonzero(split.labels == c)[:per_class] for c in np.unique(split.labels)]
    )
    if isinstance(split, ImageFiles):
        return ImageFiles([split.paths[i] for i in keep], split.labels[keep], split.fallback_size)
    return split.take(keep)


def run_round(harness: Harness, state, task, round_number: int):
    """Every client's `train_client`, then the merge; (state, seconds)."""
    method, data = harness.method, harness.data
    cpu = torch.device("cpu")
    return every_client_then_merge(method, state, data, task, round_number, harness.clients, cpu)


def state_after_first_task(harness: Harness):
    state = harness.method.initial_state()
    for round_number in range(1, harness.config.rounds_per_task + 1):
        state, _ = run_round(harness, state, harness.data.stream.task(0), round_number)
    return state


def later_task_rounds(harness: Harness, state, repeats: int) -> list[list[float]]:
    """Seconds of each round of task 2, per repeat (the feature cache emptied before each)."""
    task, timings = harness.data.stream.task(1), []
    for client in range(harness.clients):  # decode images before timing: JPEGs are not the point
        harness.data.client_train_set(task, client, harness.clients)
    for _ in range(repeats):
        harness.method.feature_cache.keep_only(lambda key: False)
        current, seconds = state, []
        for round_number in range(1, harness.config.rounds_per_task + 1):
            current, elapsed = run_round(harness, current, task, round_number)
            seconds.append(elapsed)
        timings.append(seconds)
    return timings


def last_evaluation_seconds(harness: Harness, state, repeats: int, cached: bool) -> list[float]:
    """Seconds of the evaluation after the last task; with the cache, the evaluations after
    the earlier tasks run first (untimed), as in a real run."""
    stream, timings = harness.data.stream, []
    last = stream.task(stream.num_tasks - 1)
    for task in stream:  # decode images before timing
        harness.data.test_set(task)
    for _ in range(repeats):
        cache = FeatureCache(harness.config.feature_cache_mb * 2**20) if cached else None
        if cached:
            for index in range(stream.num_tasks - 1):
                evaluate_seen_tasks(harness.method, state, harness.data, stream.task(index), cache)
        started = time.perf_counter()
        evaluate_seen_tasks(harness.method, state, harness.data, last, cache)
        timings.append(time.perf_counter() - started)
    return timings


def section_caches(args, report) -> dict:
    config = ExperimentConfig(
        method="multifcl",
        dataset=args.dataset,
        data_root=args.data_root,
        backbone=args.backbone,
        num_tasks=args.tasks,
        rounds_per_task=args.rounds,
        local_epochs=args.epochs,
        max_train_per_class=args.train_per_class,
        partition="iid",
        device="cpu",
    )
    cached = build(config, args.clients, args.test_per_class)
    plain = build(
        dataclasses.replace(config, cache_features=False), args.clients, args.test_per_class
    )
    state = state_after_first_task(cached)
    task = cached.data.stream.task(1)
    images = sum(
        len(cached.data.client_indices(task, c, args.clients)) for c in range(args.clients)
    )
    report(
        f"## 1. later-task round, {config.method} first-task adapters, {config.backbone}, "
        f"{args.clients} clients, {images} images in task 2, {args.rounds} rounds x "
        f"{args.epochs} epochs, {args.repeats} repeats"
    )
    with_cache = later_task_rounds(cached, state, args.repeats)
    without = later_task_rounds(plain, state, args.repeats)
    result = {}
    for name, timings in (("with cache", with_cache), ("without cache", without)):
        rounds = [s for repeat in timings for s in repeat]
        tasks = [sum(repeat) for repeat in timings]
        result[name] = {
            "median round": statistics.median(rounds),
            "median task": statistics.median(tasks),
        }
        report(
            f"  {name:14s}: median round {statistics.median(rounds):8.3f} s, first round "
            f"{statistics.median(r[0] for r in timings):8.3f} s, whole task "
            f"{statistics.median(tasks):8.3f} s"
        )
    round_ratio = result["without cache"]["median round"] / result["with cache"]["median round"]
    task_ratio = result["without cache"]["median task"] / result["with cache"]["median task"]
    report(f"  ratio without/with: median round {round_ratio:.1f}x, whole task {task_ratio:.1f}x")

    report(
        f"## 2. server evaluation after the last task (task {args.tasks}), {args.repeats} repeats"
    )
    final = state  # any state: the cost does not depend on the values
    evaluation = {
        "with cache": last_evaluation_seconds(cached, final, args.repeats, cached=True),
        "without cache": last_evaluation_seconds(plain, final, args.repeats, cached=False),
    }
    for name, timings in evaluation.items():
        report(f"  {name:14s}: median {statistics.median(timings):8.3f} s")
    eval_ratio = statistics.median(evaluation["without cache"]) / statistics.median(
        evaluation["with cache"]
    )
    report(f"  ratio without/with: {eval_ratio:.1f}x")
    return {
        "rounds": result,
        "round-ratio": round_ratio,
        "task-ratio": task_ratio,
        "evaluation": evaluation,
        "evaluation-ratio": eval_ratio,
    }


def section_bytes(report) -> dict:
    report(
        "## 3. bytes uploaded per client in a later-task round, ViT-B/16, 100 classes, 4 experts"
    )
    sizes = later_task_upload(num_experts=4)
    for line in sizes.lines():
        report(f"  {line}")
    report(
        f"  the paper's later-task round: {PAPER_LATER_TASK_PARAMETERS:,} parameters; this "
        f"upload {sizes.parameters:,} ({PAPER_LATER_TASK_PARAMETERS / sizes.parameters:.1f}x fewer)"
    )
    return dataclasses.asdict(sizes)


class RssWatcher:
    """Peak resident memory (VmHWM) of every process whose environment names `flwr_home`."""

    def __init__(self, flwr_home: Path, marker: str = "ClientAppActor") -> None:
        self.flwr_home = f"FLWR_HOME={flwr_home}".encode()
        self.marker = marker
        self.peaks: dict[int, tuple[str, float]] = {}
        self._periodic = Periodic(self._poll, 0.5)

    def __enter__(self) -> Self:
        self._periodic.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._periodic.__exit__(*exc)

    def _poll(self) -> None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                self._read(entry)

    def _read(self, entry: Path) -> None:
        try:
            if self.flwr_home not in (entry / "environ").read_bytes().split(b"\0"):
                return
            name = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:
            return
        peak = next(
            (line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")), 0
        )
        pid = int(entry.name)
        self.peaks[pid] = (name, max(float(peak) / 1024, self.peaks.get(pid, ("", 0.0))[1]))

    def client_peaks_mb(self) -> list[float]:
        """Peak RSS of each client actor process (Ray's `ray::ClientAppActor` workers)."""
        return sorted(mb for name, mb in self.peaks.values() if self.marker in name)


def client_compute_seconds(run_config: dict, clients: int, base: Path) -> tuple[float, float]:
    """(clients' compute seconds, in-process wall seconds) of the config through the real
    server loop and ClientApp handler, without Flower's runtime (no Ray, no SuperLink)."""
    from clients.client_app import train
    from server.continual_loop import run_continual_learning
    from server.in_process_grid import InProcessGrid

    spent = [0.0]

    def timed(message, context):
        started = time.perf_counter()
        reply = train(message, context)
        spent[0] += time.perf_counter() - started
        return reply

    config = ExperimentConfig.from_run_config({**run_config, "output-dir": str(base / "inproc")})
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the run's summary tables
        run_continual_learning(InProcessGrid(timed, config.to_run_config(), clients), config, base)
    return spent[0], time.perf_counter() - started


def section_flower(args, report) -> dict:
    from multifcl.local_flower import LocalFlower

    results = {}
    for clients in args.flwr_clients:
        base = Path(tempfile.mkdtemp(prefix="multifcl-perf-"))
        run_config = {
            "method": "multifcl",
            "dataset": args.flwr_dataset,
            "backbone": args.backbone,
            "num-tasks": args.tasks,
            "rounds-per-task": args.rounds,
            "local-epochs": args.epochs,
            "max-train-per-class": args.flwr_train_per_class,
            "partition": "iid",
            "device": "cpu",
        }
        if args.flwr_dataset == "imagefolder":
            run_config["data-root"] = str(args.flwr_data_root)
        compute, inprocess_wall = client_compute_seconds(run_config, clients, base)
        overrides = key_values_text({**run_config, "output-dir": str(base / "flwr")})
        (base / "home").mkdir()
        with (
            LocalFlower(home=base / "home", workdir=base) as flower,
            RssWatcher(base / "home") as watcher,
        ):
            started = time.perf_counter()
            run = flower.run(
                APP_DIR,
                overrides=overrides,
                federation=f"num-supernodes={clients} client-resources-num-cpus=1",
            )
            wall = time.perf_counter() - started
        if not run.completed:
            report(f"  flwr run with {clients} clients failed: {run.status} {run.details}")
            continue
        rows = list(csv.DictReader((base / "flwr" / "rounds.csv").open()))
        later = [int(r["bytes_up"]) for r in rows if r["task"] != "1"]
        compute_in_run = sum(float(r["client_seconds"] or 0) for r in rows)
        peaks = watcher.client_peaks_mb()
        results[clients] = {
            "flwr-wall": wall,
            "in-process-wall": inprocess_wall,
            "client-compute": compute,
            "client-compute-in-flwr-run": compute_in_run,
            "client-peak-rss-mb-in-rounds-csv": max(
                float(r["client_peak_rss_mb"] or 0) for r in rows
            ),
            "later-task-bytes-up-per-round": statistics.median(later) if later else None,
            "client-process-peak-rss-mb": peaks,
        }
        report(
            f"## 4. flwr run, {clients} clients ({args.flwr_dataset}, {args.tasks} tasks x "
            f"{args.rounds} rounds x {args.epochs} epochs): wall {wall:.1f} s; clients' compute "
            f"{compute:.1f} s (in-process run {inprocess_wall:.1f} s): wall/compute "
            f"{wall / compute:.2f}x"
        )
        report(
            f"  clients' compute inside the flwr run (rounds.csv client_seconds, summed): "
            f"{compute_in_run:.1f} s: wall/compute {wall / compute_in_run:.2f}x"
        )
        if later:
            report(
                f"  bytes uploaded per later-task round (all clients): {statistics.median(later):,.0f}"
            )
        report(f"  peak RSS per client process (MB): {', '.join(f'{mb:.0f}' for mb in peaks)}")
    return results


def section_clients(args, report) -> dict:
    """Our per-client cost at growing federation sizes: the real server loop and ClientApp
    over an in-process Grid (no Ray, no SuperLink, so none of Flower's message polling),
    `prototypes` on digits, one task, `--rounds` rounds. Server seconds per round are the
    round's wall time less the clients' own compute (rounds.csv `client_seconds`)."""
    from clients.client_app import train
    from multifcl.features.shared_store import remove_run_stores
    from server.continual_loop import run_continual_learning
    from server.in_process_grid import InProcessGrid

    results = {}
    for clients in args.many_clients:
        base = Path(tempfile.mkdtemp(prefix="multifcl-perf-clients-"))
        config = ExperimentConfig.from_run_config(
            {
                "method": "prototypes",
                "dataset": "digits",
                "backbone": args.clients_backbone,
                "num-tasks": 1,
                "rounds-per-task": args.rounds,
                "partition": "iid",
                "device": "cpu",
                "output-dir": str(base / "run"),
            }
        )
        grid = InProcessGrid(train, config.to_run_config(), clients)
        with contextlib.redirect_stdout(io.StringIO()):  # the run's summary tables
            run_continual_learning(grid, config, base)
        rows = list(csv.DictReader((base / "run" / "rounds.csv").open()))
        server = [float(r["seconds"]) - float(r["client_seconds"]) for r in rows]
        client = [float(r["client_seconds"]) for r in rows]
        misses = [int(r["feature_cache_misses"]) for r in rows]
        remove_run_stores(next(iter(grid.contexts.values())).run_id)
        shutil.rmtree(base, ignore_errors=True)
        results[clients] = {"server-seconds": server, "client-seconds": client, "misses": misses}
        report(
            f"## 5. {clients} clients in-process ({args.clients_backbone}, prototypes on "
            f"digits, {args.rounds} rounds): server s/round (median) "
            f"{statistics.median(server):.3f}, {1e3 * statistics.median(server) / clients:.2f} "
            f"ms per client; clients' compute {1e3 * statistics.median(client) / clients:.2f} "
            f"ms per client per round; cache misses per round {misses}"
        )


STARTUP_STEPS = {
    "import torch": "import torch",
    "import transformers": "import torch, transformers",
    "import the ClientApp module": "import clients.client_app",
    "ClientApp module + backbone (vit-tiny)": (
        "import clients.client_app; from multifcl.backbones import load_backbone; "
        "load_backbone('vit-tiny')"
    ),
    "ClientApp module + text encoder (MiniLM)": (
        "import clients.client_app; from multifcl.backbones import load_backbone; "
        "from multifcl.backbones.text_encoders import load_text_encoder; "
        "load_text_encoder('minilm', load_backbone('vit-tiny'))"
    ),
}


def section_startup(report) -> dict:
    """Seconds of each start-up step in a fresh process, and of a quickstart `multifcl run`."""
    import subprocess

    report("## 6. start-up, each step in a fresh python process (wall seconds)")
    env = {**os.environ, "PYTHONPATH": str(APP_DIR)}
    results = {}
    for name, code in STARTUP_STEPS.items():
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=APP_DIR)
        results[name] = time.perf_counter() - started
        report(f"  {name:42s} {results[name]:6.1f} s")
    with tempfile.TemporaryDirectory(prefix="multifcl-startup-") as folder:
        command = [sys.executable, "-m", "multifcl.cli", "run", "--app", str(APP_DIR)]
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env, cwd=folder, capture_output=True)
        results["multifcl run (quickstart)"] = time.perf_counter() - started
    report(
        f"  {'multifcl run (quickstart), whole':42s} {results['multifcl run (quickstart)']:6.1f} s"
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: ~10 min on 2 cores")
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--dataset", default="imagefolder")
    parser.add_argument("--data-root", type=Path, default=CIFAR10)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flwr-dataset", default="digits")
    parser.add_argument("--flwr-data-root", type=Path, default=CIFAR10)
    parser.add_argument("--flwr-train-per-class", type=int, default=100)
    parser.add_argument("--flwr-clients", type=int, nargs="*", default=[2, 10])
    parser.add_argument(
        "--many-clients",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[2, 10, 100, 400],
        help="federation sizes of section 5 (our per-client cost), e.g. 2,10,100,400",
    )
    parser.add_argument("--clients-backbone", default="vit-tiny")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=("caches", "bytes", "flower", "clients", "startup")
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.train_per_class, args.test_per_class, args.flwr_train_per_class = 30, 20, 20
        args.rounds, args.epochs = 5, 5
    if args.dataset != "imagefolder":
        args.data_root = None
    elif not args.data_root.is_dir():
        sys.exit(f"perf: --data-root {str(args.data_root)!r} is not a folder")
    if args.flwr_dataset == "imagefolder" and not args.flwr_data_root.is_dir():
        sys.exit(f"perf: --flwr-data-root {str(args.flwr_data_root)!r} is not a folder")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    def report(text: str) -> None:
        print(text, flush=True)

    report(
        f"# multifcl perf on {platform.node()}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"python {platform.python_version()}"
    )
    started = time.perf_counter()
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    if "caches" not in args.skip:
        results["caches"] = section_caches(args, report)
    if "bytes" not in args.skip:
        results["bytes"] = section_bytes(report)
    if "flower" not in args.skip:
        results["flower"] = section_flower(args, report)
    if "clients" not in args.skip:
        results["clients"] = section_clients(args, report)
    if "startup" not in args.skip:
        results["startup"] = section_startup(report)
    peak = peak_rss_mb()
    report(
        f"peak RSS of this process {peak:.0f} MB; perf finished in {time.perf_counter() - started:.0f} s"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
