"""Shared fixtures: tiny real artifacts trained on digits once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's logit cache out of the user's ~/.cache."""
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path_factory.getbasetemp() / "edgekd-cache"))


@pytest.fixture(scope="session")
def digits():
    from edgekd.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, digits):
    """An ensemble of 2 small CNNs on digits (a few seconds)."""
    from edgekd.teacher_training import TeacherConfig, train_teachers
    from edgekd.training import TrainConfig

    out = tmp_path_factory.mktemp("artifacts") / "teacher"
    train_teachers(digits, TeacherConfig(arch="cnn:width=8,fc=32", ensemble=2, train=TrainConfig(epochs=4, lr=3e-3)), out)
    return out


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory, digits, tiny_teacher):
    """An MLP student distilled from ``tiny_teacher``, with its hard-label baseline inside."""
    from edgekd.cache import LogitCache
    from edgekd.distill import DistillConfig, distill
    from edgekd.teachers import load_teacher
    from edgekd.training import TrainConfig

    out = tmp_path_factory.mktemp("artifacts") / "student"
    cache = LogitCache(tmp_path_factory.getbasetemp() / "fixture-cache")
    distill(load_teacher(tiny_teacher), digits, DistillConfig(student="mlp:hidden=32", train=TrainConfig(epochs=3),
                                                              baseline=True), out, cache=cache)
    return out
