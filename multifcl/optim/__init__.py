"""Optimizers for client training: MSAM (SGD and AdamW forms), SAM, and the config factory."""

from multifcl.optim.factory import (
    DEFAULT_RHO,
    build_optimizer,
    perturbation_radius,
    restore_unperturbed,
)
from multifcl.optim.msam import MSAM, MomentumPerturbedOptimizer, MSAMAdamW
from multifcl.optim.sam import SAM

__all__ = [
    "DEFAULT_RHO",
    "MSAM",
    "SAM",
    "MSAMAdamW",
    "MomentumPerturbedOptimizer",
    "build_optimizer",
    "perturbation_radius",
    "restore_unperturbed",
]
