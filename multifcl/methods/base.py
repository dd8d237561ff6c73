"""The interface every method implements: what a client trains and uploads, what the
server merges, and how the global state classifies images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from multifcl.backbones import Backbone
from multifcl.config import ExperimentConfig
from multifcl.data import InMemoryImages, Task

State = dict[str, np.ndarray]


SECONDS_PER_STEP = "seconds-per-step"  # optimizer step time (MSAM/SAM cost against SGD)
CLASS_MEAN_COSINE = "class-mean-cosine"  # mean pairwise cosine of class means (ETF heads)


@dataclass
class ClientUpdate:
    """What one client sends back after a round: arrays, sample count, mean training loss,
    and training diagnostics (`SECONDS_PER_STEP`, `CLASS_MEAN_COSINE`)."""

    arrays: State
    num_examples: int
    train_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class Method(ABC):
    """A federated continual-learning method over a shared, frozen backbone."""

    name: ClassVar[str]

    def __init__(
        self, config: ExperimentConfig, backbone: Backbone, class_names: list[str]
    ) -> None:
        self.config = config
        self.backbone = backbone
        self.class_names = class_names  # in stream order: the name of stream class c
        self.num_classes = len(class_names)

    @abstractmethod
    def initial_state(self) -> State:
        """The global state before the first round (the same in every process)."""

    @abstractmethod
    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        """Train on one client's data of `task`, starting from the global `state`."""

    @abstractmethod
    def merge(self, state: State, updates: list[ClientUpdate]) -> State:
        """The new global state from the clients' updates."""

    @abstractmethod
    def classifier(self, state: State) -> nn.Module:
        """A module mapping preprocessed pixels to logits over all classes of the stream."""

    def export(self, state: State, folder: Path) -> list[Path]:
        """Write what a user may reuse outside this tool (adapters); nothing by default."""
        return []


def batches(data: InMemoryImages, batch_size: int, generator: torch.Generator | None = None):
    """(uint8 images, labels) mini-batches; shuffled when a generator is given."""
    order = (
        torch.randperm(len(data), generator=generator)
        if generator is not None
        else torch.arange(len(data))
    )
    labels = torch.as_tensor(data.labels)
    for start in range(0, len(data), batch_size):
        index = order[start : start + batch_size]
        yield data.images[index], labels[index]
