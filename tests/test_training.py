"""edgekd.training through the command line: the same command gives the same weights, and a run
killed (kill -9) or stopped (SIGTERM) resumes to the uninterrupted result, bit for bit on the CPU."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

TRAIN = ["teacher", "train", "--arch", "cnn:width=4,fc=16", "--ensemble", "2", "--epochs", "3", "--jitter", "1", "--quiet"]


def _edgekd(args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "edgekd", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, **kwargs)


def _weights(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    return {name: digest for name, digest in manifest["files"].items() if name.endswith(".safetensors")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "teacher"
    proc = _edgekd([*TRAIN, "--out", out])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


@pytest.mark.slow
def test_same_seed_same_command_same_result(reference, tmp_path):
    """Determinism: identical weights and metrics from two runs of the same command on the CPU."""
    out = tmp_path / "again"
    proc = _edgekd([*TRAIN, "--out", out])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert _weights(out) == _weights(reference)
    metrics = lambda p: json.loads((p / "manifest.json").read_text())["metrics"]  # noqa: E731
    assert metrics(out) == metrics(reference)
    students = []
    for name in ("s1", "s2"):   # and a distillation run from it, with temperature search and a baseline
        proc = _edgekd(["distill", "--teacher", out, "--student", "mlp:hidden=16,dropout=0.1", "--epochs", "2", "-T", "auto",
                        "--temperature-grid", "2,4", "--baseline", "--jitter", "1", "--views", "2", "--quiet", "--out", tmp_path / name],
                       env={"EDGEKD_CACHE": str(tmp_path / f"cache-{name}")})
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        students.append(tmp_path / name)
    assert metrics(students[0]) == metrics(students[1]) and _weights(students[0]) == _weights(students[1])


def _wait_for(path_glob: Path, pattern: str, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path_glob.exists() and list(path_glob.glob(pattern)):
            return
        time.sleep(0.02)
    raise AssertionError(f"no {pattern} in {path_glob} after {timeout}s")


@pytest.mark.slow
@pytest.mark.parametrize("how, wait_for", [
    ("kill9", "member-0.ckpt.json"),      # during member 0
    ("kill9", "member-1.ckpt.json"),      # after member 0 finished
    ("sigterm", "member-0.ckpt.json"),    # graceful: checkpoint at the current step
])
def test_interrupted_run_resumes_to_the_same_result(reference, tmp_path, how, wait_for):
    out = tmp_path / "teacher"
    proc = _edgekd([*TRAIN, "--out", out])
    _wait_for(tmp_path / "teacher.partial", wait_for)
    proc.send_signal(signal.SIGKILL if how == "kill9" else signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    # the signal is sent with training still to run: a run that finishes anyway has ignored it (never skipped)
    assert proc.returncode != 0, f"the run finished although it was stopped mid-training: {err[-300:]}"
    if how == "sigterm":
        assert proc.returncode == 130 and "checkpoint saved" in err and "--resume" in err
    assert not (out / "manifest.json").exists()
    again = _edgekd([*TRAIN, "--out", out])   # without --resume: refused, nothing lost
    _, err = again.communicate(timeout=120)
    assert again.returncode == 2 and "--resume" in err
    resumed = _edgekd([*TRAIN, "--out", out, "--resume"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    from edgekd.artifacts import load_artifact

    load_artifact(out)  # verifies every hash
    assert _weights(out) == _weights(reference)   # bitwise the uninterrupted run
    assert not (tmp_path / "teacher.partial").exists()
    timings = json.loads((out / "manifest.json").read_text())["timings"]   # the time before the stop is counted too
    assert timings["resumed"] and timings["train_seconds"] > 0
    assert json.loads((reference / "manifest.json").read_text())["timings"]["resumed"] is False


@pytest.mark.slow
@pytest.mark.parametrize("how, wait_for", [("kill9", "student*.ckpt.json"), ("sigint", "baseline*.ckpt.json")])
def test_an_interrupted_distillation_resumes_to_the_same_student_and_baseline(reference, tmp_path, how, wait_for):
    """Stopped in a student recipe (kill -9) or in the baseline (Ctrl-C), then --resume: the student, its
    baseline and every figure are those of the uninterrupted run."""
    distill = ["distill", "--teacher", reference, "--student", "mlp:hidden=32,dropout=0.1", "--epochs", "6", "--baseline",
               "--quiet"]
    env = {"EDGEKD_CACHE": str(tmp_path / "cache")}
    whole = _edgekd([*distill, "--out", tmp_path / "whole"], env=env)
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    proc = _edgekd([*distill, "--out", tmp_path / "s"], env=env)
    _wait_for(tmp_path / "s.partial", wait_for, timeout=300)
    proc.send_signal(signal.SIGKILL if how == "kill9" else signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, f"the run finished although it was stopped mid-training: {err[-300:]}"
    resumed = _edgekd([*distill, "--resume", "--out", tmp_path / "s"], env=env)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    metrics = lambda p: json.loads((p / "manifest.json").read_text())["metrics"]  # noqa: E731
    assert _weights(tmp_path / "s") == _weights(tmp_path / "whole") and metrics(tmp_path / "s") == metrics(tmp_path / "whole")
    assert not (tmp_path / "s.partial").exists()


def test_mix_inputs_blends_each_image_with_its_partner():
    """Mixup: one lam per batch from Beta(a, a), a permutation for partners, the same draw for the same step."""
    from edgekd.training import mix_inputs, step_generator

    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)   # pixels kept as uint8 are blended as float
    mixed, partner, lam = mix_inputs(x, step_generator(0, 3, 5), 0.4)
    assert isinstance(lam, float) and 0.0 <= lam <= 1.0
    assert sorted(partner.tolist()) == list(range(32)) and mixed.dtype == torch.float32
    assert torch.allclose(mixed, lam * x.float() + (1 - lam) * x.float()[partner])
    again, partner_again, lam_again = mix_inputs(x, step_generator(0, 3, 5), 0.4)
    assert lam_again == lam and torch.equal(partner_again, partner) and torch.equal(again, mixed)
    other = [mix_inputs(x, step_generator(0, 3, s), 0.4)[2] for s in range(20)]
    assert len(set(other)) == 20                                      # a fresh lam each step


def test_mixup_loss_blends_the_two_labels_and_leaves_other_batches_alone():
    import torch.nn.functional as F

    from edgekd.training import mixup_loss

    outputs, y, partner_y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([3, 2, 1, 0, 1, 0])
    loss = mixup_loss(lambda out, batch: F.cross_entropy(out, batch[1]))
    assert loss(outputs, (None, y)) == F.cross_entropy(outputs, y)
    blended = 0.3 * F.cross_entropy(outputs, y) + 0.7 * F.cross_entropy(outputs, partner_y)
    assert torch.allclose(loss(outputs, (None, y, partner_y, 0.3)), blended)
    seen = []   # a distillation batch keeps its teacher logits in both terms
    mixup_loss(lambda out, batch: seen.append(batch[2]) or out.sum())(outputs, (None, y, "teacher", partner_y, 0.3))
    assert seen == ["teacher", "teacher"]


def test_flip_mirrors_a_random_half_after_the_same_shifts():
    """--flip: the shifts are drawn first, as without it (runs without flips draw as before), then a
    third column mirrors about half of the images left to right."""
    from edgekd.training import apply_shifts, augment_batch, jitter_shifts, step_generator

    x = torch.rand(400, 1, 6, 6)
    y = torch.zeros(400, dtype=torch.long)
    plain, _ = augment_batch(x, y, step_generator(0, 0, 0), 1, 0.0)
    mirrored, _ = augment_batch(x, y, step_generator(0, 0, 0), 1, 0.0, flip=True)
    assert torch.equal(plain, apply_shifts(x, jitter_shifts(400, 1, step_generator(0, 0, 0)), 1))
    same = (mirrored == plain).flatten(1).all(1)
    flipped = (mirrored == plain.flip(-1)).flatten(1).all(1)
    assert (same | flipped).all() and 150 < int(flipped.sum()) < 250
    # without jitter, the third column alone mirrors
    only = apply_shifts(x[:2], torch.tensor([[0, 0, 1], [0, 0, 0]]), 0)
    assert torch.equal(only[0], x[0].flip(-1)) and torch.equal(only[1], x[1])


def test_flip_is_fingerprinted_only_when_on():
    """A setting added since runs were fingerprinted is left out at its default: runs started before it resume."""
    from edgekd.config import TrainConfig
    from edgekd.training import run_fingerprint

    assert "flip" not in run_fingerprint(TrainConfig())["config"]
    assert run_fingerprint(TrainConfig(flip=True))["config"]["flip"] is True
    assert "flip" not in run_fingerprint({"params": {"epochs": 2, "flip": False}})["config"]


def test_empty_inputs_give_no_rows_of_the_right_width(tiny_teacher, digits):
    """An empty torchrun shard gathers with the others: (0, C) on the input's device, not (0, 0)."""
    from edgekd.models import create_model, parse_arch
    from edgekd.teachers import load_teacher
    from edgekd.training import predict_logits

    arch, options = parse_arch("cnn:width=4,fc=16")
    model = create_model(arch, digits.input_shape, 10, mean=digits.mean, std=digits.std, options=options)
    assert predict_logits(model, digits.x_test[:0]).shape == (0, 10)
    empty = load_teacher(tiny_teacher).logits(digits.x_test[:0])
    assert empty.shape == (0, 10) and empty.device == digits.x_test.device


