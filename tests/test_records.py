"""edgekd.records: every stage's result is one ``to_dict()`` away from JSON (what ``--json`` prints)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgekd.records import Record, jsonable


def test_jsonable_makes_json_types_and_leaves_out_what_is_not_for_show():
    @dataclass(frozen=True)
    class Inner(Record):
        where: Path
        values: tuple

    @dataclass(frozen=True)
    class Outer(Record):
        inner: Inner
        score: float
        weights: dict = field(repr=False, default_factory=dict)

    got = Outer(Inner(Path("/a/b"), (np.float32(0.5), torch.tensor([1, 2]))), math.nan, {"w": torch.ones(3)}).to_dict()
    assert got == {"inner": {"where": "/a/b", "values": [0.5, [1, 2]]}, "score": None}
    json.dumps(got, allow_nan=False)
    assert jsonable({1: {3, }}) == {"1": [3]}


def test_the_stages_results_are_json(tmp_path, digits):
    from edgekd.config import DistillConfig, TeacherConfig, TrainConfig
    from edgekd.distill import distill
    from edgekd.evaluate import evaluate
    from edgekd.teacher_training import train_teachers
    from edgekd.teachers import load_teacher

    train = TrainConfig(epochs=1)
    teacher = train_teachers(digits, TeacherConfig(arch="mlp:hidden=8", ensemble=1, train=train), tmp_path / "t")
    student = distill(tmp_path / "t", digits, DistillConfig(student="mlp:hidden=8", train=train, recipe_search=False,
                                                            baseline=True), tmp_path / "s")
    scored = evaluate(load_teacher(tmp_path / "s"), digits)
    for result in (teacher, student, scored):
        text = json.dumps(result.to_dict(), allow_nan=False)
        assert str(tmp_path) in text or result is scored
    assert student.to_dict()["baseline_test_accuracy"] == student.baseline_test_accuracy
