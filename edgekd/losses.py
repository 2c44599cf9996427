"""The distillation loss of Hinton, Vinyals & Dean (2015), section 2."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """q_i = exp(z_i / T) / sum_j exp(z_j / T)  (paper eq. 1)."""
    return F.softmax(logits / temperature, dim=-1)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor | None,
                      *, temperature: float, alpha: float) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``, batch mean.

    Section 2 of the paper: the soft term's gradient w.r.t. a student logit scales as 1/T^2, so it is
    multiplied by T^2 to keep its size comparable as T changes (and to the hard term's at T = 1).
    KL differs from the soft cross-entropy ``-sum q_t log q_s`` by the teacher's entropy, a constant
    in the student, so both give the same gradients. ``alpha = 1`` needs no labels; ``alpha = 0`` is
    plain cross-entropy on hard labels and needs no teacher.
    """
    loss = student_logits.new_zeros(())
    if alpha > 0:
        log_q_student = F.log_softmax(student_logits / temperature, dim=-1)
        log_q_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
        kl = F.kl_div(log_q_student, log_q_teacher, reduction="batchmean", log_target=True)
        loss = loss + alpha * temperature ** 2 * kl
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits, labels)
    return loss


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``-sum_i softmax(t/T)_i * log softmax(s/T)_i``, batch mean (the paper's soft-target objective)."""
    return -(soft_targets(teacher_logits, temperature) * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1).mean()
