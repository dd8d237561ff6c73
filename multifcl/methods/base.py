"""The interface every method implements: what a client trains and uploads, what the
server merges, and how the global state classifies images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from multifcl.aggregation import MergeRule
from multifcl.backbones import Backbone
from multifcl.backbones.pass_batches import PassBatches, evaluation_batches, extraction_batches
from multifcl.config import ExperimentConfig
from multifcl.data import InMemoryImages, Task
from multifcl.features import FeatureCache, FeatureSplit

State = dict[str, np.ndarray]


SECONDS_PER_STEP = "seconds-per-step"  # optimizer step time (MSAM/SAM cost against SGD)
CLASS_MEAN_COSINE = "class-mean-cosine"  # mean pairwise cosine of class means (ETF heads)
PROTOTYPE_MOVEMENT = "prototype-movement"  # trained prototypes: |optimizer's step| / |row|


@dataclass
class ClientUpdate:
    """What one client sends back after a round: arrays, sample count, mean training loss,
    and training diagnostics (`SECONDS_PER_STEP`, `CLASS_MEAN_COSINE`,
    `PROTOTYPE_MOVEMENT`). The server sets `sender`, the client's partition id, before it
    merges; None where no server did (a client's own model, direct calls)."""

    arrays: State
    num_examples: int
    train_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    sender: int | None = None


@dataclass(frozen=True)
class UpdateLayout:
    """The arrays a genuine client update carries, so the server can reject any other.

    `rows` maps each per-class upload (one row per entry of `class-ids`, `class-counts`
    included) to the state key of the (num_classes, ...) array it updates; `dense` names
    the state keys sent whole, in the state's shape and dtype. `feature_rows` names the row
    uploads that are vectors of a feature space (class means, prototypes): rows whose norms
    are alike across classes and clients, so the server rejects one far from the others
    (`max-row-norm-ratio`).
    """

    rows: Mapping[str, str] = field(default_factory=dict)
    dense: frozenset[str] = frozenset()
    feature_rows: frozenset[str] = frozenset()


class Method(ABC):
    """A federated continual-learning method over a shared, frozen backbone."""

    name: ClassVar[str]
    # whether clients may train different tasks in one round (docs/asynchronous.md)
    runs_asynchronously: ClassVar[bool] = False
    # state keys the server's merge keeps for itself, whose shape may grow between rounds
    growing_state_keys: ClassVar[frozenset[str]] = frozenset()
    feature_cache: FeatureCache | None = None  # the clients' training-feature cache, if any

    def __init__(
        self, config: ExperimentConfig, backbone: Backbone, class_names: list[str]
    ) -> None:
        self.config = config
        self.backbone = backbone
        self.class_names = class_names  # in stream order: the name of stream class c
        self.num_classes = len(class_names)
        # how `merge` combines the clients' values of a row or array (`robust-merge`)
        self.merge_rule = MergeRule(config.robust_merge, config.robust_trim_fraction)

    @property
    def extract_batches(self) -> PassBatches:
        """Batches of this method's feature passes (`extract-batch-size`)."""
        return extraction_batches(self.config, self.backbone.device)

    @property
    def eval_batches(self) -> PassBatches:
        """Batches of the server's evaluation passes (`eval-batch-size`)."""
        return evaluation_batches(self.config, self.backbone.device)

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

    def end_task(self, state: State, task: Task) -> State:
        """The global state to carry past the end of `task` (its last round merged); the
        server evaluates and checkpoints this. Default: `state` unchanged."""
        return state

    def export(self, state: State, folder: Path) -> list[Path]:
        """Write what a user may reuse outside this tool (adapters); nothing by default."""
        return []

    @abstractmethod
    def update_layout(self, state: State, task: Task) -> UpdateLayout:
        """The exact arrays of a genuine update of `task` (checked by the server before it
        merges)."""

    def update_value_problem(self, state: State, update: ClientUpdate, task: Task) -> str | None:
        """Why a genuine-looking update's values are impossible for this method (one line),
        or None; checked by the server after the layout checks."""
        return None

    def feature_split(self, state: State) -> FeatureSplit | None:
        """The classifier under `state` split after its frozen encoder, so evaluation can
        cache test features; None (the default) when something upstream of the head is
        trained, and evaluation runs `classifier` on pixels."""
        return None


def batch_indices(count: int, batch_size: int, generator: torch.Generator | None = None):
    """Index tensors of mini-batches over `count` samples; shuffled when a generator is given."""
    order = (
        torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
    )
    for start in range(0, count, batch_size):
        yield order[start : start + batch_size]


def batches(data: InMemoryImages, batch_size: int, generator: torch.Generator | None = None):
    """(uint8 images, labels) mini-batches; shuffled when a generator is given."""
    labels = torch.as_tensor(data.labels)
    for index in batch_indices(len(data), batch_size, generator):
        yield data.images[index], labels[index]
