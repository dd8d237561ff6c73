"""Accuracy of the same run with backbone passes in fp32 and in bf16 autocast.

What `precision = "auto"` changes on a GPU (bf16 for the frozen backbone's passes), measured
where bf16 autocast also runs: on the CPU. One config is run twice in-process (the real
server loop and ClientApp through `InProcessGrid`), `precision` fp32 then bf16, and the
final CIL accuracy row and Last/Avg are printed side by side:

    python benchmarks/precision_accuracy.py --data-root /abs/path/cifar10-jpg \\
        [--method prototypes] [--train-per-class 100]
    python benchmarks/precision_accuracy.py --dataset digits --backbone vit-tiny \\
        --method multifcl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.client_app import train
from multifcl.config import ExperimentConfig
from server.continual_loop import run_continual_learning
from server.in_process_grid import InProcessGrid


def run(config: ExperimentConfig, out: Path, clients: int) -> tuple[list[float], dict, float]:
    """(last accuracy row, summary, seconds) of `config` over `clients` in-process nodes."""
    grid = InProcessGrid(train, config.to_run_config(), num_nodes=clients)
    started = time.perf_counter()
    run_continual_learning(grid, config, base_dir=out)
    seconds = time.perf_counter() - started
    metrics = json.loads((config.output_dir / "metrics.json").read_text())
    return metrics["accuracy_matrix"][-1], metrics, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="imagefolder")
    parser.add_argument("--data-root", type=Path, help="the image folder (imagefolder)")
    parser.add_argument("--method", default="prototypes")
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--train-per-class", type=int, default=100, help="0: all")
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="precision-accuracy-"))
    rows = {}
    for precision in ("fp32", "bf16"):
        config = ExperimentConfig(
            method=args.method,
            dataset=args.dataset,
            data_root=args.data_root,
            backbone=args.backbone,
            max_train_per_class=args.train_per_class or None,  # 0: every image
            precision=precision,
            use_text_init=False,
            output_dir=out / precision,
        )
        row, metrics, seconds = run(config, out, args.clients)
        rows[precision] = row
        summary = {k: metrics.get(k) for k in ("last", "avg") if k in metrics}
        print(
            f"{precision}: last row {[round(a, 2) for a in row]} {summary} ({seconds:.0f} s)",
            flush=True,
        )
    gaps = [b - a for a, b in zip(rows["fp32"], rows["bf16"])]
    print(f"bf16 - fp32 per task (points): {[round(g, 2) for g in gaps]}")


if __name__ == "__main__":
    main()
