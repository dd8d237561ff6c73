"""The optimizer a run config asks for, behind one interface for every training loop.

Every optimizer built here supports `loss = optimizer.step(closure)`, where `closure()` zeroes
the grads, runs forward and backward and returns the loss: SGD, AdamW and MSAM call it once,
SAM twice. Before weights leave a client (upload, evaluation, prototypes), call
`restore_unperturbed(optimizer)`: MSAM holds perturbed weights between steps.

Config fields used: `optimizer`, `lr` (the default of groups without their own lr),
`momentum` (SGD momentum; Adam's beta1 for the AdamW forms), `weight_decay` (L2 added to the
gradient for the SGD forms, decoupled for the AdamW forms) and `rho` (0: `DEFAULT_RHO`).
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.optim.msam import MSAM, MSAM_RHO, MSAMAdamW
from multifcl.optim.sam import SAM, SAM_RHO

ADAM_BETA2 = 0.999
# rho when the config's rho is 0, from the MSAM paper's code (github.com/MarlonBecker/MSAM):
# its README runs MSAM (CIFAR-100, SGD) and AdamW_MSAM (ImageNet ViT) with rho 3, SAM with 0.2.
DEFAULT_RHO = {"msam": MSAM_RHO, "msam-adamw": MSAM_RHO, "sam": SAM_RHO}
ADAM_FORMS = ("adamw", "msam-adamw")


def perturbation_radius(config: ExperimentConfig) -> float:
    """The rho a sharpness-aware optimizer uses: the config's, or the documented default."""
    if config.optimizer not in DEFAULT_RHO:
        raise ConfigError(
            f"run config key 'rho': optimizer {config.optimizer!r} has no perturbation radius"
        )
    return config.rho if config.rho > 0 else DEFAULT_RHO[config.optimizer]


def build_optimizer(config: ExperimentConfig, params_or_groups: ParamsT) -> Optimizer:
    """The optimizer named by `config.optimizer` over `params_or_groups`.

    Groups keep their own lr (and other options); `config.lr` is the default. sgd and adamw
    ignore rho.
    """
    name, lr, momentum, decay = config.optimizer, config.lr, config.momentum, config.weight_decay
    if name in ADAM_FORMS and not momentum < 1:
        raise ConfigError(
            f"run config key 'momentum': is Adam's beta1 for optimizer {name!r}, "
            f"must be < 1, got {momentum}"
        )
    if name == "sgd":
        return torch.optim.SGD(params_or_groups, lr=lr, momentum=momentum, weight_decay=decay)
    if name == "adamw":
        betas = (momentum, ADAM_BETA2)
        return torch.optim.AdamW(params_or_groups, lr=lr, betas=betas, weight_decay=decay)
    if name == "msam":
        rho = perturbation_radius(config)
        return MSAM(params_or_groups, lr=lr, momentum=momentum, rho=rho, weight_decay=decay)
    if name == "msam-adamw":
        betas, rho = (momentum, ADAM_BETA2), perturbation_radius(config)
        return MSAMAdamW(params_or_groups, lr=lr, betas=betas, rho=rho, weight_decay=decay)
    if name == "sam":
        rho = perturbation_radius(config)
        return SAM(
            params_or_groups, torch.optim.SGD, rho, lr=lr, momentum=momentum, weight_decay=decay
        )
    raise ConfigError(f"run config key 'optimizer': unknown value {name!r}")


def restore_unperturbed(optimizer: Optimizer) -> None:
    """Leave the unperturbed weights in the model (MSAM); a no-op for other optimizers."""
    move_to_unperturbed = getattr(optimizer, "move_to_unperturbed", None)
    if move_to_unperturbed is not None:
        move_to_unperturbed()
