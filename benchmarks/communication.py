"""Parameters MultiFCL sends per round, counted from the arrays the method really produces.

The ViT-B/16 architecture is built from its config with random weights (no download);
weights do not change the counts. The stream is CIFAR-100-shaped: 100 classes in 10 tasks.
Each task, one client holding one image of each of the task's 10 classes trains one round
(`train_client`, the real client step); its upload and the server's broadcast are counted.

    python benchmarks/communication.py [--num-experts 4] [--adapter-rank 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import ViTConfig, ViTModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multifcl.backbones.vision_transformer import TransformerBackbone
from multifcl.config import ExperimentConfig
from multifcl.data import InMemoryImages
from multifcl.data.task_stream import Task
from multifcl.methods.multifcl import ADAPTER_PREFIX, MultiFCLMethod

NUM_CLASSES, NUM_TASKS = 100, 10
METADATA = ("class-ids",)  # integer class ids: bookkeeping, not parameters


def parameter_count(arrays: dict[str, np.ndarray], prefix: str = "") -> int:
    return sum(a.size for k, a in arrays.items() if k.startswith(prefix) and k not in METADATA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-experts", type=int, default=4)
    parser.add_argument("--adapter-rank", type=int, default=8)
    parser.add_argument("--adapter-policy", default="first-task")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = TransformerBackbone(ViTModel(ViTConfig(), add_pooling_layer=False), "vit-b16")
    config = ExperimentConfig(
        method="multifcl",
        num_tasks=NUM_TASKS,
        num_experts=args.num_experts,
        adapter_rank=args.adapter_rank,
        adapter_policy=args.adapter_policy,
        use_text_init=False,  # the text init changes values, not sizes
        batch_size=10,
    )
    method = MultiFCLMethod(config, backbone, [f"class {c}" for c in range(NUM_CLASSES)])
    state = method.initial_state()
    adapters = parameter_count(state, ADAPTER_PREFIX)
    print(
        f"ViT-B/16 ({backbone.num_blocks} blocks, d={backbone.feature_dim}), "
        f"{args.num_experts} experts, bottleneck rank {args.adapter_rank}, "
        f"policy {args.adapter_policy}: adapter parameters per set {adapters:,}"
    )
    print("| task | upload per client | of which adapters | broadcast per client |")
    print("|---|---|---|---|")
    per_task = NUM_CLASSES // NUM_TASKS
    for index in range(NUM_TASKS):
        task = Task(
            index, range(index * per_task, (index + 1) * per_task), range((index + 1) * per_task)
        )
        images = torch.randint(0, 256, (per_task, 3, 224, 224), dtype=torch.uint8)
        data = InMemoryImages(images, np.arange(task.classes.start, task.classes.stop))
        broadcast = parameter_count(state)
        update = method.train_client(state, data, task, seed=index)
        state = method.merge(state, [update])
        print(
            f"| {index + 1} | {parameter_count(update.arrays):,} | "
            f"{parameter_count(update.arrays, ADAPTER_PREFIX):,} | {broadcast:,} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
