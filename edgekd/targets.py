"""A teacher's logits over a whole split: computed in chunks, sharded over torchrun ranks, and kept in the
logit cache (``edgekd.cache``) under the teacher's and the split's fingerprints. Core: the distillation and
specialist stages both read them."""

from __future__ import annotations

import torch

from edgekd.cache import LogitCache, cache_key
from edgekd.data import Dataset, fill_rows, inference_rows
from edgekd.teachers import Teacher
from edgekd.training import apply_shifts


def teacher_logits(teacher: Teacher, data: Dataset, split: str, cache: LogitCache, *, refresh: bool = False,
                   dist=None) -> torch.Tensor:
    """The teacher's raw logits on a split, from the cache when the teacher and data are unchanged."""
    x, _ = data.split(split)
    key = cache_key("logits", teacher.fingerprint, data.fingerprint(split))
    return cache.get_or_compute(key, lambda: sharded_logits(teacher.logits, x, dist), refresh=refresh, dist=dist,
                                check=lambda rows: teacher.logits(x[rows]).cpu()).to(x.device)


def sharded_logits(logits_of, x, dist=None, shifts: torch.Tensor | None = None,
                   pixels: int = 0, chunk: int | None = None) -> torch.Tensor:
    """``logits_of(x)`` (a teacher's ``logits``, or a model's; each row of ``x``, a tensor or a ``RowView``,
    shifted by ``shifts`` when given), ``chunk`` rows at a time (default: ``inference_rows``, at most 4096) so a
    memory-mapped train split is never shifted or converted whole, written into one table (``fill_rows``); under torchrun each rank computes its shard and the rows are gathered once."""
    chunk = chunk or inference_rows(x, 4096)
    lo, hi = dist.shard_range(len(x)) if dist is not None else (0, len(x))
    logits = fill_rows(lambda r: logits_of(x[r] if shifts is None else apply_shifts(x[r], shifts[r], pixels)),
                       lo, hi, chunk)
    logits = logits if logits is not None else logits_of(x[:0])
    return logits if dist is None else dist.gather_rows(logits, len(x))
