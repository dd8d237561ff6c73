"""Momentum-SAM (MSAM, Becker et al. 2024, arXiv 2401.12033): SAM-like flat minima at SGD cost.

SAM perturbs the weights along the current gradient, which costs a second forward/backward
pass. MSAM perturbs them against the momentum direction instead, which is already known, so
each step needs one gradient only. The gradient of step t is taken at the perturbed weights

    w~_t = w_t - rho * d_t / ||d_t||

where `d` is the momentum buffer (SGD form) or Adam's first moment without bias correction
(AdamW form), and ||.|| is one L2 norm over every parameter of every group. A step undoes the
last perturbation, takes the base optimizer's step from the unperturbed w_t with that gradient,
and perturbs again for the next forward pass.

So between steps the model holds perturbed weights. Call `move_to_unperturbed()` before the
weights leave the client (upload), are evaluated, or feed anything else (prototypes), and
`move_to_perturbed()` to resume training exactly where it left off; `step()` works after
either, because each group records the perturbation it currently carries.

Unlike the reference code, any number of parameter groups is allowed, each with its own lr
(and rho); the norm stays global.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

NORM_EPS = 1e-12  # keeps rho / ||d|| finite while the direction is still zero
MSAM_RHO = 3.0  # the reference code's rho for MSAM (SGD and AdamW forms alike)
# The scale rho_g / ||d|| (a 0-dim tensor) of the perturbation a group carries now; None:
# unperturbed. A tensor, so a step never waits for the device to report the norm.
PERTURBATION_SCALE = "perturbation_scale"


class MomentumPerturbedOptimizer(Optimizer):
    """Shared bookkeeping of both MSAM forms: each group holds w - scale_g * d.

    Subclasses name the direction buffer in `direction_key` and implement `_descend`, the
    base optimizer's update of one group's parameters (those with a gradient) from
    unperturbed weights. Every update runs as `torch._foreach_*` over a group's tensors.
    """

    direction_key: ClassVar[str]

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        if defaults["rho"] < 0:
            raise ValueError(f"MSAM rho must be >= 0, got {defaults['rho']}")
        super().__init__(params, {**defaults, PERTURBATION_SCALE: None})

    @torch.no_grad()
    def step(self, closure: Callable[[], float | torch.Tensor] | None = None) -> Any:
        """One MSAM step; `closure` (zero grads, forward, backward, return loss) runs once."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.move_to_unperturbed()
        descents = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            descents.append((params, self._descend(group, params) if params else 0.0))
        self._perturb(descents)
        return loss

    @torch.no_grad()
    def move_to_unperturbed(self) -> None:
        """Put the unperturbed iterate w_t into the parameters (idempotent)."""
        for group in self.param_groups:
            scale = group[PERTURBATION_SCALE]
            params, directions = self._with_direction(group)
            if scale is not None and params:
                torch._foreach_addcmul_(params, directions, [scale] * len(params))
            group[PERTURBATION_SCALE] = None

    @torch.no_grad()
    def move_to_perturbed(self) -> None:
        """Perturb the weights against the current direction, as `step` leaves them (idempotent).

        Groups already perturbed stay as they are.
        """
        self._perturb([([], 0.0)] * len(self.param_groups))

    def _perturb(self, descents: list[tuple[list[torch.Tensor], float]]) -> None:
        """w <- w - scale_g d for every unperturbed group, and - lr_g d too for the group's
        parameters that `_descend` left to move along d (one pass over the weights)."""
        pairs = [self._with_direction(group) for group in self.param_groups]
        directions = [direction for _, group_directions in pairs for direction in group_directions]
        if not directions:
            return
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(directions)))
        groups = zip(self.param_groups, pairs, descents, strict=True)
        for group, (params, group_directions), (descended, rate) in groups:
            if group[PERTURBATION_SCALE] is not None or not params:
                continue
            scale = group["rho"] / (norm + NORM_EPS)
            moving = {id(p) for p in descended} if rate else set()
            for along, coefficient in ((True, scale + rate), (False, scale)):
                chosen = [i for i, p in enumerate(params) if (id(p) in moving) == along]
                if chosen:
                    torch._foreach_addcmul_(
                        [params[i] for i in chosen],
                        [group_directions[i] for i in chosen],
                        [coefficient] * len(chosen),
                        value=-1.0,
                    )
            group[PERTURBATION_SCALE] = scale

    def _with_direction(
        self, group: dict[str, Any]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The group's parameters that have a direction buffer, and those buffers."""
        params = [p for p in group["params"] if self.direction_key in self.state.get(p, {})]
        return params, [self.state[p][self.direction_key] for p in params]

    def _states(self, params: list[torch.Tensor], keys: tuple[str, ...]) -> list[list]:
        """Per key, the parameters' state tensors, created as zeros on first use."""
        columns: list[list] = [[] for _ in keys]
        for param in params:
            state = self.state[param]
            for column, key in zip(columns, keys, strict=True):
                if key not in state:
                    state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
                column.append(state[key])
        return columns

    def _descend(self, group: dict[str, Any], params: list[torch.Tensor]) -> float:
        """The base optimizer's step of `params` (the group's with a gradient), unperturbed.

        Returns a rate r when the step is w <- w - r d and was left to the perturbation pass
        (which then moves those parameters by -(r + scale) d at once), else 0.0.
        """
        raise NotImplementedError


class MSAM(MomentumPerturbedOptimizer):
    """MSAM, SGD form: heavy-ball momentum v <- mu v + g, w <- w - lr v, perturbation along v.

    Weight decay is L2 as in `torch.optim.SGD` (wd * w added to the gradient), with w the
    unperturbed weights (the reference code uses the perturbed ones), so rho = 0 is exactly
    `torch.optim.SGD(momentum=mu, weight_decay=wd)`. No dampening, no Nesterov.
    """

    direction_key = "momentum_buffer"

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        momentum: float = 0.9,
        rho: float = MSAM_RHO,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"MSAM needs lr, momentum, weight_decay >= 0, got {lr}, {momentum}, {weight_decay}"
            )
        defaults = {"lr": lr, "momentum": momentum, "rho": rho, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _descend(self, group: dict[str, Any], params: list[torch.Tensor]) -> float:
        gradients = [p.grad for p in params]
        if group["weight_decay"] != 0:
            gradients = torch._foreach_add(gradients, params, alpha=group["weight_decay"])
        (velocities,) = self._states(params, (self.direction_key,))
        torch._foreach_mul_(velocities, group["momentum"])
        torch._foreach_add_(velocities, gradients)
        return group["lr"]  # w <- w - lr v, folded into the perturbation pass


class MSAMAdamW(MomentumPerturbedOptimizer):
    """MSAM, AdamW form: the perturbation is along Adam's first moment m (no bias correction).

    The update is `torch.optim.AdamW`'s (decoupled weight decay w <- w (1 - lr wd) first, then
    the bias-corrected Adam step), so rho = 0 is exactly `torch.optim.AdamW`. No amsgrad.
    """

    direction_key = "exp_avg"

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        rho: float = MSAM_RHO,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(
                f"MSAMAdamW needs lr, eps, weight_decay >= 0, got {lr}, {eps}, {weight_decay}"
            )
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"MSAMAdamW betas must lie in [0, 1), got {betas}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "rho": rho, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _descend(self, group: dict[str, Any], params: list[torch.Tensor]) -> float:
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        gradients = [p.grad for p in params]
        first_moments, second_moments = self._states(params, (self.direction_key, "exp_avg_sq"))
        steps = []
        for param in params:
            state = self.state[param]
            state["step"] = state.get("step", 0) + 1
            steps.append(state["step"])
        torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_mul_(first_moments, beta1)
        torch._foreach_add_(first_moments, gradients, alpha=1 - beta1)
        torch._foreach_mul_(second_moments, beta2)
        torch._foreach_addcmul_(second_moments, gradients, gradients, value=1 - beta2)
        denominators = torch._foreach_sqrt(second_moments)
        torch._foreach_div_(denominators, [(1 - beta2**step) ** 0.5 for step in steps])
        torch._foreach_add_(denominators, group["eps"])
        step_sizes = [-lr / (1 - beta1**step) for step in steps]
        torch._foreach_addcdiv_(params, first_moments, denominators, step_sizes)
        return 0.0
