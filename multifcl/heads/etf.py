"""A fixed simplex equiangular tight frame (ETF) classifier head (neural collapse; FedETF, ICCV 2023).

The class vectors are the C vertices of a simplex ETF: unit norm, pairwise cosine -1/(C-1),
summing to zero. They are derived from a seed, never trained and never aggregated, so every
client and the server hold the same classifier and only the features have to move towards it.
For class-incremental streams one ETF is allocated for all classes of the stream up front.
Features reach the vertices through a trained signed map (`etf-map`), and the dot-regression
loss weights classes by their in-batch frequency (`etf-dr-balance`), as the official code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from multifcl.config import ETF_MAPS, ConfigError

if TYPE_CHECKING:
    from multifcl.config import ExperimentConfig

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
            f"width >= {num_classes}, got {dim} (ETFHead maps narrower features to the classes)"
        )
    generator = torch.Generator(device="cpu").manual_seed(seed)
    gaussian = torch.randn(dim, num_classes, generator=generator, dtype=torch.float64)
    orthonormal, upper = torch.linalg.qr(gaussian)
    orthonormal = orthonormal * torch.sign(torch.diagonal(upper))
    centred = orthonormal - orthonormal.mean(dim=1, keepdim=True)  # P (I - 11^T / C)
    return (math.sqrt(num_classes / (num_classes - 1)) * centred).to(torch.float32)


class ETFHead(nn.Module):
    """Logits = scale * cos(mapped feature, vertex_c) for every class c of the stream.

    `vertices` (width x classes) is a non-persistent buffer: fixed, so neither trained nor
    in the state_dict; a method sends and loads the head's state_dict (its map) alone.
    Features pass a trainable signed map (`projection`) before they are normalized, because a
    backbone feature may be non-negative (ReLU6 + average pooling in EfficientNet-Lite0), and a
    non-negative vector cannot point at a signed simplex vertex. `feature_map`:

    - "batchnorm-linear" (the default): a BatchNorm1d, then a linear map to the classes;
    - "linear" (FedETF): a linear map to `width` (default: the number of classes, as FedETF);
    - "batchnorm" (Yang et al. 2022): a BatchNorm1d, in the feature's width (then a linear
      map to the classes only when the feature is narrower than the simplex).

    A BatchNorm centres with batch statistics while the head is in training mode and with
    its running statistics in eval mode. Linear maps are initialized from `seed`, so
    identically everywhere. `scale` is fixed (FedETF learns it); it does not change the argmax.
    """

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        seed: int,
        scale: float = DEFAULT_SCALE,
        feature_map: str = "batchnorm-linear",
        width: int | None = None,
    ) -> None:
        super().__init__()
        self.scale = scale
        if feature_map not in ETF_MAPS:
            raise ConfigError(
                f"run config key 'etf-map': unknown value {feature_map!r}, "
                f"expected one of {ETF_MAPS}"
            )
        if width is None:
            width = max(feature_dim, num_classes) if feature_map == "batchnorm" else num_classes
        elif feature_map == "batchnorm" and width != max(feature_dim, num_classes):
            raise ValueError("ETFHead: a batchnorm map keeps the feature's width")
        layers: list[nn.Module] = []
        if feature_map.startswith("batchnorm"):
            layers.append(_BatchNorm(feature_dim))
        if feature_map != "batchnorm" or feature_dim < width:
            layers.append(_seeded_linear(feature_dim, width, seed + 1))
        self.projection = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
        self.register_buffer("vertices", simplex_etf(num_classes, width, seed), persistent=False)

    def projected(self, features: torch.Tensor) -> torch.Tensor:
        """The features in the vertices' space (not normalized)."""
        return self.projection(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(self.projected(features), dim=1) @ self.vertices


class _BatchNorm(nn.BatchNorm1d):
    """BatchNorm1d that falls back to its running statistics on a batch of one sample
    (a last partial batch), where batch statistics do not exist. Its running statistics are
    exponential averages (momentum 0.1), so it keeps no batch counter to send."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.num_batches_tracked = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.training and features.shape[0] == 1:
            statistics = (self.running_mean, self.running_var)
            return F.batch_norm(features, *statistics, self.weight, self.bias, eps=self.eps)
        return super().forward(features)


def _seeded_linear(in_features: int, out_features: int, seed: int) -> nn.Linear:
    """An nn.Linear with PyTorch's default uniform init, drawn from `seed` alone."""
    layer = nn.Linear(in_features, out_features)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    bound = 1.0 / math.sqrt(in_features)
    with torch.no_grad():
        for parameter in (layer.weight, layer.bias):
            parameter.copy_(torch.rand(parameter.shape, generator=generator) * 2 * bound - bound)
    return layer


def batch_class_weights(targets: torch.Tensor) -> torch.Tensor:
    """Each sample's weight sqrt(gamma / n_y): n_y is its class's count in the batch and
    gamma = batch size / classes present (Yang et al.'s `GivenEw`, from the batch alone).

    The dot-regression loss scales with the weight squared, so every class present counts
    equally, however many samples it has in the batch.
    """
    classes, inverse, counts = torch.unique(targets, return_inverse=True, return_counts=True)
    gamma = len(targets) / len(classes)
    return (gamma / counts.to(torch.float32)).sqrt()[inverse]


def dot_regression_loss(
    projected_features: torch.Tensor,
    targets: torch.Tensor,
    vertices: torch.Tensor,
    balanced: bool = False,
) -> torch.Tensor:
    """Dot-regression loss, mean over the batch: 0.5 * (m.h - |m||h|)^2 / |h|, m = w_y m_y.

    m_y is the target vertex and w_y is 1, or `batch_class_weights` when `balanced`. Both
    norms are detached, so the gradient only moves h along its target vertex. For unit h and
    unit vertices it is 0.5 * w_y^2 * (cos(h, m_y) - 1)^2.
    """
    target_vertices = vertices.T[targets]
    if balanced:
        weights = batch_class_weights(targets).to(target_vertices)
        target_vertices = target_vertices * weights[:, None]
    dots = (projected_features * target_vertices).sum(dim=1)
    feature_norms = projected_features.norm(dim=1).detach().clamp_min(1e-8)
    target_norms = target_vertices.norm(dim=1).detach()
    return (0.5 * (dots - target_norms * feature_norms) ** 2 / feature_norms).mean()


def etf_loss(
    head: ETFHead,
    features: torch.Tensor,
    targets: torch.Tensor,
    kind: str,
    num_seen: int | None = None,
    balanced: bool = True,
) -> torch.Tensor:
    """The run config's `etf-loss` on backbone features.

    "dr": dot regression of the normalized mapped features on their target vertices, each
    target scaled by its in-batch class weight when `balanced` (`etf-dr-balance`); `num_seen`
    does not matter. "ce": cross-entropy on the scaled cosine logits, restricted to the first
    `num_seen` classes when given (classes seen so far); `balanced` does not matter.
    """
    if kind == "dr":
        return dot_regression_loss(
            F.normalize(head.projected(features), dim=1), targets, head.vertices, balanced
        )
    if kind == "ce":
        logits = head(features)
        if num_seen is not None:
            logits = logits[:, :num_seen]
        return F.cross_entropy(logits, targets)
    raise ValueError(f"unknown ETF loss {kind!r}, expected one of {ETF_LOSS_KINDS}")


@dataclass(frozen=True)
class ETFObjective:
    """How features train towards an ETF head, the same in every method: the run config's
    `etf-loss` (`kind`) and `etf-dr-balance` (`balanced`)."""

    kind: str
    balanced: bool

    @classmethod
    def of(cls, config: ExperimentConfig) -> ETFObjective:
        return cls(config.etf_loss, config.etf_dr_balance)

    def loss(
        self, head: ETFHead, features: torch.Tensor, targets: torch.Tensor, num_seen: int
    ) -> torch.Tensor:
        """`etf_loss` of `features` towards their vertices, over the first `num_seen` classes."""
        return etf_loss(head, features, targets, self.kind, num_seen, self.balanced)


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
