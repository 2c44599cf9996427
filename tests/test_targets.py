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


def test_a_models_and_a_teachers_logits_are_written_into_one_table_not_joined(monkeypatch, tmp_path, digits):
    """``predict_logits`` and ``Teacher.logits`` fill one table chunk by chunk (``fill_rows``): chunks kept and then
    joined with ``torch.cat`` held a split's logits twice for a moment."""
    from edgekd.data import fill_rows
    from edgekd.teacher_training import save_untrained
    from edgekd.teachers import load_teacher
    from edgekd.training import predict_logits

    teacher = load_teacher(save_untrained(tmp_path / "t", "mlp:hidden=16", digits))
    model = teacher.module()
    whole = model.eval()(digits.x_val.float()).detach()
    monkeypatch.setattr(torch, "cat", lambda *a, **k: (_ for _ in ()).throw(AssertionError("joined")))
    for batch_size in (1, 7, 1000):
        torch.testing.assert_close(predict_logits(model, digits.x_val, batch_size=batch_size), whole)
        torch.testing.assert_close(teacher.logits(digits.x_val, batch_size=batch_size), whole)
    assert predict_logits(model, digits.x_val[:0]).shape == (0, 10) and teacher.logits(digits.x_val[:0]).shape == (0, 10)
    assert fill_rows(lambda r: torch.ones(r.stop - r.start, 2), 3, 3, 4) is None
    assert fill_rows(lambda r: torch.ones(r.stop - r.start, 2, dtype=torch.float16), 2, 9, 4).dtype == torch.float32
