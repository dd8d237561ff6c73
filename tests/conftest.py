"""Shared fixtures: the tiny config and the in-process Grid that calls the real ClientApp."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flwr.supercore.task_identity import TaskIdentity

from multifcl.config import ExperimentConfig

__all__ = ["TINY"]

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
