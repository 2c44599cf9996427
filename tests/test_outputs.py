"""edgekd.outputs: nothing the user had is ever lost. For each command with --out: out is an input, the
parent of an input, a user folder with files, or a symlink to one, with and without --overwrite and
--resume; everything stays byte-identical. '/', '.', home are tested against the check itself (tests
run as root: no command here may ever be pointed at them). Full and read-only disks are simulated by
injecting the OS errors. The logit cache detects values edited with their header hash recomputed."""

import errno
import hashlib
import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.cli import cli
from edgekd.clicommon import run_cli
from edgekd.errors import EdgekdError, EdgekdWarning
from edgekd.outputs import OutputError, check_output, clean_stale, output_lock

TINY = ["--epochs", "1", "--quiet"]


def snapshot(*folders):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else str(p.readlink()) if p.is_symlink() else "dir"
            for f in folders for p in sorted(Path(f).rglob("*"))}


def one_line_exit_2(capsys, argv):
    code = run_cli(cli, [str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (code, err)
    return lines[0]


# --- the check itself: places no command may write ------------------------------------------------

@pytest.mark.parametrize("kind", ["artifact", "report", "pipeline"])
@pytest.mark.parametrize("where", ["/", ".", "..", "~"])
def test_root_cwd_home_are_never_outputs(where, kind):
    path = Path(os.path.expanduser(where))
    for overwrite, resume in ((True, False), (False, True), (True, True)):
        with pytest.raises(OutputError, match="root folder|home folder|current folder"):
            check_output(path, kind=kind, overwrite=overwrite, resume=resume)


def test_new_file_inside_an_input_artifact_is_allowed(tiny_student):
    assert check_output(tiny_student / "student.onnx", kind="export", inputs=[tiny_student]) == tiny_student / "student.onnx"
    check_output(tiny_student / "again", kind="artifact", inputs=[tiny_student])   # a new sub-folder: replaces nothing


def test_an_output_inside_a_data_folder_is_refused(tmp_path, tiny_student, capsys):
    """An output under an image folder's train/ would become a class (or, deeper, images of one)."""
    photos = tmp_path / "photos"
    (photos / "train" / "cat").mkdir(parents=True)
    for where in (photos / "train" / "run1", photos / "train" / "cat" / "run1", photos / "run1"):
        with pytest.raises(OutputError, match="inside .*a data folder this command reads"):
            check_output(where, kind="artifact", inputs=[tiny_student], data=[photos])
    check_output(tmp_path / "run1", kind="artifact", data=[photos])   # beside it is fine
    check_output(photos / "run1", kind="artifact", inputs=[photos])   # a folder that is not data: as an input
    line = one_line_exit_2(capsys, ["teacher", "train", "--data", f"imagefolder:{photos}", *TINY,
                                    "--out", photos / "train" / "run1"])
    assert "a data folder this command reads" in line and not (photos / "train" / "run1").exists()


def test_listed_file_of_an_input_artifact_is_never_replaced(tiny_student):
    with pytest.raises(OutputError, match="of the artifact"):
        check_output(tiny_student / "baseline", kind="artifact", overwrite=True, inputs=[tiny_student])


def test_a_part_of_any_enclosing_artifact_is_never_replaced(tiny_student):
    """Not an input of the command, the student still lists its nested baseline: replacing it would break the student."""
    for out, kind in ((tiny_student / "baseline", "artifact"), (tiny_student / "baseline" / "member-0.safetensors", "export")):
        with pytest.raises(OutputError, match="of the artifact .* which would then no longer load"):
            check_output(out, kind=kind, overwrite=True)


@pytest.mark.parametrize("name, text", [("summary.md", "my notes\n"), ("summary.json", '{"mine": 1}'),
                                        ("pipeline.json", '{"config": {}, "data": "x", "notes": 1}')])
def test_a_users_file_named_like_a_pipeline_summary_is_not_edgekds(tmp_path, name, text):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / name).write_text(text)
    with pytest.raises(OutputError):
        check_output(tmp_path / "notes", kind="pipeline", overwrite=True)
    assert (tmp_path / "notes" / name).read_text() == text


def test_the_pipeline_summary_starts_with_the_header_its_folder_is_recognised_by():
    from edgekd.outputs import PIPELINE_SUMMARY_HEADER
    from edgekd.pipeline import render_summary

    model = {"accuracy": 0.9, "nll": 0.3, "ece": 0.01, "agreement_with_teacher": None, "macs": 10}
    text = render_summary({"data": {"spec": "digits", "n_train": 1, "n_val": 1, "n_test": 1},
                           "distill": {"temperature": 2, "alpha": 0.5, "search": []}, "timings_s": {},
                           "teacher": model, "baseline": model, "student": model})
    assert text.encode().startswith(PIPELINE_SUMMARY_HEADER)


# --- the data-loss matrix: every command with --out ---------------------------------------------

def _inputs(tmp, T, S):
    """Copies of the inputs inside tmp (so the matrix can never touch the session artifacts)."""
    data = tmp / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.savez(data / "d.npz", x=(rng.random((60, 8, 8)) * 16).astype(np.float32), y=np.arange(60) % 10)
    teacher, student = tmp / "teacher", tmp / "student"
    shutil.copytree(T, teacher)
    shutil.copytree(S, student)
    return data / "d.npz", teacher, student


COMMANDS = {   # command -> (argv without --out, the input that --out targets)
    "teacher train": lambda d, T, S: (["teacher", "train", "--arch", "mlp:hidden=8", "--data", f"npz:{d}", *TINY], d.parent),
    "distill": lambda d, T, S: (["distill", "--teacher", T, "--student", "mlp:hidden=8", *TINY], T),
    "specialists build": lambda d, T, S: (["specialists", "build", "--teacher", S, *TINY], S),
    "specialists regate": lambda d, T, S: (["specialists", "regate", S], S),
    "bench": lambda d, T, S: (["bench", "--model", S, "--seconds", "0.01", "--runtimes", "pytorch"], S),
    "pipeline": lambda d, T, S: (["pipeline", "--data", f"npz:{d}", "--ensemble", "1", "--teacher-epochs", "1", *TINY], d.parent),
}


def _target(tmp, which, the_input):
    if which == "the input":
        return the_input
    if which == "the parent of the input":
        return the_input.parent
    user = tmp / "mine"
    user.mkdir(exist_ok=True)
    (user / "notes.txt").write_text("notes")
    if which == "a user folder":
        return user
    (tmp / "link").symlink_to(user)
    return tmp / "link"


def _loss_cases():
    """Every command, target and flags a user could type: bench and regate have no --resume, and regate SPEC
    --out SPEC --overwrite replaces SPEC by design (read whole before the new artifact is swapped in)."""
    flag_sets = [[], ["--overwrite"], ["--resume"], ["--overwrite", "--resume"]]
    targets = ["the input", "the parent of the input", "a user folder", "a symlink to a user folder"]
    return [pytest.param(command, which, flags, id=f"{command}-{which}-{' '.join(flags)}")
            for command in COMMANDS for which in targets for flags in flag_sets
            if not (command in ("bench", "specialists regate") and "--resume" in flags)
            and not (command == "specialists regate" and which == "the input" and flags == ["--overwrite"])]


@pytest.mark.parametrize("command, which, flags", _loss_cases())
def test_nothing_the_user_had_is_lost(capsys, tmp_path, tiny_teacher, tiny_student, command, which, flags):
    work = tmp_path / "work"
    work.mkdir()
    argv, the_input = COMMANDS[command](*_inputs(work, tiny_teacher, tiny_student))
    out = _target(work, which, the_input)
    before = snapshot(tmp_path)
    one_line_exit_2(capsys, [*argv, "--out", out, *flags])
    assert snapshot(tmp_path) == before


def test_export_into_inputs_and_user_files(capsys, tmp_path, tiny_student):
    student = tmp_path / "student"
    shutil.copytree(tiny_student, student)
    (tmp_path / "mine.onnx").write_text("my model")
    (tmp_path / "m.onnx.json").mkdir()
    before = snapshot(tmp_path)
    for out, flags in ((student, []), (student, ["--overwrite"]), (tmp_path / "mine.onnx", []),
                       (tmp_path / "mine.onnx", ["--overwrite"]), (tmp_path / "m.onnx", ["--overwrite"])):
        one_line_exit_2(capsys, ["export", student, "--out", out, *flags])
    assert snapshot(tmp_path) == before


def test_bench_from_never_replaces_another_folder(capsys, tmp_path):
    reports, mine = tmp_path / "r", tmp_path / "myreports"
    reports.mkdir()
    mine.mkdir()
    (reports / "report.json").write_text(json.dumps({"format": "edgekd.bench"}))
    (mine / "report.md").write_text("my own report")
    before = snapshot(tmp_path)
    one_line_exit_2(capsys, ["bench", "--from", reports / "report.json", "--out", mine])
    one_line_exit_2(capsys, ["bench", "--from", reports / "report.json", "--out", mine, "--overwrite"])
    assert snapshot(tmp_path) == before


# --- what is allowed, and how it is done --------------------------------------------------------

def test_overwrite_replaces_an_edgekd_artifact_and_nothing_beside_it(capsys, tmp_path):
    out = tmp_path / "t"
    train = ["teacher", "train", "--arch", "mlp:hidden=8", *TINY, "--out", out]
    assert run_cli(cli, [str(a) for a in train]) == 0
    users_old = tmp_path / ".t.old"          # a user's folder of the name the old swap used
    users_old.mkdir()
    (users_old / "keep.txt").write_text("mine")
    dead = tmp_path / ".t.999999999-x.edgekd-tmp"   # left by a writer killed with -9
    dead.mkdir()
    assert run_cli(cli, [str(a) for a in [*train, "--overwrite", "--seed", "1"]]) == 0
    capsys.readouterr()
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert (users_old / "keep.txt").read_text() == "mine" and not dead.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.old", "t"]   # no temporary, backup or lock left


def test_resume_without_a_checkpoint_is_a_fresh_run_into_a_new_folder(capsys, tmp_path):
    out = tmp_path / "new"
    assert run_cli(cli, ["teacher", "train", "--arch", "mlp:hidden=8", *TINY, "--out", str(out), "--resume"]) == 0
    assert (out / "manifest.json").is_file() and not (tmp_path / "new.partial").exists()


def test_run_store_fingerprint_names_what_changed(tmp_path):
    from edgekd.training import RunStore

    first = RunStore(tmp_path / "o.partial", resume=False, fingerprint={"config": {"arch": "mlp", "train_limit": 500}, "data": "a"})
    result = {"best_epoch": 0, "epochs_run": 1, "val_accuracy": 0.5, "val_nll": 1.0, "history": [], "seconds_per_epoch": 1.0}
    first.save("member-0", "done", {"w": torch.zeros(1)}, {"result": result})
    with pytest.raises(EdgekdError, match="'train_limit' was 500, now 300"):
        RunStore(tmp_path / "o.partial", resume=True, fingerprint={"config": {"arch": "mlp", "train_limit": 300}, "data": "a"})
    with pytest.raises(EdgekdError, match="the data"):
        RunStore(tmp_path / "o.partial", resume=True, fingerprint={"config": {"arch": "mlp", "train_limit": 500}, "data": "b"})
    RunStore(tmp_path / "o.partial", resume=True, fingerprint={"config": {"arch": "mlp", "train_limit": 500}, "data": "a"})
    with pytest.raises(EdgekdError, match="--resume"):
        RunStore(tmp_path / "o.partial", resume=False)
    RunStore(tmp_path / "o.partial", resume=False, overwrite=True)   # --overwrite starts over
    assert not (tmp_path / "o.partial" / "member-0.done.json").exists()


def test_stale_store_without_checkpoints_does_not_block_a_rerun(tmp_path):
    from edgekd.training import RunStore

    (tmp_path / "o.partial").mkdir()
    (tmp_path / "o.partial" / "run.json").write_text('{"fingerprint": {}}')
    RunStore(tmp_path / "o.partial", resume=False)   # a run that failed before its first checkpoint


@pytest.mark.parametrize("name", ["model.ckpt.safetensors", ".draft.tmp", "epoch-3.ckpt.json"])
def test_a_users_folder_of_files_named_as_a_stores_is_never_removed(tmp_path, name):
    """Names edgekd writes in a store, without the run.json every store starts with: the user's folder."""
    from edgekd.training import RunStore

    folder = tmp_path / "o.partial"
    folder.mkdir()
    (folder / name).write_text("mine")
    with pytest.raises(EdgekdError, match=f"holds files that are not a run edgekd wrote \\({re.escape(name)}\\)"):
        RunStore(folder, resume=False, overwrite=True)
    with pytest.raises(EdgekdError):   # a plain run: refused too (as not a store, or as one to resume)
        RunStore(folder, resume=False)
    assert (folder / name).read_text() == "mine"


@pytest.mark.parametrize("name", ["notes.json", "weights.safetensors", "member-0.ckpt.best.safetensors", "run.json.bak"])
def test_a_users_folder_named_like_a_store_is_never_removed(tmp_path, name):
    """OUT.partial that holds a file edgekd does not write there is the user's: refused, whatever the flags."""
    from edgekd.training import RunStore

    folder = tmp_path / "o.partial"
    folder.mkdir()
    (folder / name).write_text("mine")
    for flags in (dict(resume=False), dict(resume=False, overwrite=True), dict(resume=True)):
        with pytest.raises(EdgekdError, match=f"holds files edgekd did not write \\({re.escape(name)}\\)"):
            RunStore(folder, **flags)
    assert (folder / name).read_text() == "mine"


@pytest.mark.parametrize("where", ["o", "new/parents/o"])
def test_second_writer_is_refused(tmp_path, where):
    """Also where --out's parent folders do not exist yet (they are made, then locked beside)."""
    with output_lock(tmp_path / where):
        with pytest.raises(OutputError, match="Another edgekd command is writing"):
            with output_lock(tmp_path / where):
                pass
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_clean_stale_keeps_what_a_live_process_or_the_user_owns(tmp_path):
    live = tmp_path / f".o.{os.getppid()}-abc.edgekd-tmp"
    dead = tmp_path / ".o.999999999-abc.edgekd-old"
    user = tmp_path / ".o.old"
    for folder in (live, dead, user, tmp_path / "o"):
        folder.mkdir()
    assert clean_stale(tmp_path / "o") == [dead]
    assert live.exists() and user.exists()


def test_leftovers_named_with_this_process_s_pid_are_stale_unless_it_made_them(tmp_path):
    """In a container every job is pid 1: the temporaries and backups of the job before, killed, carry this
    job's pid and were taken for its own, never removed (a backup never put back: its artifact "not found").
    Not made here, they are stale once idle for an hour: in a folder two containers share, one just written
    may be the other job's, still writing."""
    import time

    from edgekd.cachedir import cache_entries
    from edgekd.outputs import release, restore_interrupted_swap, temp_folder

    backup = tmp_path / f".o.{os.getpid()}-abc.edgekd-old"
    backup.mkdir()
    (backup / "manifest.json").write_text("the previous artifact")
    cache = tmp_path / "cache"
    cache.mkdir()
    logits = cache / f".{'e' * 32}.{os.getpid()}.tmp"
    logits.write_bytes(b"\0" * 8)
    # written just now: another container's job (pid 1 too) may be writing them into a shared folder
    assert restore_interrupted_swap(tmp_path / "o") is None and [e.kind for e in cache_entries(cache)] == []
    hours_ago = time.time() - 2 * 3600
    for path in (backup, backup / "manifest.json", logits):
        os.utime(path, (hours_ago, hours_ago))   # left by the job before, killed two hours ago
    mine = temp_folder(tmp_path / "o")   # this process's own, in flight (and the backup put back)
    os.utime(mine, (hours_ago, hours_ago))
    assert clean_stale(tmp_path / "o") == [] and (tmp_path / "o" / "manifest.json").is_file() and mine.is_dir()
    assert [e.kind for e in cache_entries(cache)] == ["unfinished"]
    release(mine)


def _holder(*paths, lock_out=None):
    """Another process (as another container's job would be) holding ``paths`` (``hold``) or ``output_lock(lock_out)``;
    it lets go when its stdin closes."""
    import subprocess
    import sys

    code = ("import sys, contextlib; from pathlib import Path; from edgekd.outputs import hold, output_lock\n"
            "with contextlib.ExitStack() as stack:\n"
            f"    [hold(Path(p)) for p in {[str(p) for p in paths]!r}]\n"
            f"    {'stack.enter_context(output_lock(Path(' + repr(str(lock_out)) + ')))' if lock_out else 'pass'}\n"
            "    print('ready', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_what_another_container_writes_is_live_whatever_its_pid_says_here(tmp_path):
    """In another pid namespace a writer's pid names no process here (or another one): its temporaries, held with
    flock while written, were removed at once as a dead process's; so was the backup a swap had just set aside."""
    from edgekd.cachedir import cache_entries
    from edgekd.outputs import restore_interrupted_swap

    temp = tmp_path / ".o.999999999-abc.edgekd-tmp"   # a pid that runs nowhere here
    temp.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    logits = cache / f".{'e' * 32}.999999999.tmp"
    logits.write_bytes(b"\0" * 8)
    (tmp_path / "o").mkdir()
    proc = _holder(temp, logits)
    try:
        assert clean_stale(tmp_path / "o") == [] and temp.is_dir()
        assert [e.kind for e in cache_entries(cache)] == []
    finally:
        proc.communicate("")
    assert [e.kind for e in cache_entries(cache)] == ["unfinished"]   # let go: a dead writer's now
    assert clean_stale(tmp_path / "o") == [temp]

    (tmp_path / "o").rename(tmp_path / ".o.999999999-def.edgekd-old")   # a swap between its two renames
    proc = _holder(lock_out=tmp_path / "o")
    try:
        assert restore_interrupted_swap(tmp_path / "o") is None and clean_stale(tmp_path / "o") == []
    finally:
        proc.communicate("")
    assert restore_interrupted_swap(tmp_path / "o") == tmp_path / "o"


def test_a_kill_between_the_two_renames_of_a_swap_loses_neither_artifact(tmp_path):
    """Killed after moving the old folder aside and before renaming the new one in, a run left no 'o' at all;
    the next run removed both hidden folders. The backup is put back as 'o' instead."""
    backup = tmp_path / ".o.999999999-abc.edgekd-old"
    new = tmp_path / ".o.999999999-def.edgekd-tmp"
    for folder in (backup, new):
        folder.mkdir()
    (backup / "manifest.json").write_text("the previous artifact")
    assert clean_stale(tmp_path / "o") == [new]
    assert (tmp_path / "o" / "manifest.json").read_text() == "the previous artifact"


# --- full and read-only disks, signals ----------------------------------------------------------

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_full_or_read_only_disk_is_one_line_and_keeps_the_old_output(capsys, tmp_path, tiny_student, monkeypatch, code):
    out = tmp_path / "s"
    shutil.copytree(tiny_student, out)
    before = snapshot(tmp_path)

    def failing_save(*_args, **_kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "x.safetensors"))

    monkeypatch.setattr("edgekd.artifacts.save_tensors", failing_save)
    line = one_line_exit_2(capsys, ["teacher", "train", "--arch", "mlp:hidden=8", *TINY, "--out", out, "--overwrite"])
    assert "cannot write" in line and os.strerror(code) in line
    after = {p: h for p, h in snapshot(tmp_path).items() if ".partial" not in str(p)}
    assert after == before


def test_an_input_that_cannot_be_read_is_said_as_a_read_not_a_write(capsys, tmp_path, monkeypatch):
    """chmod 000 data was "cannot write '...ok.npz' ...; choose a writable --out"; an ONNX teacher "system error 13"."""
    from edgekd.errors import TeacherError
    from edgekd.teachers import load_teacher

    data = tmp_path / "ok.npz"
    data.write_bytes(b"x")
    (tmp_path / "t.onnx").write_bytes(b"x")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p).endswith((".npz", ".onnx")) else real(p, mode, **k))

    def refused(*_args, **_kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(data))

    monkeypatch.setattr("click.Context.invoke", refused)
    line = one_line_exit_2(capsys, ["evaluate", str(tmp_path / "m")])
    assert line.startswith(f"error: cannot read '{data}': permission denied") and "make it readable" in line
    with pytest.raises(TeacherError, match="cannot be read \\(permission denied\\); make it readable"):
        load_teacher(tmp_path / "t.onnx")


