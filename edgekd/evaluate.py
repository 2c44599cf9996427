"""Evaluation of anything that can teach: accuracy, NLL, ECE, per-class accuracy, confusion matrix,
and top-1 agreement with a reference teacher."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from edgekd.data import Dataset, as_dataset
from edgekd.errors import TeacherError
from edgekd.teachers import Teacher, as_teacher, check_teacher_fits
from edgekd.records import Record


@dataclass(frozen=True)
class EvalResult(Record):
    model: str
    data: str
    split: str
    n: int
    accuracy: float
    nll: float
    ece: float
    per_class_accuracy: dict
    confusion_matrix: list
    agreement: float | None = None


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """ECE = sum_b |B_b|/n * |accuracy(B_b) - confidence(B_b)| over equal-width confidence bins."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.float().mean() * (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
    return float(ece)


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor, classes) -> dict:
    logits, y = logits.detach().cpu(), y.cpu()   # counted on the host, from any device
    predicted = logits.argmax(1)
    k = len(classes)
    confusion = torch.zeros((k, k), dtype=torch.long)
    confusion.index_put_((y, predicted), torch.ones_like(y), accumulate=True)
    per_class = {name: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
                 for i, name in enumerate(classes)}
    return {"n": len(y), "accuracy": float((predicted == y).float().mean()),
            "nll": float(F.cross_entropy(logits, y)), "ece": expected_calibration_error(F.softmax(logits, 1), y),
            "per_class_accuracy": per_class, "confusion_matrix": confusion.tolist()}


def _checked(logits: torch.Tensor, n: int, classes: int, what: str) -> torch.Tensor:
    """Outputs that are one finite row of ``classes`` per input, or a ``TeacherError`` (never an accuracy)."""
    if tuple(logits.shape) != (n, classes):
        raise TeacherError(f"{what} gave outputs of shape {tuple(logits.shape)} for {n} inputs; expected ({n}, {classes}), "
                           f"one row of class scores per input; pass a model with one output row per input.")
    if not bool(torch.isfinite(logits).all()):
        raise TeacherError(f"{what} gives NaN or Inf outputs on {int((~torch.isfinite(logits)).any(1).sum())} of {n} inputs; "
                           f"its weights or graph are broken; re-create or re-export it.")
    return logits


def evaluate(model: Teacher | str | Path, data: Dataset | str, *, split: str = "test",
             reference: Teacher | str | Path | None = None) -> EvalResult:
    """Evaluate ``model`` (a ``Teacher``, or a path ``load_teacher`` takes) on a split of ``data`` (a ``Dataset``
    or its spec)."""
    model, data = as_teacher(model, "model"), as_dataset(data)
    reference = None if reference is None else as_teacher(reference, "reference")
    check_teacher_fits(model, data, name="Model", splits=[s for s in ("val", "test") if s == split])
    x, y = data.split(split)
    logits = _checked(model.logits(x).cpu(), len(x), data.num_classes, model.description)   # metrics on the host
    agreement = None
    if reference is not None:
        check_teacher_fits(reference, data, splits=[s for s in ("val", "test") if s == split])
        reference_logits = _checked(reference.logits(x).cpu(), len(x), data.num_classes, reference.description)
        agreement = float((reference_logits.argmax(1) == logits.argmax(1)).float().mean())
    return EvalResult(model=model.description, data=data.spec, split=split, agreement=agreement,
                      **metrics_from_logits(logits, y.cpu(), data.classes))
