"""A classifier whose weights are class prototypes; the logit is a scaled cosine similarity."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_SCALE = 16.0  # a temperature of 1/16; it does not change the argmax


def cosine_logits(
    features: torch.Tensor, prototypes: torch.Tensor, temperature: float
) -> torch.Tensor:
    """cos(feature, prototype_c) / temperature for every class c (zero rows give 0)."""
    return F.normalize(features, dim=1) @ F.normalize(prototypes, dim=1).T / temperature


class CosinePrototypeHead(nn.Module):
    """Logits = scale * cos(feature, prototype_c) for every class c."""

    def __init__(self, prototypes: torch.Tensor, scale: float = DEFAULT_SCALE) -> None:
        super().__init__()
        self.register_buffer("prototypes", prototypes)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.prototypes, temperature=1.0 / self.scale)
