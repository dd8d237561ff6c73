"""A fixed simplex equiangular tight frame (ETF) classifier head (neural collapse; FedETF, ICCV 2023).

The class vectors are the C vertices of a simplex ETF: unit norm, pairwise cosine -1/(C-1),
summing to zero. They are derived from a seed, never trained and never aggregated, so every
client and the server hold the same classifier and only the features have to move towards it.
For class-incremental streams one ETF is allocated for all classes of the stream up front.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from multifcl.config import ConfigError

DEFAULT_SCALE = 16.0  # FedETF learns this scale; here it is fixed (a temperature of 1/16)
ETF_LOSS_KINDS = ("dr", "ce")


def simplex_etf(num_classes: int, dim: int, seed: int) -> torch.Tensor:
    """The (dim x num_classes) simplex ETF M = sqrt(C/(C-1)) * P * (I - 11^T / C).

    P has orthonormal columns from the QR of a seeded Gaussian matrix. The draw and the QR run
    on the CPU in float64 with a local generator, and R's diagonal is made positive so the
    factorization is unique: the same seed gives the same float32 matrix in every process.
    """
    if num_classes < 2:
        raise ValueError(f"a simplex ETF needs at least 2 classes, got {num_classes}")
    if dim < num_classes:
        raise ConfigError(
            f"run config key 'head': a simplex ETF of {num_classes} classes needs a feature "
            f"width >= {num_classes}, got {dim} (ETFHead adds a projection for this case)"
        )
    generator = torch.Generator(device="cpu").manual_seed(seed)
    gaussian = torch.randn(dim, num_classes, generator=generator, dtype=torch.float64)
    orthonormal, upper = torch.linalg.qr(gaussian)
    orthonormal = orthonormal * torch.sign(torch.diagonal(upper))
    centred = orthonormal - orthonormal.mean(dim=1, keepdim=True)  # P (I - 11^T / C)
    return (math.sqrt(num_classes / (num_classes - 1)) * centred).to(torch.float32)


class ETFHead(nn.Module):
    """Logits = scale * cos(projected feature, vertex_c) for every class c of the stream.

    `vertices` (width x classes) is a buffer: in the state_dict, not in `parameters()`.
    When the feature width is below the number of classes, a trainable linear projection maps
    features to width C first (`projection`, initialized from `seed`, so identically
    everywhere); otherwise `projection` is None and features are compared as they are, unless
    `always_project` asks for a trainable width-preserving projection (MultiFCL's experts).
    `scale` is fixed (FedETF learns it); it does not change the argmax.
    """

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        seed: int,
        scale: float = DEFAULT_SCALE,
        always_project: bool = False,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.projection: nn.Linear | None = None
        width = max(feature_dim, num_classes)
        if always_project or feature_dim < num_classes:
            self.projection = _seeded_linear(feature_dim, width, seed + 1)
        self.register_buffer("vertices", simplex_etf(num_classes, width, seed))

    def projected(self, features: torch.Tensor) -> torch.Tensor:
        """The features in the vertices' space (not normalized)."""
        return features if self.projection is None else self.projection(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(self.projected(features), dim=1) @ self.vertices


def _seeded_linear(in_features: int, out_features: int, seed: int) -> nn.Linear:
    """An nn.Linear with PyTorch's default uniform init, drawn from `seed` alone."""
    layer = nn.Linear(in_features, out_features)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    bound = 1.0 / math.sqrt(in_features)
    with torch.no_grad():
        for parameter in (layer.weight, layer.bias):
            parameter.copy_(torch.rand(parameter.shape, generator=generator) * 2 * bound - bound)
    return layer


def dot_regression_loss(
    projected_features: torch.Tensor, targets: torch.Tensor, vertices: torch.Tensor
) -> torch.Tensor:
    """Dot-regression loss, mean over the batch: 0.5 * (m_y.h - |m_y||h|)^2 / (|m_y||h|).

    Both norms are detached, so the gradient only moves h along its target vertex m_y.
    For unit vectors it is 0.5 * (cos(h, m_y) - 1)^2.
    """
    target_vertices = vertices.T[targets]
    dots = (projected_features * target_vertices).sum(dim=1)
    norms = (projected_features.norm(dim=1) * target_vertices.norm(dim=1)).detach()
    return (0.5 * (dots - norms) ** 2 / norms.clamp_min(1e-12)).mean()


def etf_loss(
    head: ETFHead,
    features: torch.Tensor,
    targets: torch.Tensor,
    kind: str,
    num_seen: int | None = None,
) -> torch.Tensor:
    """The run config's `etf-loss` on backbone features.

    "dr": dot regression of the normalized projected features on their target vertices
    (the vertex is used as is; `num_seen` does not matter). "ce": cross-entropy on the scaled
    cosine logits, restricted to the first `num_seen` classes when given (classes seen so far).
    """
    if kind == "dr":
        return dot_regression_loss(
            F.normalize(head.projected(features), dim=1), targets, head.vertices
        )
    if kind == "ce":
        logits = head(features)
        if num_seen is not None:
            logits = logits[:, :num_seen]
        return F.cross_entropy(logits, targets)
    raise ValueError(f"unknown ETF loss {kind!r}, expected one of {ETF_LOSS_KINDS}")


def mean_pairwise_class_mean_cosine(features: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean cosine over all pairs of class means (uncentred); -1/(C-1) for a simplex ETF.

    A measure of how close features are to the simplex: C classes present in `labels`.
    """
    classes = torch.unique(labels)
    if len(classes) < 2:
        raise ValueError(f"need features of at least 2 classes, got {len(classes)}")
    features = features.detach().to(torch.float64)
    means = torch.stack([features[labels == label].mean(dim=0) for label in classes])
    unit_means = F.normalize(means, dim=1)
    cosines = unit_means @ unit_means.T
    count = len(classes)
    off_diagonal_sum = cosines.sum() - cosines.diagonal().sum()
    return float(off_diagonal_sum / (count * (count - 1)))
