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


def test_mixup_blends_hard_labels_and_is_recorded(digits, edgekd, tmp_path):
    """``supervised_batches`` with mixup carries the partner labels and lam; ``--mixup`` trains and is
    recorded in the manifest; a bad value is refused before anything is written."""
    import torch

    from edgekd.teacher_training import supervised_batches
    from edgekd.training import step_generator

    xb, yb, partner_y, lam = supervised_batches(digits.x_train, digits.y_train, 1, 0.2)(torch.arange(16), step_generator(0, 0, 0), 0)
    assert xb.shape == (16, *digits.input_shape) and torch.equal(yb, digits.y_train[:16]) and 0 <= lam <= 1
    assert sorted(partner_y.tolist()) == sorted(yb.tolist())
    code, out, err = edgekd("teacher", "train", "--arch", "mlp:hidden=16", "--epochs", "2", "--mixup", "0.2", "--quiet",
                            "--out", tmp_path / "t")
    assert code == 0, err
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["config"]["params"]["mixup"] == 0.2
    code, _, err = edgekd("teacher", "train", "--arch", "mlp:hidden=16", "--epochs", "2", "--mixup", "-1", "--out", tmp_path / "u")
    assert code == 2 and "--mixup" in err and not (tmp_path / "u").exists()


def test_flip_trains_teachers_on_mirrored_batches_and_is_recorded(digits, edgekd, tmp_path):
    """``--flip`` mirrors part of each batch (other weights than without it) and is recorded in the manifest."""
    code, _, err = edgekd("teacher", "train", "--arch", "mlp:hidden=16", "--epochs", "2", "--flip", "--quiet", "--out", tmp_path / "f")
    assert code == 0, err
    code, _, err = edgekd("teacher", "train", "--arch", "mlp:hidden=16", "--epochs", "2", "--quiet", "--out", tmp_path / "p")
    assert code == 0, err
    flipped, plain = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("f", "p"))
    assert flipped["config"]["params"]["flip"] is True and plain["config"]["params"]["flip"] is False
    assert flipped["files"]["member-0.safetensors"] != plain["files"]["member-0.safetensors"]


def test_the_library_refuses_a_users_folder_before_training(tmp_path, digits, monkeypatch):
    """train_teachers called from a notebook checks --out first, as the CLI does (it trained, then refused
    at the save and left a .partial folder behind)."""
    import pytest

    from edgekd import teacher_training as stage
    from edgekd.outputs import OutputError
    from edgekd.teacher_training import TeacherConfig, train_teachers

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    monkeypatch.setattr(stage, "fit", lambda *a, **k: pytest.fail("trained before the refusal"))
    with pytest.raises(OutputError):
        train_teachers(digits, TeacherConfig(arch="mlp:hidden=16"), mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "a user's file" and not (tmp_path / "mine.partial").exists()


def test_members_are_seeded_apart_and_the_ensemble_is_the_mean_the_manifest_names(digits, tmp_path):
    """Seeds seed, seed+1, ... (paper section 3: members differ only by their initialisation and batch order);
    the saved ensemble, reloaded, scores what the run reported: the mean of its members' logits."""
    import torch

    from edgekd.artifacts import load_artifact
    from edgekd.teacher_training import TeacherConfig, train_teachers
    from edgekd.teachers import load_teacher
    from edgekd.training import TrainConfig, accuracy_and_nll

    config = TeacherConfig(arch="mlp:hidden=16", ensemble=3, train=TrainConfig(epochs=2, seed=5))
    result = train_teachers(digits, config, tmp_path / "t")
    artifact = load_artifact(tmp_path / "t")
    assert [m.seed for m in artifact.manifest.members] == [5, 6, 7] and artifact.manifest.combine == "logits"
    members = [m.eval() for m in artifact.build_members()]
    first = [p.detach().clone() for p in members[0].parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(first, members[1].parameters()))   # not one model thrice
    with torch.no_grad():
        mean = torch.stack([m(digits.x_test.float()) for m in members]).mean(0)
    assert torch.allclose(load_teacher(tmp_path / "t").logits(digits.x_test), mean, atol=1e-5)
    assert accuracy_and_nll(mean, digits.y_test)[0] == result.ensemble_test_accuracy


def test_the_recorded_test_figures_are_the_saved_ensembles(digits, tmp_path):
    """Each member's test pass is made once and the ensemble's figures combined from them: they must be those of
    the saved teacher, as ``evaluate`` would score it, for either combine rule."""
    import pytest

    from edgekd.artifacts import load_artifact
    from edgekd.targets import sharded_logits
    from edgekd.teacher_training import TeacherConfig, train_teachers
    from edgekd.teachers import load_teacher
    from edgekd.training import TrainConfig, accuracy_and_nll, predict_logits

    for combine in ("logits", "probs"):
        config = TeacherConfig(arch="cnn:width=4,fc=16", ensemble=2, combine=combine, train=TrainConfig(epochs=1))
        result = train_teachers(digits, config, tmp_path / combine)
        teacher = load_teacher(tmp_path / combine)
        accuracy, nll = accuracy_and_nll(sharded_logits(teacher.logits, digits.x_test), digits.y_test)
        assert result.ensemble_test_accuracy == pytest.approx(accuracy, abs=1e-9)
        assert result.ensemble_test_nll == pytest.approx(nll, rel=1e-5)
        members = [accuracy_and_nll(predict_logits(m, digits.x_test), digits.y_test)[0]
                   for m in load_artifact(tmp_path / combine).build_members()]
        assert list(result.member_test_accuracy) == pytest.approx(members, abs=1e-9)
