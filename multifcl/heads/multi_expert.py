"""Multi-expert prototype classifiers: one prototype matrix per expert (MultiFCL 1c).

Expert m reads the feature of its tap; its logits are cos(feature, prototype_c) /
temperature. The prototype matrices are the experts' trainable classifier weights.
"""

from __future__ import annotations

import torch

from multifcl.config import ConfigError
from multifcl.heads.cosine_prototypes import cosine_logits


def expert_logits(
    features: list[torch.Tensor], prototypes: list[torch.Tensor], temperature: float
) -> list[torch.Tensor]:
    """Each expert's logits over all classes."""
    return [cosine_logits(f, p, temperature) for f, p in zip(features, prototypes)]


def inference_logits(logits: list[torch.Tensor], inference: str) -> torch.Tensor:
    """`final`: the last expert's logits. `ensemble`: log of the experts' mean probability."""
    if inference == "final":
        return logits[-1]
    probabilities = torch.stack([torch.softmax(z, dim=1) for z in logits]).mean(0)
    return probabilities.clamp_min(1e-12).log()


def expert_taps(num_taps: int, num_experts: int, backbone_name: str) -> list[int]:
    """The tap each expert reads: the last tap of each of `num_experts` equal modules.

    Raises a one-line ConfigError when the taps cannot be split evenly.
    """
    if num_experts > num_taps:
        raise ConfigError(
            f"run config key 'num-experts': {num_experts} experts need at least {num_experts} "
            f"tap points, backbone {backbone_name!r} has {num_taps}"
        )
    if num_taps % num_experts:
        size = -(-num_taps // num_experts)
        split = ", ".join(
            _span(start, min(start + size, num_taps)) for start in range(0, num_taps, size)
        )
        divisors = [str(d) for d in range(1, num_taps + 1) if num_taps % d == 0]
        raise ConfigError(
            f"run config key 'num-experts': {num_taps} tap points of {backbone_name!r} do not "
            f"split evenly into {num_experts} experts (would be {split}); "
            f"use one of {', '.join(divisors)}"
        )
    size = num_taps // num_experts
    return [size * (expert + 1) - 1 for expert in range(num_experts)]


def describe_experts(taps: list[int]) -> str:
    """`expert 1: taps 1-3, expert 2: taps 4-6, ...` (1-based, as in the paper)."""
    starts = [0] + [tap + 1 for tap in taps[:-1]]
    return ", ".join(
        f"expert {m + 1}: {_span(start, tap + 1)}"
        for m, (start, tap) in enumerate(zip(starts, taps))
    )


def _span(start: int, stop: int) -> str:
    return f"tap {start + 1}" if stop - start == 1 else f"taps {start + 1}-{stop}"
