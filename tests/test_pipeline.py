"""edgekd.pipeline: the summary says what was chosen and how the student compares."""

import json
import shutil
from pathlib import Path

import pytest

from edgekd.pipeline import render_summary


def _summary(search):
    model = lambda acc: {"description": "m", "accuracy": acc, "nll": 0.3, "ece": 0.02,  # noqa: E731
                         "agreement_with_teacher": None, "macs": 1000, "parameters": 10}
    return {"data": {"spec": "digits", "n_train": 1293, "n_val": 144, "n_test": 360},
            "distill": {"temperature": 4.0, "alpha": 0.9, "search": search, "gap_closed": None},
            "teacher": model(0.97), "baseline": model(0.95), "student": model(0.94), "timings_s": {"teacher": 1.0}}


def test_summary_keeps_the_settings_line_without_a_search():
    text = render_summary(_summary([]))
    assert "distillation at T=4, alpha=0.9." in text and "chosen on val" not in text


def test_summary_says_only_what_the_search_chose():
    search = [{"temperature": t, "alpha": 0.9, "val_accuracy": 0.9, "val_nll": 0.3} for t in (2.0, 4.0)]
    text = render_summary(_summary(search))
    assert "T=4 (chosen on val), alpha=0.9." in text


def test_summary_calls_a_loss_a_loss():
    assert "Distillation loses to its hard-label baseline by 1.00 points (test accuracy)." in render_summary(_summary([]))


def test_summary_says_what_was_skipped_and_kept_and_survives_a_row_without_a_speedup():
    summary = {**_summary([]), "skipped": ["specialists", "export"], "kept": ["teacher"],
               "timings_s": {"teacher": 0.0, "distill": 3.2},
               "bench": {"headline": [{"model": "student", "runtime": "pytorch", "batch_size": 1, "p50_ms": 0.05,
                                       "p99_ms": 0.07, "speedup": None}]}}   # the reference row failed: no speed-up
    text = render_summary(summary)
    assert "| student | pytorch | 1 | 0.0500 | 0.0700 | - |" in text
    assert "between models of similar size the speed-ups are noise" in text   # a quick bench says it is one
    assert "Stage times (s): teacher kept from the previous run, distill 3.2." in text
    assert "Skipped (--skip): specialists, export." in text


