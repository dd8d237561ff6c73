"""What a process costs: its peak resident memory, and handing cached GPU memory back."""

from __future__ import annotations

import resource
import sys

import torch

CLIENT_SECONDS = "client-seconds"  # a client's train_client wall time, in its reply's metrics
PEAK_RSS_MB = "peak-rss-mb"  # the client process's peak resident memory so far


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, else KiB


def release_cached_gpu_memory(device: torch.device) -> None:
    """Return the allocator's cached blocks to the GPU, so the next client on a shared card
    (fractional `client-resources-num-gpus`) finds them free."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
