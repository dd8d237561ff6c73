"""One client's local optimisation, the same for every method that trains.

The optimizer (`optimizer`: sgd, adamw, msam, msam-adamw, sam) steps with a closure; the
learning rate follows `lr-schedule`: `constant`, `cosine` (annealed to 0 over the round's
local steps) or `tempbalance` (cosine times per-layer factors from each layer's Hill alpha,
recomputed once per local epoch; plain cosine while only prototypes, or extra layers none of
which is eligible, train). `finish()` moves MSAM's weights back to the unperturbed
point: call it before anything leaves the client (upload, evaluation, prototypes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from multifcl.config import ExperimentConfig
from multifcl.optim.factory import build_optimizer, restore_unperturbed
from multifcl.optim.tempbalance import TempBalance, layer_parameter_groups

EXTRA_GROUP = "extra"  # trainable tensors that are not layers (prototypes), factor 1


class LocalTraining:
    """Optimizer + schedule over `module`'s trainable parameters and `extra` ones.

    `extra` holds tensors that are not layers (prototypes: one group, factor 1, at
    `extra_lr` when given, scheduled like the rest) and modules trained beside `module`
    (ETF projections), which TempBalance balances as layers.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        module: nn.Module,
        steps_per_epoch: int,
        extra: Iterable[torch.Tensor | nn.Module] = (),
        extra_lr: float | None = None,
    ) -> None:
        self.config = config
        self.total_steps = max(1, steps_per_epoch * config.local_epochs)
        self.steps = 0
        self.seconds = 0.0
        extra = list(extra)  # read twice below
        layers = [item for item in extra if isinstance(item, nn.Module)]
        tensors = [item for item in extra if not isinstance(item, nn.Module)]
        has_layers = any(p.requires_grad for p in module.parameters())
        if layers:
            module = nn.ModuleList([module, *layers])
            has_layers = has_layers or any(g["tb_eligible"] for g in layer_parameter_groups(module))
        self.balance = None
        if config.lr_schedule == "tempbalance" and has_layers:
            self.balance = TempBalance(module, config.tb_min, config.tb_max)
            groups = self.balance.param_groups(config.lr)
        else:
            groups = [{"params": [p for p in module.parameters() if p.requires_grad]}]
        if tensors:
            scale = 1.0 if extra_lr is None else extra_lr / config.lr
            groups.append({"params": tensors, "layer": EXTRA_GROUP, "lr_scale": scale})
        groups = [group for group in groups if group["params"]]
        self.optimizer = build_optimizer(config, groups)

    def start_epoch(self) -> None:
        """Recompute TempBalance's layer factors (once per local epoch), from the unperturbed
        weights when the optimizer is MSAM."""
        if self.balance is None:
            return
        with self.unperturbed():
            self.balance.compute_factors()

    @contextmanager
    def unperturbed(self) -> Iterator[None]:
        """Inside: the unperturbed weights (MSAM), to read or edit; perturbed again after."""
        restore_unperturbed(self.optimizer)
        yield
        perturb_again = getattr(self.optimizer, "move_to_perturbed", None)
        if perturb_again is not None:
            perturb_again()

    def scheduled_lr(self) -> float:
        """The global rate for the next step."""
        if self.config.lr_schedule == "constant":
            return self.config.lr
        progress = self.steps / self.total_steps
        return 0.5 * self.config.lr * (1.0 + math.cos(math.pi * progress))

    def step(self, compute_loss: Callable[..., torch.Tensor], *inputs) -> torch.Tensor:
        """One optimizer step on `compute_loss(*inputs)` (SAM evaluates it twice); the loss,
        detached and left on its device (reading it would wait for the GPU)."""

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            loss = compute_loss(*inputs)
            loss.backward()
            return loss

        rate = self.scheduled_lr()
        for group in self.optimizer.param_groups:
            factor = 1.0 if self.balance is None else self.balance.factor(group.get("layer", ""))
            group["lr"] = rate * factor * group.get("lr_scale", 1.0)
        started = time.perf_counter()
        loss = self.optimizer.step(closure)
        self.seconds += time.perf_counter() - started
        self.steps += 1
        return loss.detach()

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)

    def finish(self) -> None:
        """Leave the unperturbed weights in the model (MSAM); no-op for other optimizers."""
        restore_unperturbed(self.optimizer)


class LossSum:
    """The sample-weighted sum of a round's step losses, kept on the losses' device in
    float64 and read once at the end (a read per step would stop the host at every step).
    The same sums, in the same order, as adding Python floats."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, loss: torch.Tensor, samples: int) -> None:
        term = loss.detach().double() * samples
        self.total = term if self.total is None else self.total + term
        self.count += samples

    def mean(self) -> float:
        """The mean loss per sample (0 with no step)."""
        total = 0.0 if self.total is None else float(self.total)
        return total / max(self.count, 1)
