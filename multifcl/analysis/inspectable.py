"""What the analysis may ask a method beyond `Method`: each hook optional, found by
`isinstance` (a method implements any of them, with these signatures, or none)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from multifcl.heads.etf import ETFHead
from multifcl.methods import Method, State


@runtime_checkable
class HasBlockFeatures(Protocol):
    def block_features(self, state: State, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Pooled features after every tap block of the encoder under `state`; the last is
        the feature the classifier reads."""


@runtime_checkable
class HasFinalPrototypes(Protocol):
    def final_prototypes(self, state: State) -> torch.Tensor | None:
        """(classes x d) prototypes the final classifier compares the final feature with,
        if it has them (None: the analysis uses class means instead)."""


@runtime_checkable
class HasFinalETFHead(Protocol):
    def final_etf_head(self, state: State) -> ETFHead | None:
        """The fixed simplex ETF head the final feature is read by, for ETF-head runs."""


def block_features(method: Method, state: State, pixels: torch.Tensor) -> list[torch.Tensor]:
    """The method's block features, or the frozen backbone's taps when nothing upstream of
    its head is trained."""
    if isinstance(method, HasBlockFeatures):
        return method.block_features(state, pixels)
    return method.backbone.taps(pixels, range(method.backbone.num_taps))


def final_prototypes(method: Method, state: State) -> torch.Tensor | None:
    """The method's final prototypes, or None when it has none."""
    return method.final_prototypes(state) if isinstance(method, HasFinalPrototypes) else None


def final_etf_head(method: Method, state: State) -> ETFHead | None:
    """The method's final ETF head, or None when it has none."""
    return method.final_etf_head(state) if isinstance(method, HasFinalETFHead) else None
