"""Sharpness-Aware Minimization (SAM, Foret et al. 2021), the two-gradient reference for MSAM.

Each step takes the gradient g at w, ascends to w + rho * g / ||g|| (one L2 norm over all
groups), takes the gradient there, returns to w and lets the base optimizer (SGD with momentum,
or AdamW) step with that second gradient. Two forward/backward passes per step: twice SGD's
cost. The weights after `step` are unperturbed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

NORM_EPS = 1e-12
SAM_RHO = 0.2  # the reference code's rho for SAM with SGD on CIFAR-100


class SAM(Optimizer):
    """SAM around a base optimizer that shares its parameter groups and state.

    `SAM(params, torch.optim.SGD, rho=0.2, lr=0.01, momentum=0.9)`: the options after rho go
    to the base optimizer. Changing a group's lr (schedulers) changes the base optimizer's too,
    and `state_dict()` is the base optimizer's with each group's rho.
    """

    def __init__(
        self,
        params: ParamsT,
        base_optimizer: Callable[..., Optimizer] = torch.optim.SGD,
        rho: float = SAM_RHO,
        **base_options: Any,
    ) -> None:
        if rho < 0:
            raise ValueError(f"SAM rho must be >= 0, got {rho}")
        super().__init__(params, {"rho": rho, **base_options})
        self.base_optimizer = base_optimizer(self.param_groups, **base_options)
        self._share_base()
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float | torch.Tensor] | None = None) -> Any:
        """One SAM step; returns the loss at the unperturbed weights (the first pass)."""
        if closure is None:
            raise ValueError(
                "SAM needs a closure (zero grads, forward, backward, return loss): "
                "it evaluates the gradient twice"
            )
        closure = torch.enable_grad()(closure)
        loss = closure()
        params, ascent = self._ascend()
        closure()
        torch._foreach_sub_(params, ascent)
        self.base_optimizer.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self._share_base()

    def _share_base(self) -> None:
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def _ascend(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Move to w + rho g / ||g||; returns the moved parameters and their ascent vectors."""
        grouped = [
            [p for p in group["params"] if p.grad is not None] for group in self.param_groups
        ]
        gradients = [p.grad for params in grouped for p in params]
        if not gradients:
            return [], []
        norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gradients))))
        moved, ascent = [], []
        for group, params in zip(self.param_groups, grouped, strict=True):
            if not params:
                continue
            steps = torch._foreach_mul([p.grad for p in params], group["rho"] / (norm + NORM_EPS))
            torch._foreach_add_(params, steps)
            moved += params
            ascent += steps
        return moved, ascent
