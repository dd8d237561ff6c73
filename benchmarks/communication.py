"""Parameters MultiFCL sends per round, counted from the arrays the method really produces.

The ViT-B/16 architecture is built from its config with random weights (no download);
weights do not change the counts. The stream is CIFAR-100-shaped: 100 classes in 10 tasks.
Each task, one client holding one image of each of the task's 10 classes trains one round
(`train_client`, the real client step); its upload and the server's broadcast are counted.

    python benchmarks/communication.py [--num-experts 4] [--adapter-rank 8]

`later_task_upload` gives the bytes of a later-task upload as Flower serializes it, against
sending every class's prototypes and against the whole trainable model (benchmarks/perf.py).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import ViTConfig, ViTModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multifcl.backbones.vision_transformer import TransformerBackbone
from multifcl.config import ExperimentConfig
from multifcl.data import InMemoryImages
from multifcl.data.task_stream import Task
from multifcl.methods import ClientUpdate
from multifcl.methods.multifcl import ADAPTER_PREFIX, MultiFCLMethod
from protocol.messages import ARRAYS, record_bytes, state_to_record, update_to_content

NUM_CLASSES, NUM_TASKS = 100, 10
METADATA = ("class-ids",)  # integer class ids: bookkeeping, not parameters


def parameter_count(arrays: dict[str, np.ndarray], prefix: str = "") -> int:
    return sum(a.size for k, a in arrays.items() if k.startswith(prefix) and k not in METADATA)


def build_method(num_experts: int, adapter_rank: int, adapter_policy: str) -> MultiFCLMethod:
    """MultiFCL over a randomly initialised ViT-B/16 (sizes do not depend on the weights)."""
    torch.manual_seed(0)
    backbone = TransformerBackbone(ViTModel(ViTConfig(), add_pooling_layer=False), "vit-b16")
    config = ExperimentConfig(
        method="multifcl",
        num_tasks=NUM_TASKS,
        num_experts=num_experts,
        adapter_rank=adapter_rank,
        adapter_policy=adapter_policy,
        use_text_init=False,  # the text init changes values, not sizes
        batch_size=10,
        device="cpu",
    )
    return MultiFCLMethod(config, backbone, [f"class {c}" for c in range(NUM_CLASSES)])


def task(index: int) -> Task:
    per_task = NUM_CLASSES // NUM_TASKS
    return Task(
        index, range(index * per_task, (index + 1) * per_task), range((index + 1) * per_task)
    )


def one_image_per_class(of: Task) -> InMemoryImages:
    images = torch.randint(0, 256, (len(of.classes), 3, 224, 224), dtype=torch.uint8)
    return InMemoryImages(images, np.arange(of.classes.start, of.classes.stop))


@dataclass
class UploadSize:
    """One client's later-task upload (it holds all 10 classes of the task), and alternatives."""

    parameters: int  # float values sent (class ids are bookkeeping)
    bytes_float32: int  # serialized as Flower sends it
    bytes_float16: int  # with transmit-dtype = "float16"
    all_classes_parameters: int  # every class's prototype rows for every expert, and counts
    all_classes_bytes: int
    whole_model_parameters: int  # adapters and every prototype: all that is trainable
    whole_model_bytes: int

    def lines(self) -> list[str]:
        def row(name: str, parameters: int, size: int) -> str:
            ratio = size / self.bytes_float32
            return f"{name:38s} {parameters:>9,} parameters {size:>11,} B ({ratio:5.1f}x)"

        return [
            row("this upload, float32", self.parameters, self.bytes_float32),
            row("this upload, transmit-dtype float16", self.parameters, self.bytes_float16),
            row(
                "every class's prototypes, float32",
                self.all_classes_parameters,
                self.all_classes_bytes,
            ),
            row(
                "the whole trainable model, float32",
                self.whole_model_parameters,
                self.whole_model_bytes,
            ),
        ]


def later_task_upload(num_experts: int = 4, adapter_rank: int = 8) -> UploadSize:
    """The real task-2 upload of a first-task MultiFCL client, serialized, and alternatives."""
    method = build_method(num_experts, adapter_rank, "first-task")
    state = method.initial_state()
    update = method.train_client(state, one_image_per_class(task(1)), task(1), seed=1)
    # random values: Flower sends identical data chunks once, so zeros would look smaller
    rng = np.random.default_rng(0)
    state = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in state.items()}
    every_class = {k: v for k, v in state.items() if not k.startswith(ADAPTER_PREFIX)}
    return UploadSize(
        parameter_count(update.arrays),
        record_bytes(update_to_content(update, "float32")[ARRAYS]),
        record_bytes(update_to_content(update, "float16")[ARRAYS]),
        parameter_count(every_class),
        record_bytes(update_to_content(ClientUpdate(every_class, 1))[ARRAYS]),
        parameter_count(state),
        record_bytes(state_to_record(state)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-experts", type=int, default=4)
    parser.add_argument("--adapter-rank", type=int, default=8)
    parser.add_argument("--adapter-policy", default="first-task")
    args = parser.parse_args()
    method = build_method(args.num_experts, args.adapter_rank, args.adapter_policy)
    backbone = method.backbone
    state = method.initial_state()
    adapters = parameter_count(state, ADAPTER_PREFIX)
    print(
        f"ViT-B/16 ({backbone.num_blocks} blocks, d={backbone.feature_dim}), "
        f"{args.num_experts} experts, bottleneck rank {args.adapter_rank}, "
        f"policy {args.adapter_policy}: adapter parameters per set {adapters:,}"
    )
    print("| task | upload per client | of which adapters | broadcast per client |")
    print("|---|---|---|---|")
    for index in range(NUM_TASKS):
        broadcast = parameter_count(state)
        current = task(index)
        update = method.train_client(state, one_image_per_class(current), current, seed=index)
        state = method.end_task(method.merge(state, [update]), current)
        print(
            f"| {index + 1} | {parameter_count(update.arrays):,} | "
            f"{parameter_count(update.arrays, ADAPTER_PREFIX):,} | {broadcast:,} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
