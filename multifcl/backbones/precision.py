"""Numeric precision of backbone passes: fp32, or bf16 autocast (GPUs with bf16 units).

Only the frozen backbone's passes (and adapters inside them) run under autocast; features
leave the backbone as float32, so heads, losses and everything sent stay float32.
"""

from __future__ import annotations

import contextlib

import torch

from multifcl.config import PRECISIONS


def backbone_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a backbone pass on `device` at `precision`."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
