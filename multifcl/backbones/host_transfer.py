"""Host-to-GPU copies through pinned (page-locked) memory.

Batches live in ordinary CPU memory. Bound for a CUDA device, each one is first copied
into pinned memory (PyTorch's caching host allocator reuses those buffers) and then sent
with `non_blocking=True`: the DMA copy needs no staging copy by the driver, and the CPU goes
on to index and pin the next batch while the GPU still works on this one. On the CPU, or
for tensors already on the device, nothing is pinned or copied.
"""

from __future__ import annotations

import torch


def uses_pinned_memory(tensor: torch.Tensor, device: torch.device) -> bool:
    """True when `tensor` travels from host memory to a CUDA device."""
    return device.type == "cuda" and tensor.device.type == "cpu"


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`; host-to-GPU copies go through pinned memory, asynchronously."""
    if not uses_pinned_memory(tensor, device):
        return tensor.to(device)
    pinned = tensor if tensor.is_pinned() else tensor.pin_memory()
    return pinned.to(device, non_blocking=True)
