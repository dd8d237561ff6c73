"""How many CPU threads a process computes with, set from the run config.

A reduction split over more threads sums in another order, so the thread count changes
results in the last bits, and those grow over a run. Flower's simulation gives each client
process as many threads as it has CPUs (`client-resources-num-cpus`); fixing the count from
`torch-threads` makes a run's numbers independent of that.
"""

from __future__ import annotations

import torch
from threadpoolctl import threadpool_limits


def use_threads(count: int) -> None:
    """Compute with `count` threads in this process: torch's intra-op pool and the
    BLAS/OpenMP pools that numpy and scikit-learn use."""
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    threadpool_limits(count)
