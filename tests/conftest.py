"""Shared fixtures: tiny real artifacts trained on digits once per test session, and one way to run
the command line in-process."""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config):
    """Keep every logit cache out of the user's ~/.cache, session fixtures included (they run before
    any function-scoped fixture could set it)."""
    os.environ["EDGEKD_CACHE"] = tempfile.mkdtemp(prefix="edgekd-test-cache-")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test's logit cache under the session's temporary folder."""
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path_factory.getbasetemp() / "edgekd-cache"))


@pytest.fixture
def edgekd(capsys):
    """``edgekd(*args) -> (exit code, stdout, stderr)``: the command line, run in-process."""
    from edgekd.cli import cli
    from edgekd.clicommon import run_cli

    def run(*args):
        code = run_cli(cli, [str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


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
