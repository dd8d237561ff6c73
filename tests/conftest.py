"""Shared fixtures: the tiny config and the in-process Grid that calls the real ClientApp."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from flwr.supercore.task_identity import TaskIdentity

from multifcl.config import ExperimentConfig

if TYPE_CHECKING:
    import torch
    from flwr.app import Message

    from server.in_process_grid import InProcessGrid

__all__ = ["TINY", "in_process_grid", "random_images", "run_in_process", "sent_states"]

TINY = {
    "dataset": "synthetic",
    "backbone": "vit-tiny",
    "num_tasks": 2,
    "rounds_per_task": 2,
    "local_epochs": 1,
    "batch_size": 16,
    "partition": "iid",
}


@pytest.fixture(autouse=True)
def task_identity():
    """Messages need a run/node identity, which a real runtime would set."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    yield


@pytest.fixture
def tiny_config(tmp_path) -> Callable[..., ExperimentConfig]:
    def make(**changes) -> ExperimentConfig:
        values = {**TINY, "output_dir": tmp_path / "run", **changes}
        return ExperimentConfig(**values)

    return make


def in_process_grid(
    config: ExperimentConfig, num_nodes: int = 2, handler: Callable | None = None
) -> InProcessGrid:
    """A Grid of `num_nodes` in-process nodes, each answering with `handler` (the real
    ClientApp's train function unless given), under the config's run config."""
    from clients.client_app import train
    from server.in_process_grid import InProcessGrid

    return InProcessGrid(handler or train, config.to_run_config(), num_nodes=num_nodes)


def run_in_process(
    config: ExperimentConfig,
    num_nodes: int = 2,
    base_dir: Path | None = None,
    handler: Callable | None = None,
) -> tuple[dict, InProcessGrid]:
    """Run the whole experiment over an in-process grid; return its metrics and the grid
    (whose `sent` holds every message the server sent). `base_dir` defaults to the run's
    own output folder."""
    from server.continual_loop import run_continual_learning

    grid = in_process_grid(config, num_nodes, handler)
    folder = config.output_dir if base_dir is None else base_dir
    return run_continual_learning(grid, config, base_dir=folder), grid


def sent_states(grid: InProcessGrid) -> list[tuple[Message, dict]]:
    """Every train message the server sent, with the state it carried: the messages to each
    node replayed in order into a store of the replay's own (a message carries only the
    chunks its node already held)."""
    from flwr.app import RecordDict

    from protocol.broadcast import assemble_state

    stores: dict[int, RecordDict] = {}
    states = []
    for message in grid.sent:
        store = stores.setdefault(message.metadata.dst_node_id, RecordDict())
        states.append((message, assemble_state(message.content, store)))
    return states


def random_images(n: int = 3, size: int = 20) -> torch.Tensor:
    """`n` random uint8 RGB images of `size` x `size` pixels, from torch's global RNG."""
    import torch

    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
