"""ETF experts: per expert a fixed simplex ETF over all classes behind a trained linear
projection (`heads.etf.ETFHead`); the projections train every round and are FedAvg'd."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from multifcl.aggregation import MergeRule, weighted_average
from multifcl.config import ExperimentConfig
from multifcl.heads.etf import ETFHead, ETFObjective, mean_pairwise_class_mean_cosine
from multifcl.heads.experts import (
    COUNTS,
    ClientRound,
    ExpertDiagnostics,
    Experts,
    ExpertTraining,
    State,
)

PROJECTION_PREFIX = "etf-projection/expert-"


class ETFExperts(Experts):
    """Expert m: an `ETFHead` (linear map, seed + m) on its tap's feature."""

    def __init__(
        self,
        config: ExperimentConfig,
        tap_dims: list[int],
        num_classes: int,
        merge_rule: MergeRule,
        device: torch.device,
    ) -> None:
        scale = 1 / config.temperature
        self.heads = nn.ModuleList(
            ETFHead(dim, num_classes, config.seed + m, scale, "linear", max(dim, num_classes))
            for m, dim in enumerate(tap_dims)
        ).to(device)
        self.objective = ETFObjective.of(config)
        self.merge_rule = merge_rule
        self._initial_state = self._arrays()

    def _tensors(self) -> dict[str, torch.Tensor]:
        """The heads' trained maps, by state key."""
        return {
            f"{PROJECTION_PREFIX}{m}/{key}": value
            for m, head in enumerate(self.heads)
            for key, value in head.projection.state_dict(keep_vars=True).items()
        }

    def _arrays(self) -> State:
        return {k: v.detach().cpu().numpy().copy() for k, v in self._tensors().items()}

    def initial_state(self) -> State:
        return {key: value.copy() for key, value in self._initial_state.items()}

    def load(self, state: State) -> None:
        with torch.no_grad():
            for key, value in self._tensors().items():
                value.copy_(torch.from_numpy(state[key]))

    def logits(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [head(f) for head, f in zip(self.heads, features)]

    def loss(self, features, logits, target, seen) -> torch.Tensor:
        """`etf-loss` of every expert towards its vertices (the logits are not needed)."""
        return sum(
            self.objective.loss(head, f, target, seen) for head, f in zip(self.heads, features)
        )

    def final_loss(self, feature: torch.Tensor, target: torch.Tensor, seen: int) -> torch.Tensor:
        return self.objective.loss(self.heads[-1], feature, target, seen)

    def start_round(self, client: ClientRound) -> ExpertTraining:
        """The projections train every round (layers, for TempBalance); while the adapters
        train alone, only the final expert's loss trains (the shallow maps start random)."""
        self.load(client.state)
        projections = [head.projection for head in self.heads]
        return ExpertTraining(projections, final_only=client.adapter_phase)

    @torch.no_grad()
    def finish_round(self, client: ClientRound, training: ExpertTraining) -> ExpertDiagnostics:
        """How close the final expert's projected class means are to a simplex."""
        projected = self.heads[-1].projected(client.trained_features()[-1])
        if len(torch.unique(client.labels)) < 2:
            return ExpertDiagnostics()
        cosine = mean_pairwise_class_mean_cosine(projected.cpu(), client.labels)
        return ExpertDiagnostics(class_mean_cosine=cosine)

    def upload(self, classes: torch.Tensor) -> State:
        return self._arrays()

    def merge(
        self, state: State, updates: list[State], weights: list[int], senders: list[int | None]
    ) -> State:
        """The global class counts, and the projections' FedAvg, sample-weighted."""
        ids, counts = [u["class-ids"] for u in updates], [u[COUNTS] for u in updates]
        arrays = [{k: v for k, v in u.items() if k.startswith(PROJECTION_PREFIX)} for u in updates]
        merged = {COUNTS: _round_counts(state[COUNTS], ids, counts)}
        return {**merged, **weighted_average(arrays, weights, self.merge_rule, state)}

    def sent_whole(self) -> set[str]:
        return set(self._tensors())

    def final_etf_head(self, state: State) -> ETFHead:
        self.load(state)
        return self.heads[-1]


def _round_counts(counts: np.ndarray, ids: list[np.ndarray], client_counts) -> np.ndarray:
    """Global per-class counts: this round's totals for the classes reported (as the row
    merge keeps them), the previous counts for the others."""
    totals = np.zeros_like(counts)
    for classes, values in zip(ids, client_counts):
        np.add.at(totals, classes, values)
    return np.where(totals > 0, totals, counts)
