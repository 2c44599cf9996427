"""Issue 6's sweep: bad invocations across every command. Each exits 2 with one line on stderr, no
traceback, and leaves every existing file as it was (and writes no output)."""

import shutil

import numpy as np
import pytest

from edgekd.cli import cli
from edgekd.clicommon import run_cli


def npz(tmp, name="d.npz", **arrays):
    path = tmp / name
    np.savez(path, **arrays)
    return f"npz:{path}"


def images(n=40, classes=10, shape=(1, 8, 8)):
    return {"x": np.random.default_rng(0).random((n, *shape)).astype(np.float32) * 16, "y": np.arange(n) % classes}


def write(tmp, name, text):
    (tmp / name).write_text(text)
    return tmp / name


def corrupt_copy(src, tmp):
    dst = tmp / "edited"
    shutil.copytree(src, dst)
    weights = dst / "member-0.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    return dst


# (id, args builder(tmp, teacher, student) -> argv, expected fragment of the one-line message)
CASES = [
    ("distill teacher missing", lambda t, T, S: ["distill", "--teacher", t / "nope", "--out", t / "o"], "not found"),
    ("distill teacher folder without manifest", lambda t, T, S: ["distill", "--teacher", t, "--out", t / "o"], "not an edgekd artifact"),
    ("distill teacher of unknown type", lambda t, T, S: ["distill", "--teacher", write(t, "m.txt", "x"), "--out", t / "o"], "is not a teacher"),
    ("distill T = 0", lambda t, T, S: ["distill", "--teacher", T, "-T", "0", "--out", t / "o"], "'temperature' parameter must be > 0"),
    ("distill T not a number", lambda t, T, S: ["distill", "--teacher", T, "-T", "hot", "--out", t / "o"], "a number or 'auto'"),
    ("distill alpha < 0", lambda t, T, S: ["distill", "--teacher", T, "--alpha", "-0.1", "--out", t / "o"], "'alpha' parameter must be in [0, 1]"),
    ("distill epochs 0", lambda t, T, S: ["distill", "--teacher", T, "--epochs", "0", "--out", t / "o"], "--epochs"),
    ("distill transfer limit 0", lambda t, T, S: ["distill", "--teacher", T, "--transfer-limit", "0", "--out", t / "o"], "'transfer_limit' parameter must be > 0"),
    ("distill transfer limit text", lambda t, T, S: ["distill", "--teacher", T, "--transfer-limit", "half", "--out", t / "o"], "count or a fraction"),
    ("distill omit unknown class", lambda t, T, S: ["distill", "--teacher", T, "--omit-classes", "12", "--out", t / "o"], "classes in [0, 9]. Got 12"),
    ("distill unknown student", lambda t, T, S: ["distill", "--teacher", T, "--student", "vit", "--out", t / "o"], "Unknown architecture 'vit'"),
    ("distill cnn student on vectors", lambda t, T, S: ["distill", "--teacher", T, "--student", "cnn", "--out", t / "o", "--data",
                                                        npz(t, **images(shape=(64,)))], "needs image inputs"),
    ("distill class count mismatch", lambda t, T, S: ["distill", "--teacher", T, "--out", t / "o", "--data", npz(t, **images(classes=7))], "10 outputs but dataset"),
    ("distill input shape mismatch", lambda t, T, S: ["distill", "--teacher", T, "--out", t / "o", "--data", npz(t, **images(shape=(1, 10, 10)))], "takes inputs of shape"),
    ("train npz missing", lambda t, T, S: ["teacher", "train", "--data", f"npz:{t / 'none.npz'}", "--out", t / "o"], "not found"),
    ("train npz without images", lambda t, T, S: ["teacher", "train", "--data", npz(t, y=np.arange(10)), "--out", t / "o"], "needs 'x' and 'y'"),
    ("train npz with NaN", lambda t, T, S: ["teacher", "train", "--data", npz(t, x=np.full((20, 4), np.nan, np.float32), y=np.arange(20) % 2), "--out", t / "o"], "NaN"),
    ("train npz empty", lambda t, T, S: ["teacher", "train", "--data", npz(t, x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64)), "--out", t / "o"], "no samples"),
    ("train npz one sample per class", lambda t, T, S: ["teacher", "train", "--data", npz(t, x=np.zeros((3, 4), np.float32), y=np.arange(3)), "--out", t / "o"], "at least 2 training samples"),
    ("train ensemble 0", lambda t, T, S: ["teacher", "train", "--ensemble", "0", "--out", t / "o"], "--ensemble"),
    ("train negative lr", lambda t, T, S: ["teacher", "train", "--lr", "-1", "--out", t / "o"], "'--lr'"),
    ("train negative width", lambda t, T, S: ["teacher", "train", "--arch", "cnn:width=-2", "--out", t / "o"], "must be > 0"),
    ("train bad hidden list", lambda t, T, S: ["teacher", "train", "--arch", "mlp:hidden=abc", "--out", t / "o"], "must look like 800-800"),
    ("train existing output", lambda t, T, S: ["teacher", "train", "--out", T], "already exists"),
    ("train output under a file", lambda t, T, S: ["teacher", "train", "--out", write(t, "f", "keep") / "b"], "is a file"),
    ("train config missing", lambda t, T, S: ["teacher", "train", "--config", t / "none.toml", "--out", t / "o"], "not found"),
    ("train config not TOML", lambda t, T, S: ["teacher", "train", "--config", write(t, "c.toml", "epochs = = 1"), "--out", t / "o"], "not valid TOML"),
    ("train config unknown key", lambda t, T, S: ["teacher", "train", "--config", write(t, "c.toml", "[teacher.train]\nepoks = 1\n"), "--out", t / "o"], "unknown option 'epoks'"),
    ("train resume nothing to resume", lambda t, T, S: ["teacher", "train", "--out", T, "--resume", "--epochs", "0"], "--epochs"),
    ("evaluate edited weights", lambda t, T, S: ["evaluate", corrupt_copy(S, t)], "sha256"),
    ("evaluate bad split", lambda t, T, S: ["evaluate", S, "--split", "holdout"], "'holdout' is not one of"),
    ("evaluate missing mnist", lambda t, T, S: ["evaluate", S, "--data", f"mnist:{t / 'mnist'}"], "Dataset 'mnist' not found"),
    ("evaluate unknown dataset", lambda t, T, S: ["evaluate", S, "--data", "imagenet"], "Unknown dataset 'imagenet'"),
    ("export not a model", lambda t, T, S: ["export", write(t, "x.bin", "x"), "--onnx", "--out", t / "o.onnx"], ""),
    ("export opset 11", lambda t, T, S: ["export", S, "--onnx", "--opset", "11", "--out", t / "o.onnx"], "opset"),
    ("export int8 without calibration", lambda t, T, S: ["export", S, "--onnx", "--quantize", "int8", "--out", t / "o.onnx"], "calibration"),
    ("export output folder missing", lambda t, T, S: ["export", S, "--onnx", "--out", t / "missing" / "o.onnx"], "does not exist"),
    ("bench model missing", lambda t, T, S: ["bench", "--model", t / "nope.onnx", "--out", t / "r"], ""),
    ("bench batch size 0", lambda t, T, S: ["bench", "--model", S, "--batch-sizes", "0", "--out", t / "r"], "batch"),
    ("specialists K too large", lambda t, T, S: ["specialists", "build", "--teacher", T, "--member", "0", "--clusters", "20", "--out", t / "o"], "20"),
    ("specialists ensemble teacher", lambda t, T, S: ["specialists", "build", "--teacher", T, "--out", t / "o"], "ensemble"),
    ("pipeline output is a file", lambda t, T, S: ["pipeline", "--out", write(t, "f", "keep me")], "is a file"),
    ("models bad input shape", lambda t, T, S: ["models", "--input-shape", "a,b"], "'input_shape' parameter"),
]


def _snapshot(*folders):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for f in folders for p in f.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_invocation(capsys, tmp_path, tiny_teacher, tiny_student, case):
    _, build, fragment = case
    args = [str(a) for a in build(tmp_path, tiny_teacher, tiny_student)]
    before = _snapshot(tiny_teacher, tiny_student, tmp_path)
    code = run_cli(cli, args)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert fragment in lines[0], lines[0]
    assert _snapshot(tiny_teacher, tiny_student, tmp_path) == before   # nothing overwritten, nothing written
    for path in tmp_path.iterdir():
        assert path in before, f"{path} was created"


def test_sweep_is_at_least_30_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)
