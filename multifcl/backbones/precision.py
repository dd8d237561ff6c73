"""Numeric precision of backbone passes, and TF32 for float32 matmuls on CUDA.

`precision` is `fp32`, `bf16` (autocast, on GPUs with bf16 units) or `auto`: bf16 for
passes without gradients (feature extraction, evaluation: the frozen backbone) on a CUDA
device that supports it, fp32 otherwise (passes that train adapters, and every pass on the
CPU, so `auto` on the CPU is exactly `fp32`). Only the frozen backbone's passes (and
adapters inside them) run under autocast; features leave the backbone as float32, so
heads, losses and everything sent stay float32.
"""

from __future__ import annotations

import contextlib

import torch

from multifcl.config import PRECISIONS


def pass_precision(device: torch.device, precision: str, grad_enabled: bool) -> str:
    """`fp32` or `bf16`: what a pass on `device` runs at under the `precision` setting."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision != "auto":
        return precision
    if device.type == "cuda" and not grad_enabled and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def backbone_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a backbone pass on `device` at `precision` (`auto` decides
    by whether gradients are enabled now)."""
    if pass_precision(device, precision, torch.is_grad_enabled()) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def use_tf32(enabled: bool, device: torch.device) -> None:
    """Let CUDA float32 matmuls and convolutions use TF32 tensor cores (`tf32`); a
    process-wide switch, set only for a CUDA device (the CPU's matmuls are left alone)."""
    if device.type != "cuda":
        return
    mode = "tf32" if enabled else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_enabled() -> bool:
    """Whether CUDA float32 matmuls may use TF32 now."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return torch.backends.cuda.matmul.fp32_precision == "tf32"
    return bool(torch.backends.cuda.matmul.allow_tf32)
