"""edgekd.teacher_training: what a teacher run records about how long it trained."""

from __future__ import annotations

import json


def test_patience_stops_early_and_the_epochs_are_recorded(digits, tmp_path):
    from edgekd.teacher_training import TeacherConfig, train_teachers
    from edgekd.training import TrainConfig

    # lr so large that val stops improving within a few epochs; patience 1 then stops one epoch after the best
    config = TeacherConfig(arch="mlp:hidden=16", ensemble=2, train=TrainConfig(epochs=40, lr=0.5, patience=1))
    result = train_teachers(digits, config, tmp_path / "teacher")
    assert len(result.epochs_run) == len(result.best_epoch) == 2
    for run, best in zip(result.epochs_run, result.best_epoch):
        assert run < 40 and run == best + 1
    metrics = json.loads((tmp_path / "teacher" / "manifest.json").read_text())["metrics"]
    assert metrics["member_epochs_run"] == list(result.epochs_run)
    assert metrics["member_best_epoch"] == list(result.best_epoch)
