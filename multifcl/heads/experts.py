"""The experts' head of MultiFCL behind one interface: prototype experts
(`heads.prototype_experts`) or ETF experts (`heads.etf_experts`).

Expert m reads the feature of its tap. The experts own their state keys, what a client
round does to them (initialization, training, refinement), their upload and their merge;
the method owns the adapters, the schedule and the self-distillation between experts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from multifcl.data import InMemoryImages, Task

if TYPE_CHECKING:
    from multifcl.optim.local_training import LocalTraining

COUNTS = "class-counts"
HOLDER_COUNTS = "class-holder-counts"  # classes x partition ids: the count each last sent
State = dict[str, np.ndarray]


@dataclass(frozen=True)
class ClientRound:
    """One client's round of MultiFCL: what it received, holds, and trains."""

    state: State  # the global state received
    data: InMemoryImages
    labels: torch.Tensor
    task: Task
    features: list[torch.Tensor]  # the experts' inputs under the received adapters
    training_set: int | None  # the adapter set trained this round
    adapter_phase: bool  # the adapters train alone (two-phase task 1)
    stale_rows: bool  # the local rows predate this task's adapters: initialise all again
    seed: int
    encode: Callable[[torch.Tensor], list[torch.Tensor]]  # images -> experts' inputs

    def trained_features(self) -> list[torch.Tensor]:
        """The experts' inputs after local training: recomputed when an adapter set trained."""
        return self.encode(self.data.images) if self.training_set is not None else self.features


@dataclass
class ExpertTraining:
    """What of the experts trains in a client's local epochs (nothing: `trained` empty)."""

    trained: list[torch.Tensor | nn.Module] = field(default_factory=list)
    lr: float | None = None  # their own rate; None: the run's
    final_only: bool = False  # only the final expert's loss trains (the adapters)

    def start_epoch(self, training: LocalTraining) -> None:
        """Before a local epoch's steps."""

    def end_epoch(self, training: LocalTraining) -> None:
        """After a local epoch's steps."""

    def movement(self) -> float | None:
        """Once training has finished: the mean relative movement of the trained prototype
        rows of the local classes by the optimizer; None when no prototype trained."""
        return None


@dataclass(frozen=True)
class ExpertDiagnostics:
    """What a client round measured of the experts (None: not measured)."""

    prototype_movement: float | None = None  # `ExpertTraining.movement`
    class_mean_cosine: float | None = None  # of the final expert's projected class means


class Experts(ABC):
    """One classifier per expert over all classes of the stream."""

    @abstractmethod
    def initial_state(self) -> State:
        """The experts' state keys before the first round (`COUNTS` is the method's)."""

    @abstractmethod
    def load(self, state: State) -> None:
        """Make the state's weights the current ones."""

    @abstractmethod
    def logits(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each expert's logits over all classes, with the current weights."""

    @abstractmethod
    def loss(
        self,
        features: list[torch.Tensor],
        logits: list[torch.Tensor],
        target: torch.Tensor,
        seen: int,
    ) -> torch.Tensor:
        """Sum of the experts' losses; `logits` are theirs over the first `seen` classes."""

    @abstractmethod
    def final_loss(self, feature: torch.Tensor, target: torch.Tensor, seen: int) -> torch.Tensor:
        """The final expert's loss alone."""

    @abstractmethod
    def start_round(self, client: ClientRound) -> ExpertTraining:
        """Load the received weights, prepare them, and say what trains this round."""

    @abstractmethod
    def finish_round(self, client: ClientRound, training: ExpertTraining) -> ExpertDiagnostics:
        """Work after local training (`training`: what `start_round` said trains)."""

    @abstractmethod
    def upload(self, classes: torch.Tensor) -> State:
        """The arrays a client sends for its local `classes`."""

    @abstractmethod
    def merge(
        self, state: State, updates: list[State], weights: list[int], senders: list[int | None]
    ) -> State:
        """The experts' new state keys and `COUNTS` from the clients' arrays, sample counts
        (`weights`) and partition ids (`senders`; None for a client's own model)."""

    def sent_whole(self) -> set[str]:
        """State keys sent whole (not one row per class)."""
        return set()

    def feature_rows(self) -> set[str]:
        """State keys whose rows are vectors of a feature space."""
        return set()

    def final_prototypes(self, state: State) -> torch.Tensor | None:
        """The final expert's prototypes, if it has them (analysis)."""
        return None

    def final_etf_head(self, state: State) -> nn.Module | None:
        """The final expert's ETF head, if it has one (analysis)."""
        return None
