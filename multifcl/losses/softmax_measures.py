"""Per-sample measures of softmax predictions, shared by self-distillation and
PiLoRA's confidence weighting."""

from __future__ import annotations

import torch


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(logits)) per sample (nats)."""
    log_p = torch.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def kl_per_sample(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) per sample."""
    log_t = torch.log_softmax(teacher_logits, dim=1)
    log_s = torch.log_softmax(student_logits, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=1)
