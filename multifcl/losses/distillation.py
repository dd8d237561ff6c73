"""Knowledge distillation towards a teacher's outputs (Hinton et al.; used by LwF)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), mean over the batch.

    PyCIL's LwF form: its soft-target cross-entropy has this gradient (the two differ by the
    teacher's entropy, a constant), and neither multiplies by Hinton's T^2, so PyCIL's
    weight (lamda = 3 at T = 2) means the same here. The teacher is detached.
    """
    student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    divergence = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return divergence
