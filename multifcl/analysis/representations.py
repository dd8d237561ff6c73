"""Representations of fixed sample sets under a checkpoint: pooled features per block."""

from __future__ import annotations

import numpy as np
import torch

from multifcl.analysis.inspectable import block_features
from multifcl.data import InMemoryImages
from multifcl.methods import Method, State
from multifcl.methods.base import batches


def sample_indices(available: int, size: int, seed: int) -> np.ndarray:
    """A fixed, sorted random subset of `size` of `available` positions (all if fewer)."""
    if size >= available:
        return np.arange(available)
    return np.sort(np.random.default_rng(seed).choice(available, size=size, replace=False))


@torch.no_grad()
def block_representations(
    method: Method, state: State, data: InMemoryImages, batch_size: int
) -> list[np.ndarray]:
    """For each tap block, the (n x d) float64 features of `data` under `state`; the last
    is the feature the classifier reads."""
    parts: list[list[torch.Tensor]] = []
    for images, _ in batches(data, batch_size):
        pixels = method.backbone.preprocess(images)
        parts.append([f.float().cpu() for f in block_features(method, state, pixels)])
    return [torch.cat([part[b] for part in parts]).double().numpy() for b in range(len(parts[0]))]
