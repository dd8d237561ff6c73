"""Batch sizes of passes without gradients: feature extraction and evaluation.

A configured size (`extract-batch-size`, `eval-batch-size`) > 0 is used as is. 0 means
`batch-size` on the CPU (the same batches, so the same numbers, as a fixed size) and, on
CUDA, the largest power of two up to AUTO_CUDA_MAX that fits: a batch that runs out of GPU
memory is retried at half the size, and the size that worked is kept for the rest of the
process (per purpose and device). Samples are independent in these passes (the backbone is
in eval mode), so results do not depend on the size beyond float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch

from multifcl.config import ExperimentConfig

AUTO_CUDA_MAX = 1024
_FITTING: dict[tuple[str, str], int] = {}  # (purpose, device) -> largest size that fitted

Result = TypeVar("Result")


@dataclass(frozen=True)
class PassBatches:
    """How one kind of no-grad pass (`purpose`) cuts its samples into batches."""

    purpose: str
    configured: int  # 0: automatic
    fallback: int  # the automatic size on the CPU
    device: torch.device

    @property
    def adaptive(self) -> bool:
        return self.configured == 0 and self.device.type == "cuda"

    @property
    def size(self) -> int:
        """The batch size the next batch gets."""
        if self.configured > 0:
            return self.configured
        if not self.adaptive:
            return self.fallback
        return _FITTING.get((self.purpose, str(self.device)), AUTO_CUDA_MAX)

    def map(
        self, count: int, compute: Callable[[int, int], Result]
    ) -> Iterator[tuple[int, int, Result]]:
        """(start, stop, compute(start, stop)) over consecutive ranges covering `count`
        samples; on CUDA with the automatic size, a range that runs out of memory is
        retried at half the size."""
        start = 0
        while start < count:
            size = self.size
            stop = min(start + size, count)
            try:
                result = compute(start, stop)
            except torch.OutOfMemoryError:
                if not self.adaptive or size == 1:
                    raise
                _FITTING[(self.purpose, str(self.device))] = size // 2
                torch.cuda.empty_cache()
                continue
            yield start, stop, result
            start = stop


def extraction_batches(config: ExperimentConfig, device: torch.device) -> PassBatches:
    """Batches of feature passes (client features, class means, test features)."""
    return PassBatches("extract", config.extract_batch_size, config.batch_size, device)


def evaluation_batches(config: ExperimentConfig, device: torch.device) -> PassBatches:
    """Batches of the server's evaluation passes (logits from pixels or stored features)."""
    return PassBatches("eval", config.eval_batch_size, config.batch_size, device)
