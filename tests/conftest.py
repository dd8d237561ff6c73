"""Shared fixtures: the tiny config and the in-process Grid that calls the real ClientApp."""

from __future__ import annotations

import subprocess
import sys
import textwrap
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


@pytest.fixture(scope="session")
def feature_store_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature-store")


@pytest.fixture(autouse=True)
def machine_feature_store(feature_store_root, monkeypatch) -> Path:
    """Clients share features under the test session's folder, not the system temp dir."""
    from multifcl.features import shared_store

    monkeypatch.setattr(shared_store, "machine_root", lambda: feature_store_root)
    return feature_store_root


@pytest.fixture(autouse=True, scope="session")
def private_superlink_records(tmp_path_factory):
    """The SuperLink records of multifcl.superlink_registry go to a temporary folder, not
    the user's ~/.local/state, in this process and the processes tests start."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
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


def fake_superlink(tmp_path: Path, home: Path) -> tuple[subprocess.Popen, int]:
    """A process named flower-superlink with `home`'s log path in its command line, as
    Flower's local SuperLink has, and a child of its own (as it starts the simulation and
    Ray); the process and the child's id."""
    fake = tmp_path / "bin" / "flower-superlink"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(
        textwrap.dedent(f"""\
            #!{sys.executable}
            import subprocess, sys, time
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            print(child.pid, flush=True)
            time.sleep(120)
        """)
    )
    fake.chmod(0o755)
    log_file = f"{home.resolve()}/local-superlink/superlink.log"
    process = subprocess.Popen(
        [str(fake), "--log-file", log_file], stdout=subprocess.PIPE, text=True
    )
    return process, int(process.stdout.readline())
