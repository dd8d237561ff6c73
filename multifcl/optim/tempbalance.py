"""TempBalance: layer-wise learning rates from heavy-tailed self-regularization (TempBalance, NeurIPS 2023).

Once per local epoch every eligible Linear/Conv layer gets the Hill estimate alpha of the
power-law tail of its weight's eigenvalue spectrum (a k x k convolution: the spectra of its
k^2 out x in matrices, one per kernel position, pooled, as in the official code). Heavier tails (small alpha) mark
well-trained layers, which get a smaller rate; light tails (large alpha) get a larger one:
lr = global scheduled lr * factor, the factor linear in alpha over [tb_min, tb_max]
(Zhou et al., "Temperature Balancing, Layer-wise Weight Analysis, and Neural Network
Training", NeurIPS 2023).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from multifcl.config import ConfigError

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCH_NORMS = nn.modules.batchnorm._BatchNorm  # BatchNorm1d/2d/3d and their subclasses
MIN_EIGENVALUES = 50  # fewer give no usable tail: such layers keep factor 1
OTHER_GROUP = "other"  # the group of every trainable parameter outside a Linear/Conv weight


def kernel_matrices(weight: torch.Tensor) -> torch.Tensor:
    """The weight as a stack of (out x in) matrices: one per kernel position of a conv
    weight (out, in, *kernel), the weight itself for a Linear."""
    if weight.dim() == 2:
        return weight.unsqueeze(0)
    return weight.flatten(start_dim=2).permute(2, 0, 1)


def eigenvalues(weight: torch.Tensor) -> torch.Tensor:
    """The eigenvalues of W_k^T W_k of every kernel matrix W_k, pooled, ascending, in float64
    on the weight's device: the squared singular values, as the official code computes them.

    Per matrix the smaller of W^T W and W W^T is used (the same nonzero eigenvalues), so
    there are kernel size x min(out, in) of them.
    """
    matrices = kernel_matrices(weight.detach()).to(torch.float64)
    if matrices.shape[2] <= matrices.shape[1]:
        grams = matrices.transpose(1, 2) @ matrices
    else:
        grams = matrices @ matrices.transpose(1, 2)
    return torch.linalg.eigvalsh(grams).flatten().sort().values


def eigenvalue_count(weight: torch.Tensor) -> int:
    """How many eigenvalues `eigenvalues(weight)` has."""
    positions = weight[0, 0].numel() if weight.dim() > 2 else 1
    return positions * min(weight.shape[0], weight.shape[1])


def hill_alpha(weight: torch.Tensor) -> float:
    """The Hill estimate of the power-law tail exponent of the weight's pooled eigenvalues.

    Sorted ascending, i = floor(N / 2), n = N - i: alpha = 1 + n / sum_{j>=i} ln(l_j / l_i).
    Eigenvalues are clamped to a tiny positive floor; a flat tail (e.g. an all-zero or
    orthogonal weight) gives inf.
    """
    values = eigenvalues(weight)
    floor = max(float(values[-1]) * torch.finfo(torch.float64).eps, torch.finfo(torch.float64).tiny)
    logs = values.clamp_min(floor).log()
    start = len(logs) // 2
    tail_size = len(logs) - start
    spread = float((logs[start:] - logs[start]).sum())
    return math.inf if spread <= 0 else 1.0 + tail_size / spread


def layer_parameter_groups(module: nn.Module, trainable_only: bool = True) -> list[dict]:
    """Optimizer parameter groups: one per Linear/Conv layer, one for everything else.

    A layer with a (trainable) weight gets a group {"params": [weight, bias?, ...], "layer":
    name, "tb_eligible": bool}: its weight is always params[0]. A BatchNorm that directly
    follows a layer in module order joins that layer's group, so it takes the layer's rate
    (the official code's "order" rule). Every other parameter (other norms, prototypes, a
    frozen layer's trainable bias, ...) goes to one group with layer "other" (left out when
    empty). Eligible for TempBalance: not the first or last of these layers in module order,
    and at least 50 eigenvalues. Groups carry only names and flags, so the optimizer's
    state_dict stays plain.
    """

    def wanted(parameter: nn.Parameter | None) -> bool:
        return parameter is not None and (parameter.requires_grad or not trainable_only)

    layer_groups: list[dict] = []
    placed: set[int] = set()  # a shared (tied) parameter goes into one group only
    previous_group = None  # the group of the module just before, if it was a layer
    for name, layer in module.named_modules():
        if isinstance(layer, BATCH_NORMS) and previous_group is not None:
            norm_params = [p for p in (layer.weight, layer.bias) if wanted(p)]
            norm_params = [p for p in norm_params if id(p) not in placed]
            previous_group["params"] += norm_params
            placed.update(id(p) for p in norm_params)
        previous_group = None
        if not isinstance(layer, LAYER_TYPES) or not wanted(layer.weight):
            continue
        if id(layer.weight) in placed:
            continue
        params = [layer.weight]
        if wanted(layer.bias) and id(layer.bias) not in placed:
            params.append(layer.bias)
        placed.update(id(p) for p in params)
        eligible = eigenvalue_count(layer.weight) >= MIN_EIGENVALUES
        previous_group = {"params": params, "layer": name, "tb_eligible": eligible}
        layer_groups.append(previous_group)
    for index in (0, -1):
        if layer_groups:
            layer_groups[index]["tb_eligible"] = False
    others = [p for p in module.parameters() if wanted(p) and id(p) not in placed]
    if others:
        layer_groups.append({"params": others, "layer": OTHER_GROUP, "tb_eligible": False})
    return layer_groups


class TempBalance:
    """Layer-wise learning-rate factors in [tb_min, tb_max] from each layer's Hill alpha.

    Build the optimizer from `param_groups(base_lr)`, then call `update(optimizer, lr)` at the
    start of every local epoch with that epoch's global scheduled rate. Ineligible groups
    (first/last layer, small layers, "other") and layers with an infinite alpha get factor 1;
    when all finite alphas are equal every factor is 1. `alphas` and `factors` (by layer name)
    are kept for logging.
    """

    def __init__(
        self,
        module: nn.Module,
        tb_min: float = 0.5,
        tb_max: float = 1.5,
        trainable_only: bool = True,
    ) -> None:
        self.tb_min, self.tb_max = tb_min, tb_max
        self.groups = layer_parameter_groups(module, trainable_only)
        self.eligible = {g["layer"]: g["params"][0] for g in self.groups if g["tb_eligible"]}
        if not self.eligible:
            raise ConfigError(
                "run config key 'lr-schedule': tempbalance needs a trainable Linear/Conv layer "
                f"with >= {MIN_EIGENVALUES} eigenvalues other than the first and last, "
                f"this model has none ({len(self.groups)} trainable parameter groups)"
            )
        self.alphas: dict[str, float] = {}
        self.factors: dict[str, float] = {}

    def compute_factors(self) -> dict[str, float]:
        """Recompute every eligible layer's alpha and factor from its current weight."""
        self.alphas = {name: hill_alpha(weight) for name, weight in self.eligible.items()}
        finite = [alpha for alpha in self.alphas.values() if math.isfinite(alpha)]
        low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
        self.factors = {}
        for name, alpha in self.alphas.items():
            if high > low and math.isfinite(alpha):
                position = (alpha - low) / (high - low)
                self.factors[name] = self.tb_min + position * (self.tb_max - self.tb_min)
            else:
                self.factors[name] = 1.0
        return self.factors

    def factor(self, layer: str) -> float:
        """The current factor of a group's layer (1 for ineligible groups)."""
        return self.factors.get(layer, 1.0)

    def param_groups(self, base_lr: float) -> list[dict]:
        """The optimizer's parameter groups, each with lr = base_lr * its current factor."""
        self.compute_factors()
        return [{**group, "lr": base_lr * self.factor(group["layer"])} for group in self.groups]

    def update(self, optimizer: torch.optim.Optimizer, base_lr: float) -> dict[str, float]:
        """Recompute the factors and set each group's lr = base_lr * factor; returns factors."""
        if not any("layer" in group for group in optimizer.param_groups):
            raise ValueError("the optimizer was not built from TempBalance.param_groups")
        self.compute_factors()
        for group in optimizer.param_groups:
            group["lr"] = base_lr * self.factor(group.get("layer", OTHER_GROUP))
        return self.factors
