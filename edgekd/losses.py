"""Distillation losses: Hinton, Vinyals & Dean (2015), section 2, and later refinements of its
soft term, each a ``method`` of ``edgekd distill`` (``--method kd|kd-ls|dkd|nckd``):

- ``kd``: the paper's ``T^2 * KL(softmax(t/T) || softmax(s/T))``;
- ``kd-ls``: the same on z-scored logits (logit standardization, Sun et al., CVPR 2024): the student
  matches the teacher's *relations* between classes, not the scale of its logits;
- ``dkd``: decoupled KD (Zhao et al., CVPR 2022): the target-class term (TCKD) and the non-target
  term (NCKD) weighted apart, ``TCKD + beta * NCKD``; plain KD is ``TCKD + (1 - p_t) * NCKD``;
- ``nckd``: that paper's non-target term alone, ``T^2 * NCKD`` (their Table 1 finds it alone at least
  as good as KD): the teacher's relations among the wrong classes, without its belief in the true one,
  so a teacher that is less sure of the label than the student could be does not pull it down.

Every method is mixed with the hard labels the same way: ``alpha * soft + (1 - alpha) * CE(s, y)``.
With ``correct=True`` the teacher's logits are first corrected where its top class is wrong (knowledge
adjustment, Wen et al., "Preparing Lessons", Neurocomputing 2021): the top logit and the true class's
logit trade places, so the soft term no longer pulls against the label while the rest of the teacher's
ranking (its dark knowledge) is kept.
(With AdamW a common scale of the whole loss hardly matters, so ``alpha = 0.5`` is the papers' unit
weights.)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from edgekd.config import METHODS, DistillConfig
from edgekd.errors import ConfigError



def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """q_i = exp(z_i / T) / sum_j exp(z_j / T)  (paper eq. 1)."""
    return F.softmax(logits / temperature, dim=-1)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor | None,
                      *, temperature: float, alpha: float, method: str = "kd", dkd_beta: float = DistillConfig.dkd_beta,
                      correct: bool = False) -> torch.Tensor:
    """``alpha * soft + (1 - alpha) * CE(s, y)``, batch mean; ``soft`` is the ``method``'s term.

    ``kd`` (section 2 of the paper): ``soft = T^2 * KL(softmax(t/T) || softmax(s/T))``. The soft
    term's gradient w.r.t. a student logit scales as 1/T^2, so it is multiplied by T^2 to keep its
    size comparable as T changes (and to the hard term's at T = 1). KL differs from the soft
    cross-entropy ``-sum q_t log q_s`` by the teacher's entropy, a constant in the student, so both give
    the same gradients. ``alpha = 1`` needs no labels (except for ``dkd``, ``nckd`` and ``correct``); ``alpha = 0``
    is plain cross-entropy on hard labels and needs no teacher.
    """
    loss = student_logits.new_zeros(())
    if alpha > 0:
        if correct:
            teacher_logits = corrected_teacher(teacher_logits, labels)
        loss = loss + alpha * soft_term(method)(student_logits, teacher_logits, labels, temperature, dkd_beta)
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits, labels)
    return loss


def corrected_teacher(teacher: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The teacher's logits with, in each row whose argmax ``m`` is not the label ``y``, ``z_m`` and
    ``z_y`` swapped (knowledge adjustment, Wen et al. 2021): the corrected teacher is right on every
    training example (but where ``z_y`` ties ``z_m`` exactly, which swapping cannot break) and its other
    logits are untouched. Rows it already gets right are unchanged."""
    if labels is None:
        raise ConfigError("Correcting the teacher needs hard labels (it moves the true class to the top).")
    rows, top = torch.arange(len(teacher), device=teacher.device), teacher.argmax(-1)
    fixed = teacher.clone()
    fixed[rows, top], fixed[rows, labels] = teacher[rows, labels], teacher[rows, top]
    return fixed


def method_targets(teacher: torch.Tensor, temperature: float, method: str = "kd",
                   labels: torch.Tensor | None = None) -> torch.Tensor:
    """The distribution a ``method``'s soft term asks the student to match: ``softmax(t/T)`` for ``kd``
    and ``dkd`` (which splits the same distribution), ``softmax(standardize(t)/T)`` for ``kd-ls``, and
    for ``nckd`` the teacher's distribution over the non-target classes alone (0 on the label, which it
    needs). With ``kd-ls`` the flatness depends on T alone, not on the teacher's logit scale."""
    soft_term(method)   # refuses an unknown method in the same words
    if method == "nckd":
        target = F.one_hot(_labels_for(method, labels), teacher.shape[-1]).bool()
        return _non_target_log_probs(teacher, target, temperature).exp()
    return soft_targets(standardize(teacher) if method == "kd-ls" else teacher.float(), temperature)


def target_sharpness(teacher: torch.Tensor, labels: torch.Tensor, temperature: float, method: str = "kd") -> dict:
    """How far from uniform a soft term's targets are: the mean top probability (``p_max``) and mean
    true-class probability (``p_true``) of ``method_targets`` over the rows (1/C would be uniform)."""
    q = method_targets(teacher, temperature, method, labels)
    return {"p_max": float(q.max(-1).values.mean()), "p_true": float(q.gather(1, labels[:, None]).mean())}


def soft_term(method: str) -> Callable:
    """The soft term of ``method``: ``f(student, teacher, labels, T, dkd_beta) -> scalar``."""
    terms = {"kd": _kd, "kd-ls": _kd_standardized, "dkd": _dkd, "nckd": _nckd}
    if method not in terms:
        raise ConfigError(f"The 'method' parameter must be one of {', '.join(map(repr, METHODS))}. Got {method!r} instead.")
    return terms[method]


def _kd(student, teacher, _labels, temperature, _beta):
    log_q_student = F.log_softmax(student / temperature, dim=-1)
    log_q_teacher = F.log_softmax(teacher / temperature, dim=-1)
    return temperature ** 2 * F.kl_div(log_q_student, log_q_teacher, reduction="batchmean", log_target=True)


def standardize(logits: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``(z - mean(z)) / sqrt(var(z) + eps)`` per row, var unbiased as ``torch.std``'s (Sun et al., CVPR 2024,
    eq. 5): the softmax then depends on the logits' ranks and gaps only, not on their offset or scale."""
    # eps inside the root, as LayerNorm has it: the reference code's std + 1e-7 sends a gradient of order
    # 1e5 through a row whose logits are all equal; here it is at most 1 / sqrt(eps)
    logits = logits.float()
    centred = logits - logits.mean(-1, keepdim=True)
    return centred * torch.rsqrt(logits.var(-1, keepdim=True) + eps)


def _kd_standardized(student, teacher, labels, temperature, beta):
    """KD on z-scored student and teacher logits (logit standardization); T is their 'base temperature'."""
    return _kd(standardize(student), standardize(teacher), labels, temperature, beta)


def dkd_terms(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float):
    """Per-sample (TCKD, NCKD) of Zhao et al. (CVPR 2022), both without the T^2 factor.

    With b = (p_target, 1 - p_target) the binary target/non-target split and p-hat the distribution
    over the non-target classes alone: TCKD = KL(b^T || b^S), NCKD = KL(p-hat^T || p-hat^S), and
    plain KD decomposes as KL(p^T || p^S) = TCKD + (1 - p^T_target) * NCKD (their eq. 5).
    """
    target = F.one_hot(labels, student.shape[-1]).bool()
    log_ps, log_pt = F.log_softmax(student.float() / temperature, -1), F.log_softmax(teacher.float() / temperature, -1)

    def binary(log_p):   # log (p_target, 1 - p_target), stable in the log domain
        log_target = log_p.masked_fill(~target, float("-inf")).logsumexp(-1)
        log_other = log_p.masked_fill(target, float("-inf")).logsumexp(-1)
        return torch.stack([log_target, log_other], -1)

    bs, bt = binary(log_ps), binary(log_pt)
    return (bt.exp() * (bt - bs)).sum(-1), _nckd_terms(student, teacher, target, temperature)


def _nckd_terms(student, teacher, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample NCKD = KL(p-hat^T || p-hat^S) (``target``: the label's one-hot mask)."""
    hat_s, hat_t = _non_target_log_probs(student, target, temperature), _non_target_log_probs(teacher, target, temperature)
    # the target's -inf set to 0 before the product: (-inf) - (-inf) is NaN, and a NaN times the zero gradient a
    # torch.where gives the column still reaches a teacher trained alongside (online or mutual distillation)
    hat_s, hat_t = hat_s.masked_fill(target, 0.0), hat_t.masked_fill(target, 0.0)
    return torch.where(target, 0.0, hat_t.exp() * (hat_t - hat_s)).sum(-1)


def _non_target_log_probs(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p-hat: ``log_softmax(z/T)`` over the non-target classes alone (-inf on the target)."""
    return F.log_softmax((logits.float() / temperature).masked_fill(target, float("-inf")), -1)


def _dkd(student, teacher, labels, temperature, beta):
    """T^2 * (TCKD + beta * NCKD), batch mean; needs the labels."""
    tckd, nckd = dkd_terms(student, teacher, _labels_for("dkd", labels), temperature)
    return temperature ** 2 * (tckd + beta * nckd).mean()


def _nckd(student, teacher, labels, temperature, _beta):
    """T^2 * NCKD, batch mean: KL between the teacher's and the student's distributions over the
    non-target classes (Zhao et al. 2022, eq. 5's second term, unweighted); needs the labels."""
    target = F.one_hot(_labels_for("nckd", labels), student.shape[-1]).bool()
    return temperature ** 2 * _nckd_terms(student, teacher, target, temperature).mean()


def _labels_for(method: str, labels: torch.Tensor | None) -> torch.Tensor:
    """``labels``, or a ConfigError: ``dkd`` and ``nckd`` split the target class from the others."""
    if labels is None:
        raise ConfigError(f"The {method!r} method needs hard labels (it splits the target class from the others).")
    return labels


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``-sum_i softmax(t/T)_i * log softmax(s/T)_i``, batch mean (the paper's soft-target objective)."""
    return -(soft_targets(teacher_logits, temperature) * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1).mean()
