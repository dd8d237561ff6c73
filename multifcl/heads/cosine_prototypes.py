"""A classifier whose weights are class prototypes; the logit is a scaled cosine similarity."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_SCALE = 16.0  # a temperature of 1/16; it does not change the argmax


class CosinePrototypeHead(nn.Module):
    """Logits = scale * cos(feature, prototype_c) for every class c."""

    def __init__(self, prototypes: torch.Tensor, scale: float = DEFAULT_SCALE) -> None:
        super().__init__()
        self.register_buffer("prototypes", prototypes)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=1) @ F.normalize(self.prototypes, dim=1).T