def test_a_run_starts_without_the_previous_runs_summaries_exports_and_report(tmp_path):
    """They are made again by every run: a --resume stopped before writing them leaves none of another student."""
    from edgekd.pipeline import _clear_made_each_run, _typed_stage_record

    for folder in ("export", "bench", "student"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x").write_text("old")
    for name in ("summary.md", "summary.json", "pipeline.json"):
        (tmp_path / name).write_text("old")
    _clear_made_each_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.json", "student"]
    record = {"command": "edgekd pipeline", "params": {"skip": ["bench"], "epochs": 3, "teacher_epochs": 2, "seed": 1}}
    # the whole command line is recorded; --skip binds no stage, and each stage only the settings it reads and the
    # shared ones (the seed)
    from edgekd.training import run_fingerprint

    # (as an earlier edgekd bound a stage's checkpoint: the command line as typed, resumed by a second try)
    assert _typed_stage_record(record, "distill") == {**record, "unbound": ["skip", "teacher_epochs"]}
    assert run_fingerprint(_typed_stage_record(record, "distill"))["config"] == {"epochs": 3, "seed": 1}
    assert run_fingerprint(_typed_stage_record(record, "teacher"))["config"] == {"teacher_epochs": 2, "seed": 1}


def test_resume_and_overwrite_together_are_refused(edgekd, tmp_path):
    code, _, err = edgekd("pipeline", "--resume", "--overwrite", "--out", tmp_path / "p")
    assert code == 2 and "pass one of them" in err and not (tmp_path / "p").exists()


@pytest.mark.slow
def test_the_whole_pipeline_on_digits(edgekd, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = edgekd("pipeline", "--ensemble", "2", "--teacher-arch", "cnn:width=4,fc=16", "--teacher-epochs", "2",
                               "--epochs", "2", "-T", "4", "--quiet", "--out", out)
    assert code == 0, err
    text = (out / "summary.md").read_text()
    assert "distillation at T=4, alpha=0.5." in text and "| student, distilled |" in text and "## Export" in text
    summary = json.loads((out / "summary.json").read_text())
    assert {"teacher", "baseline", "student", "export", "bench"} <= set(summary)
    assert (out / "bench" / "report.md").is_file() and (out / "export" / "student.onnx").is_file()
    int8 = summary["export"]["student_int8"]   # the int8 gate may refuse a 2-epoch student: then it says why
    assert (out / "export" / "student.int8.onnx").is_file() or "error" in int8


TINY_PIPELINE = ("pipeline", "--ensemble", "1", "--teacher-arch", "mlp:hidden=8", "--teacher-epochs", "1", "--epochs", "1",
                 "-T", "2", "--skip", "specialists", "--skip", "export", "--skip", "bench", "--quiet")


def test_resume_keeps_only_the_stages_whose_own_settings_are_this_runs(edgekd, tmp_path):
    """Bound to the whole command line, another --student (or --epochs) refused the --resume, and --overwrite then
    retrained the teacher: each stage is bound to the settings it reads, and a stage made again takes those made
    from it along (by their teacher)."""
    from edgekd.artifacts import load_artifact

    out = tmp_path / "demo"
    code, _, err = edgekd(*TINY_PIPELINE, "--student", "mlp:hidden=8", "--out", out)
    assert code == 0, err
    assert json.loads((out / "pipeline.json").read_text())["config"]["student"] == "mlp:hidden=8"
    code, stdout, err = edgekd(*TINY_PIPELINE, "--student", "mlp:hidden=8", "--resume", "--out", out)
    assert code == 0 and "[teacher] kept from the previous run" in stdout and "[distill] kept" in stdout, err
    teacher = (out / "teacher" / "manifest.json").read_bytes()
    # each artifact records the whole command line (bound or not), its pipeline settings as resolved
    params = load_artifact(out / "teacher").manifest.config["params"]
    assert params["student"] == "mlp:hidden=8" and params["jitter"] == 1 and params["temperature"] == 2.0
    code, stdout, err = edgekd(*TINY_PIPELINE, "--student", "mlp:hidden=16", "--resume", "--out", out)
    assert code == 0 and "[teacher] kept from the previous run" in stdout, err
    assert ("[distill] the previous run's was made with other settings ('student' was 'mlp:hidden=8', now "
            "'mlp:hidden=16'): made again") in stdout
    assert (out / "teacher" / "manifest.json").read_bytes() == teacher
    assert load_artifact(out / "student").manifest.members[0].options["hidden"] == [16]   # this run's student
    code, stdout, err = edgekd(*TINY_PIPELINE[:4], "mlp:hidden=4", *TINY_PIPELINE[5:], "--student", "mlp:hidden=16", "--resume",
                               "--out", out)   # another teacher: it and the student made from it are made again
    assert code == 0, err
    assert "[teacher] the previous run's was made with other settings ('teacher_arch'" in stdout
    assert "[distill] the previous run's was made from another teacher than this run's: made again" in stdout
    assert load_artifact(out / "teacher").manifest.members[0].options["hidden"] == [4]


def test_a_stage_whose_settings_changed_while_it_was_stopped_resumes_its_own_run(monkeypatch, tmp_path):
    """--resume with another --student makes the student again: stopped then, the next --resume with that student
    continues its run (not the previous student's); a finished stage is recorded with its settings, so one stopped
    while another student was tried is kept when the user goes back to it."""
    import edgekd.distill as distill_module
    import edgekd.pipeline as pipeline
    from edgekd.config import PipelineConfig

    real, calls = distill_module.distill, []

    def stopped(*args, resume=False, **kwargs):
        calls.append(resume)
        raise KeyboardInterrupt

    base = dict(ensemble=1, teacher_arch="mlp:hidden=8", teacher_epochs=1, epochs=1, temperature=2.0,
                skip=("specialists", "export", "bench"))
    out = tmp_path / "p"
    pipeline.run_pipeline(PipelineConfig(**base, student="mlp:hidden=8"), out)
    monkeypatch.setattr(distill_module, "distill", stopped)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(PipelineConfig(**base, student="mlp:hidden=16"), out, resume=True)
    assert calls == [True]
    monkeypatch.setattr(distill_module, "distill", lambda *a, resume=False, **k: (calls.append(resume), real(*a, resume=resume, **k))[1])
    said = []
    pipeline.run_pipeline(PipelineConfig(**base, student="mlp:hidden=16"), out, resume=True, echo=said.append)
    assert calls == [True, True] and "('student' was 'mlp:hidden=8', now 'mlp:hidden=16')" in " ".join(said)
    assert "[teacher] kept from the previous run" in " ".join(said)
    # stopped again with another student, then back to this one: the finished student is kept, not made again
    monkeypatch.setattr(distill_module, "distill", stopped)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(PipelineConfig(**base, student="mlp:hidden=4"), out, resume=True)
    monkeypatch.setattr(distill_module, "distill", lambda *a, **k: pytest.fail("made again"))
    said.clear()
    pipeline.run_pipeline(PipelineConfig(**base, student="mlp:hidden=16"), out, resume=True, echo=said.append)
    assert "[distill] kept from the previous run" in " ".join(said)


def test_resume_makes_again_a_stage_replaced_by_another_command_since(edgekd, tmp_path):
    """A teacher put in OUT/teacher by hand (``teacher train --out OUT/teacher --overwrite``) was kept and reported
    under the pipeline's settings: a stage is kept only when its manifest is the one the pipeline finished."""
    from edgekd.artifacts import load_artifact

    out = tmp_path / "demo"
    code, _, err = edgekd(*TINY_PIPELINE, "--out", out)
    assert code == 0, err
    code, _, err = edgekd("teacher", "train", "--arch", "mlp:hidden=4", "--epochs", "1", "--quiet", "--overwrite",
                          "--out", out / "teacher")
    assert code == 0, err
    code, stdout, err = edgekd(*TINY_PIPELINE, "--resume", "--out", out)
    assert code == 0, err
    assert "[teacher] the previous run's was not made by this pipeline (replaced since, or never recorded): made again" in stdout
    assert load_artifact(out / "teacher").manifest.members[0].options["hidden"] == [8]   # the pipeline's, not the hand-made 4
    code, stdout, err = edgekd(*TINY_PIPELINE, "--resume", "--out", out)   # and the one made again is kept
    assert code == 0 and "[teacher] kept from the previous run" in stdout, err


def test_an_interrupted_stage_started_from_another_teacher_is_started_again(monkeypatch, tmp_path):
    """Its .partial (a --skip since changed the teacher) stopped --resume with advice to --overwrite, which would
    remove the finished stages too; within one pipeline's settings nothing else can differ, so it starts again."""
    import edgekd.distill as distill_module
    import edgekd.pipeline as pipeline
    from edgekd.config import PipelineConfig
    from edgekd.errors import ResumeMismatch, TeacherChanged

    real, calls, refusal = distill_module.distill, [], [TeacherChanged("it was started from another teacher")]

    def distill(*args, resume=False, **kwargs):
        calls.append(resume)
        if resume:
            raise refusal[0]
        return real(*args, resume=resume, **kwargs)

    config = PipelineConfig(ensemble=1, teacher_arch="mlp:hidden=8", teacher_epochs=1, epochs=1, temperature=2.0,
                            skip=("specialists", "export", "bench"))
    pipeline.run_pipeline(config, tmp_path / "p")
    monkeypatch.setattr(distill_module, "distill", distill)   # (imported by run_pipeline as it runs)
    said = []
    pipeline.run_pipeline(config, tmp_path / "p", resume=True, echo=said.append)
    assert calls == [] and "[distill] kept from the previous run" in " ".join(said)   # finished: kept, not rerun
    shutil.rmtree(tmp_path / "p" / "student")   # as if it had been stopped before it finished
    said.clear()
    pipeline.run_pipeline(config, tmp_path / "p", resume=True, echo=said.append)
    assert calls == [True, False]
    assert "[distill] the interrupted run was started from another teacher than this run's: started again" in said
    shutil.rmtree(tmp_path / "p" / "student")
    refusal[0] = ResumeMismatch("it was started with other software (torch 1.0.0 then)")   # the user's to decide
    with pytest.raises(ResumeMismatch, match="other software"):
        pipeline.run_pipeline(config, tmp_path / "p", resume=True)


def test_resume_makes_again_a_stage_made_from_another_teacher(edgekd, tmp_path):
    """A kept stage must come from this run's teacher: a --skip since changes which teacher the student learns
    from. --overwrite starts over: the earlier run's specialists (of the earlier teacher) do not outlive it,
    even when this run skips that stage, so nothing of another run can be resumed into or reported."""
    from edgekd.artifacts import load_artifact
    from edgekd.teachers import load_teacher

    out = tmp_path / "demo"
    common = ["pipeline", "--ensemble", "1", "--teacher-arch", "mlp:hidden=8", "--epochs", "1", "-T", "2",
              "--skip", "export", "--skip", "bench", "--student", "mlp:hidden=8", "--quiet", "--out", out]
    code, _, err = edgekd(*common, "--teacher-epochs", "1")   # teacher, specialists of it, student
    assert code == 0, err
    assert (out / "specialists").is_dir()
    code, _, err = edgekd(*common, "--teacher-epochs", "2", "--skip", "specialists", "--overwrite")   # a new teacher
    assert code == 0, err
    assert not (out / "specialists").exists() and not list(out.glob("*.partial"))
    code, stdout, err = edgekd(*common, "--teacher-epochs", "2", "--resume")
    assert code == 0, err
    assert "[teacher] kept" in stdout and "[specialists] ..." in stdout
    distilled_from = json.loads((out / "summary.json").read_text())["distilled_from"]
    teacher = load_teacher(out / distilled_from)   # 'teacher' or 'specialists', the folder of either
    assert load_artifact(out / "student").manifest.teacher["fingerprint"] == teacher.fingerprint


@pytest.mark.parametrize("bad, message", [
    (dict(val_fraction=2.0), "'val_fraction' parameter must be in"),
    (dict(skip=("specialist",)), "'skip' parameter must be one of 'specialists', 'export', 'bench'"),
    (dict(epochs=0), "'epochs' parameter must be an integer >= 1"),
    (dict(specialist_lr=-1.0), "'specialist_lr' parameter must be > 0"),
])
def test_a_pipeline_config_checks_its_values_where_it_is_made(bad, message):
    """A notebook's PipelineConfig(val_fraction=2.0) trained the teacher on 10 rows; a misspelt --skip ran the stage."""
    from edgekd.config import PipelineConfig
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        PipelineConfig(**bad)


def test_the_specialists_stage_trains_at_the_pipelines_own_rate_and_patience(monkeypatch, tiny_teacher, digits, tmp_path):
    """specialist_lr and specialist_patience were part of the config (and its resume fingerprint) but the stage
    read the class defaults."""
    import specialists.build as build
    from edgekd.config import PipelineConfig
    from edgekd.pipeline import build_for_pipeline

    seen = {}
    monkeypatch.setattr(build, "build_specialists", lambda *a, **k: seen.setdefault("config", a[2]))
    build_for_pipeline(tiny_teacher, digits, tmp_path / "s", pipeline=PipelineConfig(specialist_lr=0.05, specialist_patience=7))
    assert (seen["config"].train.lr, seen["config"].train.patience) == (0.05, 7)


def test_a_jitter_given_for_vectors_is_refused_not_dropped(tmp_path):
    """The default jitter (None) is 1 px on images and none on vectors; a jitter the user gives is checked
    (jitter=1 equalled the old default and was dropped in silence, while jitter=2 was refused)."""
    from edgekd.config import PipelineConfig
    from edgekd.errors import ConfigError
    from edgekd.pipeline import run_pipeline

    config = PipelineConfig(data="synthetic:classes=4,groups=2,dim=8,train=60,test=30", teacher_arch="mlp:hidden=8", jitter=1,
                            ensemble=1, teacher_epochs=1, epochs=1, skip=("specialists", "export", "bench"))
    with pytest.raises(ConfigError, match="jitter"):
        run_pipeline(config, tmp_path / "p")


def test_a_stage_folder_is_locked_while_the_stage_writes_it(monkeypatch, tmp_path):
    """`edgekd teacher train --out P/teacher` while a pipeline trains P's teacher is refused (the two
    deleted each other's checkpoint folder)."""
    import edgekd.pipeline as pipeline
    from edgekd.config import PipelineConfig
    from edgekd.outputs import OutputError, output_lock

    import edgekd.teacher_training as teacher_training

    real, refused = teacher_training.train_teachers, []

    def train_teachers(data, config, out, **kwargs):
        try:
            with output_lock(out):   # another command's lock on the stage's folder, taken meanwhile
                pass
        except OutputError as exc:
            refused.append(str(exc))
        return real(data, config, out, **kwargs)

    monkeypatch.setattr(teacher_training, "train_teachers", train_teachers)
    config = PipelineConfig(ensemble=1, teacher_arch="mlp:hidden=8", teacher_epochs=1, epochs=1, temperature=2.0,
                            skip=("specialists", "export", "bench"))
    pipeline.run_pipeline(config, tmp_path / "p")
    assert refused and "Another edgekd command is writing" in refused[0]


@pytest.mark.parametrize("fails, code", [({}, 0), ({"student_int8": "gate"}, 0), ({"student_int8": "broken"}, 1)])
def test_a_failed_export_ends_the_pipeline_with_exit_1_and_a_refused_int8_model_does_not(monkeypatch, edgekd, tmp_path,
                                                                                           fails, code):
    """A refused int8 model is a measured outcome (the summary says why); any other failed export (a broken
    install, a parity check that fails) must reach a script: the other stages run, then exit 1, one line."""
    import export
    from edgekd.errors import AccuracyGateError, ExportError

    real = export.export_onnx

    def export_onnx(model, path, config, **kwargs):
        name = "student_int8" if config.quantize == "int8" else Path(path).stem.replace(".", "_") + "_fp32"
        if fails.get(name) == "gate":
            raise AccuracyGateError("The int8 model loses 3.00 accuracy points")
        if fails.get(name) == "broken":
            raise ExportError("Static int8 quantization failed (no module named onnxruntime.quantization)")
        return real(model, path, config, **kwargs)

    monkeypatch.setattr(export, "export_onnx", export_onnx)
    out = tmp_path / "p"
    args = " ".join(TINY_PIPELINE).replace("--skip export ", "").split()
    got, stdout, err = edgekd(*args, "--student", "mlp:hidden=8", "--out", out)
    assert got == code, err
    rows = json.loads((out / "summary.json").read_text())["export"]
    assert (out / "export" / "student.onnx").is_file() and (out / "summary.md").is_file()
    if code:
        assert err.startswith("error: The pipeline finished, but 1 stage(s) failed: export student_int8: Static int8")
        assert len(err.strip().splitlines()) == 1 and rows["student_int8"]["refused"] is False
    elif fails:
        assert not err and rows["student_int8"]["refused"] is True
        assert "| student_int8 | refused |" in (out / "summary.md").read_text()


def test_a_record_from_before_stages_were_recorded_keeps_its_stages_whose_settings_are_this_runs(tmp_path):
    import edgekd.pipeline as pipeline
    from edgekd.config import PipelineConfig

    base = dict(ensemble=1, teacher_arch="mlp:hidden=8", teacher_epochs=1, epochs=1, temperature=2.0,
                skip=("specialists", "export", "bench"))
    out = tmp_path / "p"
    pipeline.run_pipeline(PipelineConfig(**base, student="mlp:hidden=8"), out)
    record = json.loads((out / "pipeline.json").read_text())
    del record["stages"]
    (out / "pipeline.json").write_text(json.dumps(record))
    said = []
    pipeline.run_pipeline(PipelineConfig(**base, student="mlp:hidden=4"), out, resume=True, echo=said.append)
    assert "[teacher] kept from the previous run" in " ".join(said)
    assert "[distill] the previous run's was made with other settings ('student'" in " ".join(said)


def test_a_teacher_architecture_the_specialists_cannot_take_is_refused_before_the_teacher_trains(edgekd, tmp_path,
                                                                                                  monkeypatch):
    """The pipeline trained the whole ensemble, then the specialists stage refused its head."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures"))
    code, _, err = edgekd("pipeline", "--teacher-arch", "py:my_arch.conv_head_net:width=4", "--ensemble", "1",
                          "--teacher-epochs", "1", "--epochs", "1", "--skip", "export", "--skip", "bench", "--quiet",
                          "--out", tmp_path / "p")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "output is not an nn.Linear's" in err and err.strip().endswith("or pass --skip specialists.")
    assert not (tmp_path / "p" / "teacher").exists() and not (tmp_path / "p" / "teacher.partial").exists()


def test_a_stage_typed_another_way_but_the_same_is_bound_the_same(monkeypatch, tmp_path):
    """An interrupted teacher was started again when --jitter 1 was typed where it had been left to its default (1 px
    on images), or --channels given where it was the folder's own: its checkpoint was bound to the command line as
    typed. It is bound to the stage's settings as the run resolved them, by the rule that keeps a finished stage."""
    import edgekd.teacher_training as teacher_training
    import edgekd.pipeline as pipeline
    from edgekd.config import PipelineConfig
    from edgekd.training import run_fingerprint

    bound = []

    def stopped(*args, config_record=None, **kwargs):
        bound.append(run_fingerprint(config_record))
        raise KeyboardInterrupt

    monkeypatch.setattr(teacher_training, "train_teachers", stopped)
    typed = [{"command": "edgekd pipeline", "params": {"jitter": jitter, "temperature": t, "epochs": epochs}}
             for jitter, t, epochs in ((None, "auto", 60), (1, None, 60), (1, "2", 5))]
    for record, temperature, epochs in zip(typed, (None, None, 2.0), (60, 60, 5)):
        config = PipelineConfig(teacher_arch="mlp:hidden=8", ensemble=1, epochs=epochs, temperature=temperature,
                                jitter=record["params"]["jitter"], skip=("specialists", "export", "bench"))
        with pytest.raises(KeyboardInterrupt):
            pipeline.run_pipeline(config, tmp_path / "p", resume=True, config_record=record)
    assert bound[0] == bound[1] == bound[2] and bound[0]["config"]["jitter"] == 1   # (the 1 px it means on images)


def _stopped_pipeline(args, out: Path, env: dict) -> None:
    """``edgekd pipeline ARGS --out OUT``, stopped by SIGTERM once its teacher has a checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "edgekd", "pipeline", *map(str, args), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    deadline = time.time() + 120
    while not list((out / "teacher.partial").glob("member-0.ckpt.json")) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "checkpoint saved" in err, err


@pytest.mark.slow
def test_a_stopped_teacher_continues_under_the_same_settings_typed_otherwise_and_restarts_under_others(tmp_path):
    """A teacher stopped mid-run continues when --resume names its settings another way (--jitter 1 is the default
    on images), says so, and starts again, naming the change, when they differ."""
    import os
    import subprocess
    import sys

    env = {"EDGEKD_CACHE": str(tmp_path / "cache")}
    common = ["--ensemble", "1", "--teacher-arch", "mlp:hidden=8", "--epochs", "1", "-T", "2", "--skip", "specialists",
              "--skip", "export", "--skip", "bench", "--quiet"]

    def resume(*extra):
        done = subprocess.run([sys.executable, "-m", "edgekd", "pipeline", *common, *extra, "--resume", "--out",
                               str(tmp_path / "p")], capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout

    _stopped_pipeline([*common, "--teacher-epochs", "300"], tmp_path / "p", env)
    said = resume("--teacher-epochs", "300", "--jitter", "1")
    assert "[teacher] continued its interrupted run" in said and "started again" not in said
    shutil.rmtree(tmp_path / "p")
    _stopped_pipeline([*common, "--teacher-epochs", "300"], tmp_path / "p", env)
    said = resume("--teacher-epochs", "2")
    assert ("[teacher] the interrupted run was started with other settings ('teacher_epochs' was 300, now 2): "
            "started again") in said


def test_your_own_architectures_typed_here_need_no_trust_code_to_be_loaded_again(edgekd, tmp_path, monkeypatch):
    """The pipeline trained a py: teacher and student, then refused to open its own artifacts without
    --trust-code; the specs typed on its command line are trusted as teacher train and distill trust them."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures"))
    args = list(TINY_PIPELINE)
    args[args.index("mlp:hidden=8")] = "py:my_arch.tiny_net:hidden=8"
    code, _, err = edgekd(*args, "--student", "py:my_arch.tutorial_net:width=2", "--out", tmp_path / "p")
    assert code == 0, err
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["student"]["accuracy"] > 0


def test_scoped_trust_covers_only_the_architectures_it_names():
    from edgekd.models import code_trusted, trust_code

    with trust_code(only=["py:my_arch.tiny_net:hidden=8"]):
        assert code_trusted("py:my_arch.tiny_net") and code_trusted(" py:my_arch.tiny_net")
        assert not code_trusted("py:my_arch.picky") and not code_trusted()
    assert not code_trusted("py:my_arch.tiny_net")
