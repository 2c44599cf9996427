"""edgekd.training through the command line: the same command gives the same weights, and a run
killed (kill -9) or stopped (SIGTERM) resumes to the uninterrupted result, bit for bit on the CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal landed")
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