def test_a_signal_while_the_last_epoch_is_scored_stops_the_command(tmp_path, monkeypatch):
    """SIGINT landing during the final epoch's val scoring is not lost: the finished run is saved, then the
    command stops (it used to go on to the next member or candidate with fresh handlers)."""
    import edgekd.training as training

    real = training._end_epoch

    def scored_then_signalled(model, val, position, *args):
        best = real(model, val, position, *args)
        if position["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return best

    monkeypatch.setattr(training, "_end_epoch", scored_then_signalled)
    x, y = torch.randn(64, 4), torch.arange(64) % 2
    store = training.RunStore(tmp_path / "run.partial", resume=False, rank=0, fingerprint={"t": 1})
    with pytest.raises(training.Interrupted, match="Stopped by SIGINT as 'm' finished; its result is saved"):
        training.fit(torch.nn.Linear(4, 2), n_train=64, make_batch=lambda i, g, e: (x[i], y[i]),
                     loss_fn=lambda out, batch: torch.nn.functional.cross_entropy(out, batch[1]), val=(x, y),
                     config=training.TrainConfig(epochs=2, batch_size=16), store=store, name="m")
    assert store.load("m", "done") is not None


def test_a_users_folder_named_like_a_store_is_not_removed(tmp_path):
    """'results.partial/run.json' holding a user's log matched the store's file names and the folder was
    removed by the next 'teacher train --out results'; the store's own files are known by content too."""
    from edgekd import training
    from edgekd.errors import EdgekdError

    mine = tmp_path / "results.partial"
    mine.mkdir()
    (mine / "run.json").write_text('{"my": "experiment log"}')
    with pytest.raises(EdgekdError, match=r"holds files edgekd did not write \(run.json\)"):
        training.RunStore(mine, resume=False, rank=0, fingerprint={"t": 1})
    assert (mine / "run.json").read_text() == '{"my": "experiment log"}'
    (mine / "run.json").write_text('{"fingerprint": {"t": 0}}')   # edgekd's own, from a run that saved nothing
    training.RunStore(mine, resume=False, rank=0, fingerprint={"t": 1})
    assert json.loads((mine / "run.json").read_text())["fingerprint"] == {"t": 1}


def test_fit_keeps_the_best_val_epoch_not_the_last(digits):
    """After its first epoch the loss is turned around (gradient ascent), so every later epoch is worse on
    val: the weights returned and recorded are the first epoch's, and score what was recorded."""
    import torch.nn.functional as F

    from edgekd.models import create_model
    from edgekd.training import TrainConfig, accuracy_and_nll, fit

    x, y = digits.x_train, digits.y_train

    def make_batch(indices, _generator, epoch):
        return x[indices], y[indices], torch.tensor(1.0 if epoch == 0 else -1.0)   # (a float would read as mixup's lam)

    torch.manual_seed(0)
    model = create_model("mlp:hidden=32", digits.input_shape, digits.num_classes, mean=digits.mean, std=digits.std)
    fitted = fit(model, n_train=len(y), make_batch=make_batch, loss_fn=lambda out, b: b[2] * F.cross_entropy(out, b[1]),
                 val=(digits.x_val, digits.y_val), config=TrainConfig(epochs=4, lr=1e-2), store=None, name="m")
    assert fitted.best_epoch == 1 and fitted.epochs_run == 4   # epochs count from 1
    assert max(h["val_accuracy"] for h in fitted.history[1:]) < fitted.val_accuracy   # the later epochs were worse
    with torch.no_grad():
        accuracy, nll = accuracy_and_nll(model.eval()(digits.x_val.float()), digits.y_val)
    assert accuracy == pytest.approx(fitted.val_accuracy) and nll == pytest.approx(fitted.val_nll, rel=1e-5)
    assert all(torch.equal(v, fitted.state[k]) for k, v in model.state_dict().items())


def test_a_resume_under_another_torch_is_refused_and_under_other_threads_warned_of(tmp_path):
    """A run started with 2 threads and resumed with 1, or under an upgraded torch, equals neither uninterrupted run,
    and its manifest named only the last environment: another torch is refused, other numerics are warned of."""
    import edgekd.training as training
    from edgekd.errors import EdgekdWarning, ResumeMismatch

    path = tmp_path / "run.partial"
    training.RunStore(path, resume=False, fingerprint={"t": 1}).save("member-0", "ckpt", {"w": torch.zeros(3)},
                                                                     {"position": {"epoch": 1}})
    record = json.loads((path / "run.json").read_text())
    assert record["environment"]["torch"] == torch.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training.RunStore(path, resume=True, fingerprint={"t": 1})   # the same: silent
    (path / "run.json").write_text(json.dumps({**record, "environment": {**record["environment"], "torch_threads": 99}}))
    with pytest.warns(EdgekdWarning, match="torch_threads 99 then, .* now\\): the result will equal neither"):
        training.RunStore(path, resume=True, fingerprint={"t": 1})
    (path / "run.json").write_text(json.dumps({**record, "environment": {**record["environment"], "torch": "1.0.0"}}))
    with pytest.raises(ResumeMismatch, match="other software \\(torch 1.0.0 then, .* now\\); resume it with"):
        training.RunStore(path, resume=True, fingerprint={"t": 1})


def test_a_resume_with_the_same_pid_keeps_the_checkpoint_it_resumes_from(tmp_path, monkeypatch):
    """A container's job is pid 1 every time: its resumed run named its first checkpoint's tensors as the
    run before had, wrote over the file the saved JSON named, and a kill before the new JSON lost the run."""
    import edgekd.training as training

    path = tmp_path / "run.partial"

    def checkpoint(epoch, value):   # what fit saves: weights, random state, the position and optimizer's record
        position = {"epoch": epoch, "batch": 0, "step": 4 * epoch, "best_epoch": epoch, "stale": 0, "history": [],
                    "train_seconds": 1.0, "epochs_timed": epoch}
        return ({"w": torch.full((3,), float(value)), "rng_state": torch.get_rng_state()},
                {"position": position, "optimizer": {"param_groups": [], "scalars": {}}})

    training.RunStore(path, resume=False, rank=0, fingerprint={"t": 1}).save("member-0", "ckpt", *checkpoint(1, 0))
    resumed = training.RunStore(path, resume=True, rank=0, fingerprint={"t": 1})

    def killed(*_args, **_kwargs):   # the new tensors are written, the JSON pointing at them is not
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "write_json_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        resumed.save("member-0", "ckpt", *checkpoint(2, 1))
    monkeypatch.undo()
    tensors, meta = training.RunStore(path, resume=True, rank=0, fingerprint={"t": 1}).load("member-0", "ckpt")
    assert meta["position"]["epoch"] == 1 and torch.equal(tensors["w"], torch.zeros(3))


def test_settings_applied_after_training_do_not_bind_a_resume():
    """An ensemble's combine rule (and a specialist ensemble's solver settings) are applied once the members are
    trained: a resume that changes them continues the same training, one that changes the lr does not."""
    from edgekd.training import fingerprint_changes, run_fingerprint

    record = lambda **changed: {"params": {"arch": "cnn", "lr": 1e-3, "combine": "logits", **changed}}  # noqa: E731
    same = lambda a, b: not fingerprint_changes(run_fingerprint(a, after_training={"combine"}),   # noqa: E731
                                                run_fingerprint(b, after_training={"combine"}))
    assert same(record(), record(combine="probs"))
    assert not same(record(), record(lr=2e-3))
    assert fingerprint_changes(run_fingerprint(record()), run_fingerprint(record(combine="probs")))


def test_a_run_recorded_before_settings_were_left_out_still_resumes_and_another_teacher_is_named(tmp_path):
    """A run store written before 'combine' was left out of the fingerprint holds it: the resume compares without
    it there too. Another teacher, all else the same, is TeacherChanged (which a pipeline may start again)."""
    import edgekd.training as training
    from edgekd.errors import ResumeMismatch, TeacherChanged

    old_style = training.run_fingerprint({"params": {"arch": "cnn", "combine": "logits"}}, teacher="a")
    training.RunStore(tmp_path / "r", resume=False, fingerprint=old_style).save("m", "ckpt", {"w": torch.zeros(1)},
                                                                                 {"position": {"epoch": 1}})
    now = lambda **kw: training.run_fingerprint({"params": {"arch": "cnn", "combine": "probs", **kw}},  # noqa: E731
                                                teacher="a", after_training={"combine"})
    training.RunStore(tmp_path / "r", resume=True, fingerprint=now())
    with pytest.raises(TeacherChanged, match="started from another teacher"):
        training.RunStore(tmp_path / "r", resume=True, fingerprint={**now(), "teacher": "b"})
    with pytest.raises(ResumeMismatch) as refused:
        training.RunStore(tmp_path / "r", resume=True, fingerprint=now(arch="mlp"))
    assert not isinstance(refused.value, TeacherChanged) and "'arch' was 'cnn" in str(refused.value)
