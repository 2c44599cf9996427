"""edgekd.targets: a teacher's logits over a split, a bounded chunk of rows at a time, into one table."""

from __future__ import annotations

import torch

from edgekd.data import INFERENCE_CHUNK_BYTES, RowView, inference_rows
from edgekd.targets import sharded_logits


def test_a_pass_over_large_rows_takes_a_chunk_of_bounded_bytes():
    """1024 rows of 224x224 photos were 588 MiB of float32 inputs a chunk (4096 for the logits: 2.4 GB)."""
    photos = torch.zeros(300, 3, 224, 224, dtype=torch.uint8)
    seen = []

    def logits_of(x):
        seen.append(len(x))
        return torch.ones(len(x), 5)

    out = sharded_logits(logits_of, RowView(photos, torch.arange(299, -1, -1)))
    assert out.shape == (300, 5) and bool((out == 1).all())
    assert max(seen) * 3 * 224 * 224 * 4 <= INFERENCE_CHUNK_BYTES and sum(seen) == 300
    assert inference_rows(torch.zeros(10, 1, 8, 8), 1024) == 1024   # small rows: the usual batch
    assert inference_rows(torch.zeros(1, 3, 4096, 4096), 1024) == 1   # at least one row
