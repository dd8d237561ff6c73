"""Multi-teacher dynamic self-distillation (MultiFCL 1c).

The earlier experts teach the final one: sum over teachers m of w_m KL(p_m || p_final),
teachers detached. The weights are per sample and sum to 1 over the teachers:
`entropy` (default): w_m ~ 1 / (H(p_m) + eps), confident teachers count more;
`inverse-kl`: w_m ~ 1 / (KL(p_m || p_final) + eps), teachers close to the final expert count
more; `uniform`: equal weights.
"""

from __future__ import annotations

import torch

from multifcl.losses.softmax_measures import kl_per_sample, prediction_entropy

EPS = 1e-6


def teacher_weights(
    teacher_logits: list[torch.Tensor], final_logits: torch.Tensor, weighting: str
) -> torch.Tensor:
    """N x (M-1) weights, each row summing to 1, without gradients."""
    with torch.no_grad():
        if weighting == "uniform":
            scores = torch.ones(final_logits.shape[0], len(teacher_logits))
            return scores.to(final_logits.device) / len(teacher_logits)
        if weighting == "entropy":
            scores = torch.stack(
                [1.0 / (prediction_entropy(z) + EPS) for z in teacher_logits], dim=1
            )
        elif weighting == "inverse-kl":
            scores = torch.stack(
                [1.0 / (kl_per_sample(z, final_logits) + EPS) for z in teacher_logits], dim=1
            )
        else:
            raise ValueError(f"unknown teacher weighting {weighting!r}")
        return scores / scores.sum(dim=1, keepdim=True)


def self_distillation_loss(expert_logits: list[torch.Tensor], weighting: str) -> torch.Tensor:
    """Mean over samples of the weighted KL from each earlier expert to the final expert."""
    *teachers, final = expert_logits
    teachers = [z.detach() for z in teachers]
    weights = teacher_weights(teachers, final.detach(), weighting)
    divergences = torch.stack([kl_per_sample(z, final) for z in teachers], dim=1)
    return (weights * divergences).sum(dim=1).mean()
