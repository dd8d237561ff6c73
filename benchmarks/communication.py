"""Parameters MultiFCL sends per round, counted from the arrays the method really produces,
and the bytes the server sends down over the paper's setting, before and after delta
broadcasts.

The ViT-B/16 architecture is built from its config with random weights (no download);
weights do not change the counts. The stream is CIFAR-100-shaped: 100 classes in 10 tasks.
Each task, one client holding one image of each of the task's 10 classes trains one round
(`train_client`, the real client step); its upload and the server's broadcast are counted.

Then the paper's setting (`--clients` 10 x 10 tasks x `--rounds` 5) runs through the real
`RoundRunner` (messages, update validation, merge, `end_task`) over in-process nodes that
assemble each message with the ClientApp's own `assemble_state` and reply with an update of
the method's exact layout (random rows; no training, which would not change the sizes):
bytes down per round as `rounds.csv` records them (the serialized messages), with every
node sent the whole state every round ("full broadcast") and with each node sent only the
chunks it lacks ("delta broadcast"), and the whole state as one ArrayRecord (the format
before delta broadcasts).

    python benchmarks/communication.py [--num-experts 4] [--adapter-rank 8] [--clients 10]

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
from flwr.app import Message
from transformers import ViTConfig, ViTModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multifcl.backbones.vision_transformer import TransformerBackbone
from multifcl.config import ExperimentConfig
from multifcl.data import DatasetSplits, InMemoryImages
from multifcl.data.task_stream import Task, TaskStream
from multifcl.methods import ClientUpdate, State
from multifcl.methods.multifcl import ADAPTER_PREFIX, MultiFCLMethod
from multifcl.update_validation import CLASS_COUNTS, CLASS_IDS
from protocol.broadcast import assemble_state, missing_content
from protocol.messages import (
    ARRAYS,
    CONFIG,
    record_bytes,
    state_to_record,
    update_to_content,
)
from server.in_process_grid import InProcessGrid
from strategies import RoundRunner

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


def layout_update(method: MultiFCLMethod, state: State, of: Task, rng) -> ClientUpdate:
    """An update of exactly the layout a genuine one of `of` has: the task's classes with
    random rows, and the dense arrays slightly moved (sizes are what matter here)."""
    layout = method.update_layout(state, of)
    classes = np.arange(of.classes.start, of.classes.stop)
    arrays = {}
    for key, target in layout.rows.items():
        shape = (len(classes), *state[target].shape[1:])
        arrays[key] = rng.standard_normal(shape).astype(np.float32)
    arrays[CLASS_IDS] = classes.astype(np.int64)
    arrays[CLASS_COUNTS] = np.ones(len(classes), np.float32)  # the stream holds one image each
    for key in layout.dense:
        noise = 1e-3 * rng.standard_normal(state[key].shape)
        arrays[key] = (state[key] + noise).astype(state[key].dtype)
    return ClientUpdate(arrays, len(classes))


def layout_client(method: MultiFCLMethod, stream: TaskStream):
    """A ClientApp train handler that assembles the broadcast as the real one does and
    replies with `layout_update`."""

    def handler(message, context):
        state = assemble_state(message.content, context.state)
        if state is None:
            return Message(missing_content(), reply_to=message)
        config = message.content[CONFIG]
        of = stream.task(int(config["task"]))
        rng = np.random.default_rng([context.node_id, of.index, int(config["round"])])
        return Message(update_to_content(layout_update(method, state, of, rng)), reply_to=message)

    return handler


def cifar100_shaped_stream(config: ExperimentConfig) -> TaskStream:
    """A 100-class, 10-task stream (one 1-pixel image per class: only labels matter)."""
    images = InMemoryImages(torch.zeros((NUM_CLASSES, 3, 1, 1), dtype=torch.uint8), np.arange(100))
    names = [f"class {c}" for c in range(NUM_CLASSES)]
    return TaskStream(DatasetSplits(images, images, names), config)


def bytes_down_per_round(
    method: MultiFCLMethod, clients: int, rounds: int, delta: bool
) -> tuple[list[int], list[int]]:
    """Bytes down of every round of the whole stream through the real RoundRunner, and the
    whole state as one ArrayRecord times the clients (the format before delta broadcasts)."""
    stream = cifar100_shaped_stream(method.config)
    grid = InProcessGrid(layout_client(method, stream), {}, clients)
    records = []
    runner = RoundRunner(
        method, stream, min_fit_fraction=1.0, on_round=records.append, delta_broadcast=delta
    )
    state, whole = method.initial_state(), []
    for of in stream:
        for server_round in range(1, rounds + 1):
            whole.append(record_bytes(state_to_record(state)) * clients)
            state = runner.train_round(grid, state, of, server_round).state
        state = method.end_task(state, of)
    return [record.bytes_down for record in records], whole


def print_broadcasts(method: MultiFCLMethod, clients: int, rounds: int) -> None:
    """Bytes down per round and in all, whole-state record, full and delta broadcasts."""
    delta, whole = bytes_down_per_round(method, clients, rounds, delta=True)
    full, _ = bytes_down_per_round(method, clients, rounds, delta=False)
    print(
        f"bytes down, {clients} clients x {NUM_TASKS} tasks x {rounds} rounds "
        "(all clients, per round; rounds.csv's bytes_down):"
    )
    print("| broadcast | task 1 round 1 | task 1 later rounds | tasks 2-10 (median) | total |")
    print("|---|---|---|---|---|")
    for name, sizes in (
        ("whole state, one ArrayRecord (before)", whole),
        ("full broadcast (chunks, every one sent)", full),
        ("delta broadcast (chunks a node lacks)", delta),
    ):
        later = sorted(sizes[rounds:])
        print(
            f"| {name} | {sizes[0]:,} | {max(sizes[1:rounds]):,} | "
            f"{later[len(later) // 2]:,} | {sum(sizes):,} |"
        )
    print(f"delta / whole state in all: {sum(delta) / sum(whole):.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-experts", type=int, default=4)
    parser.add_argument("--adapter-rank", type=int, default=8)
    parser.add_argument("--adapter-policy", default="first-task")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per task")
    args = parser.parse_args()
    settings = args.num_experts, args.adapter_rank, args.adapter_policy
    method = build_method(*settings)
    backbone = method.backbone
    state = method.initial_state()
    adapters = parameter_count(state, ADAPTER_PREFIX)
    print(
        f"ViT-B/16 ({backbone.num_blocks} blocks, d={backbone.feature_dim}), "
        f"{args.num_experts} experts, bottleneck rank {args.adapter_rank}, "
        f"policy {args.adapter_policy}: adapter parameters per set {adapters:,}"
    )
    print("| task | upload per client | of which adapters | global state |")
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
    print_broadcasts(build_method(*settings), args.clients, args.rounds)


if __name__ == "__main__":
    main()
