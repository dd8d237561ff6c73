"""A classifier split at features that only a frozen encoder computes (for evaluation caching)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Features = list[torch.Tensor]


@dataclass(frozen=True)
class FeatureSplit:
    """`head(encode(images))` gives the same logits as the method's classifier on the pixels.

    `encoder` fingerprints everything upstream of the features (see `encoder_fingerprint`):
    features cached under one fingerprint are valid for any state with the same one.
    """

    encoder: str
    encode: Callable[[torch.Tensor], Features]  # uint8 images -> features (all of them)
    head: Callable[[Features], torch.Tensor]  # features of a batch -> logits