def test_cache_that_cannot_be_written_is_a_warning(tmp_path, monkeypatch):
    from edgekd.cache import LogitCache

    def failing_save(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("edgekd.artifacts.save_tensors", failing_save)
    cache = LogitCache(tmp_path / "cache")
    with pytest.warns(EdgekdWarning, match="Could not write the teacher-logit cache"):
        value = cache.get_or_compute("k", lambda: torch.ones(3, 2))
    assert torch.equal(value, torch.ones(3, 2))


def test_ctrl_c_while_logits_are_cached_leaves_no_temporary(tmp_path, monkeypatch):
    """Removed on a disk error only: every Ctrl-C as a split's logits were written left their copy behind."""
    from edgekd.cache import LogitCache

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        LogitCache(tmp_path / "cache").get_or_compute("k", lambda: torch.ones(3, 2))
    monkeypatch.undo()
    assert list((tmp_path / "cache").iterdir()) == []


def test_sigterm_anywhere_is_one_line_exit_143(capsys, monkeypatch, tmp_path):
    def killed(_params):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr("edgekd.commands.core.load_data", killed)
    code = run_cli(cli, ["teacher", "train", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 143 and len(err.strip().splitlines()) == 1 and "SIGTERM" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["teacher", "train", "--arch", "mlp:hidden=8"],
                                     ["specialists", "build", "--teacher", "T", "--member", "0", "--clusters", "3"]])
def test_a_run_stopped_before_its_first_checkpoint_leaves_no_store_and_promises_none(capsys, monkeypatch, tmp_path,
                                                                                   tiny_teacher, command):
    """Stopped as its first member (or specialist) began training, a run left OUT.partial/run.json behind
    and its message said "the run keeps its checkpoint: rerun with --resume" of a checkpoint never written."""
    def killed(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr("edgekd.teacher_training.fit", killed)
    monkeypatch.setattr("specialists.build.train_specialist", killed)
    argv = [str(tiny_teacher) if a == "T" else a for a in command]
    code = run_cli(cli, [*argv, *TINY, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 143 and "SIGTERM" in err and "--resume" not in err, err
    assert list(tmp_path.iterdir()) == []


# --- a cache that can't lie -----------------------------------------------------------------------

def test_edited_cache_with_recomputed_hash_is_detected_and_recomputed(tmp_path, tiny_teacher, digits):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from edgekd.cache import LogitCache, _tensor_sha256
    from edgekd.distill import teacher_logits
    from edgekd.teachers import load_teacher

    teacher = load_teacher(tiny_teacher)
    cache = LogitCache(tmp_path / "cache")
    honest = teacher_logits(teacher, digits, "train", cache)
    path = next((tmp_path / "cache").glob("*.safetensors"))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    lie = honest.clone()
    lie[:, 0] += 10.0   # every row says class 0
    save_file({"logits": lie}, str(path), metadata={**metadata, "sha256": _tensor_sha256(lie)})
    again = LogitCache(tmp_path / "cache")
    with pytest.warns(EdgekdWarning, match="do not match the teacher"):
        used = teacher_logits(teacher, digits, "train", again)
    assert again.misses == 1 and again.hits == 0 and torch.allclose(used, honest)
    third = LogitCache(tmp_path / "cache")   # the recomputed entry is stored again, and it verifies
    assert torch.allclose(teacher_logits(teacher, digits, "train", third), honest) and third.hits == 1


def test_cache_tolerance_follows_the_logit_scale_and_device():
    from edgekd.cache import logits_match

    fresh = torch.tensor([[100.0, -50.0], [3.0, 1.0]])
    assert logits_match(fresh + 0.05, fresh)                 # 5e-4 of the scale: float noise
    assert not logits_match(fresh + 1.0, fresh)              # 1e-2 of the scale: not the same teacher
    assert logits_match(fresh + 1.0, fresh, loose=True)      # but within CUDA's looser numerics
    assert not logits_match(fresh[:1], fresh)


def test_outputs_get_the_modes_the_umask_gives(tmp_path, tiny_student):
    """tempfile's 0700 folders and 0600 files, renamed into place, would hide an artifact from a serving user."""
    import stat

    from safetensors.torch import load_file

    from edgekd.artifacts import load_artifact, save_artifact, write_json_atomic

    old = os.umask(0o022)
    try:
        artifact = load_artifact(tiny_student)
        weights = {name: load_file(tiny_student / name) for name in artifact.manifest.files if name.endswith(".safetensors")
                   and "/" not in name}
        out = tmp_path / "copy"
        save_artifact(out, artifact.manifest, weights)
        write_json_atomic(tmp_path / "s.json", {"a": 1})
        mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
        assert mode(out) == 0o755 and mode(out / "manifest.json") == 0o644 and mode(tmp_path / "s.json") == 0o644
        # safetensors writes its files 0600: the weights, the logit cache and a run's checkpoints too
        assert weights and all(mode(out / name) == 0o644 for name in weights)
        from edgekd.cache import LogitCache

        cache = LogitCache(tmp_path / "cache")
        cache.store("k", torch.zeros(2, 3))
        assert mode(cache.path("k")) == 0o644
    finally:
        os.umask(old)


def test_a_run_is_told_of_the_artifact_its_interrupted_swap_put_aside(edgekd, tmp_path, tiny_student):
    """The check restores the backup before judging --out: refused without --overwrite before training, not after."""
    out = tmp_path / "s"
    shutil.copytree(tiny_student, tmp_path / ".s.999999999-abc.edgekd-old")
    code, _, err = edgekd("teacher", "train", "--arch", "mlp:hidden=8", "--epochs", "1", "--quiet", "--out", out)
    assert code == 2 and "already exists" in err and (out / "manifest.json").is_file()


def test_a_reader_finds_the_artifact_an_interrupted_swap_put_aside(edgekd, tmp_path, tiny_student):
    """Only the next writer of that output put the backup back: 'evaluate' said the model was not found."""
    shutil.copytree(tiny_student, tmp_path / ".s.999999999-abc.edgekd-old")
    code, out, err = edgekd("evaluate", tmp_path / "s")
    assert code == 0 and "accuracy" in out, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    os.replace(tmp_path / "s", tmp_path / ".s.999999998-abc.edgekd-old")
    code, _, err = edgekd("export", tmp_path / "s", "--out", tmp_path / "s.onnx")
    assert code == 0 and (tmp_path / "s.onnx").is_file(), err


def test_an_output_path_that_cannot_be_used_is_the_users_to_change(edgekd, tmp_path):
    """A name too long for the file system (or a path through a file) is one line and exit 2, not an internal error."""
    code, _, err = edgekd("teacher", "train", "--arch", "mlp:hidden=8", "--epochs", "1", "--quiet", "--out", tmp_path / ("a" * 300))
    assert code == 2 and "cannot use the path" in err and "a name in it is too long" in err and "internal error" not in err


def test_a_users_checkpoint_named_file_in_an_edgekd_store_is_not_taken_for_edgekds(tmp_path):
    """A store with its run.json, and a JSON of the user's named like a checkpoint's: its content is not one."""
    from edgekd.training import RunStore

    folder = tmp_path / "o.partial"
    folder.mkdir()
    (folder / "run.json").write_text('{"fingerprint": {}}')
    (folder / "epoch-3.ckpt.json").write_text('{"loss": 0.1}')
    with pytest.raises(EdgekdError, match=r"holds files that are not a run edgekd wrote \(epoch-3.ckpt.json\)"):
        RunStore(folder, resume=False, overwrite=True)
    assert (folder / "epoch-3.ckpt.json").read_text() == '{"loss": 0.1}'


def test_a_resume_typed_another_way_is_not_refused(tmp_path):
    """The store keeps the settings as typed; they are compared as values: -T 2.0 is -T 2, and an
    architecture's defaults written out are the architecture."""
    from edgekd.training import RunStore

    typed = {"config": {"student": "mlp:hidden=16", "temperature": "2", "alpha": "0.5", "epochs": 2}, "data": "a"}
    store = RunStore(tmp_path / "o.partial", resume=False, fingerprint=typed)
    result = {"best_epoch": 1, "epochs_run": 1, "val_accuracy": 0.5, "val_nll": 1.0, "history": [], "seconds_per_epoch": 1.0}
    store.save("student", "done", {"w": torch.zeros(1)}, {"result": result})
    again = {"config": {"student": "mlp:hidden=16,dropout=0.0", "temperature": "2.0", "alpha": ".5", "epochs": 2}, "data": "a"}
    RunStore(tmp_path / "o.partial", resume=True, fingerprint=again)
    other = {"config": {**again["config"], "temperature": "4"}, "data": "a"}
    with pytest.raises(EdgekdError, match="'temperature' was '2', now '4'"):
        RunStore(tmp_path / "o.partial", resume=True, fingerprint=other)


def test_a_lock_file_removed_between_open_and_lock_is_taken_again(tmp_path, monkeypatch):
    """The holder removes its lock file as it finishes: a file opened before that and locked after is not the
    lock any more; the lock is taken on the file the path now names (else two commands could hold it)."""
    import fcntl

    import edgekd.outputs as outputs

    lock = tmp_path / ".o.edgekd-lock"
    real, calls = fcntl.flock, []

    def flock(fd, op):   # the first time, the previous holder's unlink lands between open and flock
        if not calls:
            lock.unlink()
        calls.append(op)
        return real(fd, op)

    monkeypatch.setattr(outputs.fcntl, "flock", flock)
    with output_lock(tmp_path / "o"):
        assert lock.exists() and len(calls) == 2   # locked again, on the file now at the path


def test_a_store_from_before_run_json_with_its_checkpoints_is_still_replaced_by_overwrite(tmp_path):
    from edgekd.training import RunStore

    folder = tmp_path / "o.partial"
    folder.mkdir()
    meta = {"tensors": "m.done.1-1.safetensors", "sha256": "0" * 64, "result": {
        "best_epoch": 1, "epochs_run": 1, "val_accuracy": 0.5, "val_nll": 1.0, "history": [], "seconds_per_epoch": 1.0}}
    (folder / "m.done.json").write_text(json.dumps(meta))
    (folder / "m.done.1-1.safetensors").write_bytes(b"x")
    RunStore(folder, resume=False, overwrite=True, fingerprint={"config": {}})
    assert sorted(p.name for p in folder.iterdir()) == ["run.json"]   # started over


def test_what_a_kill_leaves_inside_an_output_is_edgekd_s_own(tmp_path, monkeypatch):
    """An export killed mid-write leaves its temporary folder (and the file in it) in the pipeline's export/,
    and an atomic JSON write its temporary beside summary.json: both were called the user's files, and the
    pipeline refused --resume and --overwrite for good."""
    import tempfile

    from edgekd.artifacts import write_json_atomic
    from edgekd.outputs import foreign_entries

    made, mkstemp = [], tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda **kw: made.append(mkstemp(**kw)) or made[-1])
    write_json_atomic(tmp_path / "summary.json", {"format": "edgekd.pipeline"})
    leftover = Path(made[0][1]).name
    (tmp_path / leftover).write_text("{")   # as a kill -9 before the rename leaves it
    torn = tmp_path / "export" / f".student.onnx.{os.getpid() + 99999}-x1y2.edgekd-tmp"
    torn.mkdir(parents=True)
    (torn / "model.fp32.onnx").write_bytes(b"half")
    assert foreign_entries(tmp_path, "pipeline") == []
    (tmp_path / "export" / "notes.txt").write_text("mine")
    assert foreign_entries(tmp_path, "pipeline") == ["export/notes.txt"]


def test_sigterm_after_a_checkpoint_offers_resume_with_out_from_a_config_file(capsys, monkeypatch, tmp_path, tiny_teacher):
    """--out read from argv only: an out set in a --config file lost the hint though the checkpoint was on disk."""
    def checkpointed_then_killed(*_args, store, **_kwargs):
        (store.path / "member-0.ckpt.json").write_text("{}")   # (what matters here: a checkpoint is there)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr("edgekd.teacher_training.fit", checkpointed_then_killed)
    config = tmp_path / "c.toml"
    config.write_text(f'out = "{tmp_path / "t"}"\n')
    code = run_cli(cli, ["teacher", "train", "--arch", "mlp:hidden=8", *TINY, "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 143 and "the run keeps its checkpoint: rerun with --resume" in err, err
    assert (tmp_path / "t.partial" / "member-0.ckpt.json").is_file()
