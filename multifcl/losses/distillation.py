"""Knowledge distillation towards a teacher's outputs (Hinton et al.; used by LwF)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over the batch.

    The T^2 factor keeps the gradient's size independent of T. The teacher is detached.
    """
    student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    divergence = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return temperature**2 * divergence
