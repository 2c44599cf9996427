"""Hostile and careless inputs across every command: crafted artifacts, manifests,
checkpoints, data files, foreign models, options, TOML, output paths. Each case exits 2 with exactly
one line on stderr and no traceback, leaves every file that existed before byte-identical (sha256 of
the contents), and writes nothing."""

import hashlib
import json
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
    ("distill T = 0", lambda t, T, S: ["distill", "--teacher", T, "-T", "0", "--out", t / "o"], "'temperature' parameter (--temperature) must be > 0"),
    ("distill T not a number", lambda t, T, S: ["distill", "--teacher", T, "-T", "hot", "--out", t / "o"], "a number or 'auto'"),
    ("distill alpha < 0", lambda t, T, S: ["distill", "--teacher", T, "--alpha", "-0.1", "--out", t / "o"], "'alpha' parameter (--alpha) must be in [0, 1]"),
    ("distill epochs 0", lambda t, T, S: ["distill", "--teacher", T, "--epochs", "0", "--out", t / "o"], "--epochs"),
    ("distill transfer limit 0", lambda t, T, S: ["distill", "--teacher", T, "--transfer-limit", "0", "--out", t / "o"], "'transfer_limit' parameter (--transfer-limit) must be > 0"),
    ("distill transfer limit text", lambda t, T, S: ["distill", "--teacher", T, "--transfer-limit", "half", "--out", t / "o"], "count or a fraction"),
    ("distill omit unknown class", lambda t, T, S: ["distill", "--teacher", T, "--omit-classes", "12", "--out", t / "o"], "classes in [0, 9]. Got 12"),
    ("distill omit a class twice", lambda t, T, S: ["distill", "--teacher", T, "--omit-classes", "3,3", "--out", t / "o"], "each class once"),
    ("pipeline unknown student", lambda t, T, S: ["pipeline", "--student", "foo", "--out", t / "o"], "Unknown architecture 'foo'"),
    ("pipeline alpha 5", lambda t, T, S: ["pipeline", "--alpha", "5", "--out", t / "o"], "'alpha' parameter (--alpha) must be in [0, 1]"),
    ("pipeline cnn student on vectors", lambda t, T, S: ["pipeline", "--student", "cnn", "--data", npz(t, **images(shape=(64,))),
                                                         "--out", t / "o"], "needs image inputs"),
    ("distill unknown student", lambda t, T, S: ["distill", "--teacher", T, "--student", "vit", "--out", t / "o"], "Unknown architecture 'vit'"),
    ("distill cnn student on vectors", lambda t, T, S: ["distill", "--teacher", T, "--student", "cnn", "--out", t / "o", "--data",
                                                        npz(t, **images(shape=(64,)))], "needs image inputs"),
    ("distill class count mismatch", lambda t, T, S: ["distill", "--teacher", T, "--out", t / "o", "--data", npz(t, **images(classes=7))], "10 outputs but dataset"),
    ("distill input shape mismatch", lambda t, T, S: ["distill", "--teacher", T, "--out", t / "o", "--data", npz(t, **images(shape=(1, 10, 10)))], "takes inputs of shape"),
    ("train npz missing", lambda t, T, S: ["teacher", "train", "--data", f"npz:{t / 'none.npz'}", "--out", t / "o"], "not found"),
    ("train npz without images", lambda t, T, S: ["teacher", "train", "--data", npz(t, y=np.arange(10)), "--out", t / "o"], "needs 'x' and 'y'"),
    ("train npz with NaN", lambda t, T, S: ["teacher", "train", "--data", npz(t, x=np.full((20, 4), np.nan, np.float32), y=np.arange(20) % 2), "--out", t / "o"], "NaN"),
    ("train npz empty", lambda t, T, S: ["teacher", "train", "--data", npz(t, x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64)), "--out", t / "o"], "no samples"),
    ("train npz one sample per class", lambda t, T, S: ["teacher", "train", "--data", npz(t, x=np.zeros((3, 4), np.float32), y=np.arange(3)), "--out", t / "o"], "at least 3 samples when there is no test split"),
    ("train ensemble 0", lambda t, T, S: ["teacher", "train", "--ensemble", "0", "--out", t / "o"], "--ensemble"),
    ("train negative lr", lambda t, T, S: ["teacher", "train", "--lr", "-1", "--out", t / "o"], "'--lr'"),
    ("train negative width", lambda t, T, S: ["teacher", "train", "--arch", "cnn:width=-2", "--out", t / "o"], "must be > 0"),
    ("train bad hidden list", lambda t, T, S: ["teacher", "train", "--arch", "mlp:hidden=abc", "--out", t / "o"], "must look like 800-800"),
    ("train negative hidden width", lambda t, T, S: ["teacher", "train", "--arch", "mlp:hidden=-5", "--out", t / "o"], "must look like 800-800"),
    ("train signed hidden width", lambda t, T, S: ["teacher", "train", "--arch", "mlp:hidden=+5", "--out", t / "o"], "must look like 800-800"),
    ("train hidden list with a double dash", lambda t, T, S: ["teacher", "train", "--arch", "mlp:hidden=5--5", "--out", t / "o"], "must look like 800-800"),
    ("train existing output", lambda t, T, S: ["teacher", "train", "--out", T], "already exists"),
    ("train output under a file", lambda t, T, S: ["teacher", "train", "--out", write(t, "f", "keep") / "b"], "is a file"),
    ("train config missing", lambda t, T, S: ["teacher", "train", "--config", t / "none.toml", "--out", t / "o"], "not found"),
    ("train config not TOML", lambda t, T, S: ["teacher", "train", "--config", write(t, "c.toml", "epochs = = 1"), "--out", t / "o"], "not valid TOML"),
    ("distill config empty omit list", lambda t, T, S: ["distill", "--teacher", T, "--config", write(t, "c.toml", "omit_classes = []\n"), "--out", t / "o"], "'omit_classes' must list at least one number"),
    ("distill temperature grid of commas", lambda t, T, S: ["distill", "--teacher", T, "-T", "auto", "--temperature-grid", ",", "--out", t / "o"], "'temperature_grid' parameter (--temperature-grid) must be a comma-separated list"),
    ("synthetic default groups over classes", lambda t, T, S: ["teacher", "train", "--data", "synthetic:classes=5,dim=8", "--out", t / "o"], "Got 50 (the default) instead; pass groups=G"),
    ("train config unknown key", lambda t, T, S: ["teacher", "train", "--config", write(t, "c.toml", "[teacher.train]\nepoks = 1\n"), "--out", t / "o"], "unknown option 'epoks'"),
    ("train resume nothing to resume", lambda t, T, S: ["teacher", "train", "--out", T, "--resume"], "found no interrupted run to continue"),
    ("evaluate edited weights", lambda t, T, S: ["evaluate", corrupt_copy(S, t)], "sha256"),
    ("evaluate bad split", lambda t, T, S: ["evaluate", S, "--split", "holdout"], "'holdout' is not one of"),
    ("evaluate missing mnist", lambda t, T, S: ["evaluate", S, "--data", f"mnist:{t / 'mnist'}"], "Dataset 'mnist' not found"),
    ("evaluate unknown dataset", lambda t, T, S: ["evaluate", S, "--data", "imagenet"], "Unknown dataset 'imagenet'"),
    ("export not a model", lambda t, T, S: ["export", write(t, "x.bin", "x"), "--onnx", "--out", t / "o.onnx"], "is not an edgekd model"),
    ("export opset 11", lambda t, T, S: ["export", S, "--onnx", "--opset", "11", "--out", t / "o.onnx"], "opset"),
    ("export output folder missing", lambda t, T, S: ["export", S, "--onnx", "--out", t / "missing" / "o.onnx"], "does not exist"),
    ("export output names no file", lambda t, T, S: ["export", S, "--out", ""], "names no file; give a file name"),
    ("export offers no device", lambda t, T, S: ["export", S, "--device", "auto", "--out", t / "o.onnx"], "No such option"),
    ("bench model missing", lambda t, T, S: ["bench", "--model", t / "nope.onnx", "--out", t / "r"], "not found"),
    ("bench model not ONNX", lambda t, T, S: ["bench", "--model", write(t, "fake.onnx", "not a model"), "--out", t / "r"], "cannot be read"),
    ("bench model manifest a list", lambda t, T, S: ["bench", "--model", _manifest_list(t), "--out", t / "r"], "not an edgekd manifest"),
    ("bench model on data of other classes", lambda t, T, S: ["bench", "--model", S, "--data", npz(t, **images(classes=7)), "--out", t / "r"],
     "has 10 classes but dataset"),
    ("bench model on data of another shape", lambda t, T, S: ["bench", "--model", S, "--data", npz(t, **images(shape=(1, 10, 10))),
                                                              "--out", t / "r"], "takes inputs of shape"),
    ("bench batch size 0", lambda t, T, S: ["bench", "--model", S, "--batch-sizes", "0", "--out", t / "r"], "'batch_sizes' parameter"),
    ("specialists K too large", lambda t, T, S: ["specialists", "build", "--teacher", T, "--member", "0", "--clusters", "20", "--out", t / "o"], "in [2, 9] (fewer than the 10 classes: a specialist needs a cluster of two). Got 20"),
    ("specialists K equal to the classes", lambda t, T, S: ["specialists", "build", "--teacher", T, "--member", "0", "--clusters", "10", "--out", t / "o"], "in [2, 9]"),
    ("pipeline specialists on two classes", lambda t, T, S: ["pipeline", "--data", npz(t, **images(classes=2)), "--out", t / "o"], "Pass --skip specialists"),
    ("specialists ensemble teacher", lambda t, T, S: ["specialists", "build", "--teacher", T, "--out", t / "o"], "ensemble"),
    ("pipeline output is a file", lambda t, T, S: ["pipeline", "--out", write(t, "f", "keep me")], "is a file"),
    ("models bad input shape", lambda t, T, S: ["models", "--input-shape", "a,b"], "'input_shape' parameter"),
]


# --- crafted artifacts, checkpoints, data, foreign models, options, TOML, outputs ------------------------

def crafted(src, tmp, edit, name="crafted"):
    """A copy of the artifact ``src`` whose manifest is passed through ``edit`` (a dict -> dict function)."""
    dst = tmp / name
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    (dst / "manifest.json").write_text(json.dumps(edit(manifest)) if callable(edit) else edit)
    return dst


def rehashed(src, tmp, change):
    """A copy whose member-0 weights are changed by ``change(state)`` and whose manifest hash is recomputed
    (what a careful attacker does): only checks on the values themselves can catch it."""
    import torch  # noqa: F401
    from safetensors.torch import load_file, save_file

    dst = tmp / "rehashed"
    shutil.copytree(src, dst)
    weights = dst / "member-0.safetensors"
    state = change(load_file(str(weights)))
    if isinstance(state, bytes):
        weights.write_bytes(state)
    else:
        save_file(state, str(weights))
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"]["member-0.safetensors"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _set(**changes):
    def edit(manifest):
        for dotted, value in changes.items():
            node, *path = dotted.split("__")
            target = manifest
            for key in [node, *path][:-1]:
                target = target[int(key)] if isinstance(target, list) else target[key]
            last = [node, *path][-1]
            if value is _DELETE:
                del target[last]
            else:
                target[int(last) if isinstance(target, list) else last] = value
        return manifest
    return edit


_DELETE = object()

MANIFEST_EDITS = [
    ("classes an int", _set(classes=5), "class names"),
    ("classes empty", _set(classes=[]), "class names"),
    ("classes numbers", _set(classes=[1, 2]), "class names"),
    ("input shape negative", _set(input_shape=[-1, 8, 8]), "input_shape"),
    ("input shape huge", _set(input_shape=[1, 100000, 100000]), "input_shape"),
    ("input shape text", _set(input_shape="1,8,8"), "input_shape"),
    ("normalization missing std", _set(normalization={"mean": [0.0]}), "normalization"),
    ("normalization zero std", _set(normalization={"mean": [0.0], "std": [0.0]}), "normalization"),
    ("members empty", _set(members=[]), "members"),
    ("member not a table", _set(members=[5]), "member 0"),
    ("member without weights", _set(members__0__weights=_DELETE), "member 0"),
    ("member weights unlisted", _set(members__0__weights="other.safetensors"), "does not list"),
    ("member unknown arch", _set(members__0__arch="vit"), "Unknown architecture"),
    ("member unknown option", _set(members__0__options={"bogus": 1}), "Unknown option"),
    ("member huge width", _set(members__0__options={"hidden": [10 ** 9]}), "at most"),
    ("member num_outputs text", _set(members__0__num_outputs="ten"), "num_outputs"),
    ("files a list", _set(files=["member-0.safetensors"]), "'files'"),
    ("files hash a number", _set(files={"member-0.safetensors": 5}), "'files'"),
    ("files outside the folder", _set(files={"../x.safetensors": "0" * 64}), "outside the artifact folder"),
    ("format version from the future", _set(format_version=99), "newer than this edgekd"),
    ("config params text", _set(config__params="x"), "'config.params' that is not a table"),
    ("split seed text", _set(data__split_seed="abc"), "'data.split_seed' that is not an integer"),
    ("unknown kind", _set(kind="zoo"), "unknown kind"),
    ("not an edgekd manifest", _set(format="other"), "not an edgekd manifest"),
    ("manifest a list", lambda m: [m], "not an edgekd manifest"),
    ("manifest not JSON", "{not json", "corrupt"),
]
READERS = {   # how each command reads an artifact given as an argument
    "evaluate": lambda a, t: ["evaluate", a],
    "distill": lambda a, t: ["distill", "--teacher", a, "--student", "mlp:hidden=8", "--epochs", "1", "--out", t / "o"],
    "export": lambda a, t: ["export", a, "--out", t / "m.onnx"],
}

WEIGHT_EDITS = [
    ("weights of another shape", lambda s: {k: v[..., :1].clone() if v.dim() else v for k, v in s.items()}, "do not fit"),
    ("weights truncated", lambda s: b"\x08\x00\x00\x00\x00\x00\x00\x00{}", "cannot read"),
    ("weights missing a tensor", lambda s: dict(list(s.items())[1:]), "do not fit"),
]


def _nan_weights(s):
    return {k: v.fill_(float("nan")) if v.is_floating_point() and v.dim() == 2 else v for k, v in s.items()}


def onnx_model(tmp, kind):
    """A small foreign ONNX model on 64-value inputs: NaN outputs, batch-reduced outputs or a tuple of outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.full((64, 10), np.nan if kind == "nan" else 0.01, np.float32)
    nodes = [helper.make_node("MatMul", ["input", "W"], ["scores"])]
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10])]
    if kind == "reduced":
        nodes.append(helper.make_node("ReduceSum", ["scores", "axes"], ["out"], keepdims=1))
        outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 10])]
    inits = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(np.array([0], np.int64), "axes")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp / f"{kind}.onnx"
    onnx.save(model, str(path))
    return path


# the JSON half of a finished sub-run as a store writes it (its tensors need not exist until it is loaded)
DONE = {"tensors": "member-0.done.1-1.safetensors", "sha256": "0" * 64,
        "result": {"best_epoch": 1, "epochs_run": 1, "val_accuracy": 0.5, "val_nll": 1.0, "history": [], "seconds_per_epoch": 1.0}}


def store(tmp, files, name="o"):
    """A crafted run store ``<name>.partial`` holding ``files`` (name -> text)."""
    folder = tmp / f"{name}.partial"
    folder.mkdir()
    for file, text in files.items():
        (folder / file).write_text(text if isinstance(text, str) else json.dumps(text))
    return tmp / name


def misfit_checkpoint(tmp):
    """A run store whose checkpoint is intact (its sha256 matches) but holds tensors of other shapes."""
    import torch
    from safetensors.torch import save_file

    out = store(tmp, {})
    tensors = out.with_name("o.partial") / "member-0.ckpt.1-1.safetensors"
    save_file({"model.body.1.weight": torch.zeros(3, 3), "rng_state": torch.get_rng_state()}, str(tensors))
    position = {"epoch": 0, "batch": 1, "step": 1, "best_key": None, "best_epoch": -1, "stale": 0, "history": [],
                "train_seconds": 0.0, "epochs_timed": 0}
    (out.with_name("o.partial") / "member-0.ckpt.json").write_text(json.dumps({
        "tensors": tensors.name, "sha256": hashlib.sha256(tensors.read_bytes()).hexdigest(), "position": position,
        "optimizer": {"param_groups": [], "scalars": {}}}))
    return out


def user_folder(tmp, name="mine"):
    folder = tmp / name
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    return folder


def toml(tmp, text):
    return write(tmp, "c.toml", text)


TRAIN = ["teacher", "train", "--arch", "mlp:hidden=8", "--epochs", "1", "--quiet"]
DISTILL = ["distill", "--student", "mlp:hidden=8", "--epochs", "1", "--quiet"]
BUILD = ["specialists", "build", "--epochs", "1", "--quiet"]
LABEL_DATA = [   # (id, arrays, fragment)
    ("label 10^9", dict(x=np.zeros((40, 8, 8), np.float32), y=np.r_[np.arange(39) % 10, 10 ** 9]), "class indices in [0, 39]"),
    ("label 2^62 in y_test", dict(x=np.zeros((40, 8, 8), np.float32), y=np.arange(40) % 10, x_test=np.zeros((2, 8, 8), np.float32),
                                 y_test=np.array([0, 2 ** 62])), "'y_test' must hold class indices"),
    ("negative label", dict(x=np.zeros((40, 8, 8), np.float32), y=np.r_[np.arange(39) % 10, -1]), "class indices"),
    ("float labels 2.7", dict(x=np.zeros((40, 8, 8), np.float32), y=np.r_[np.arange(39) % 10, 2.7]), "whole class indices. Got 2.7 among"),
    ("NaN labels", dict(x=np.zeros((40, 8, 8), np.float32), y=np.r_[np.arange(39) % 10, np.nan]), "NaN or Inf labels"),
    ("labels 2-D", dict(x=np.zeros((40, 8, 8), np.float32), y=np.zeros((40, 2), np.int64)), "must be a vector"),
    ("labels text", dict(x=np.zeros((40, 8, 8), np.float32), y=np.array(["a"] * 40)), "integer class indices"),
    ("label beyond class_names", dict(x=np.zeros((40, 8, 8), np.float32), y=np.arange(40) % 10, class_names=np.array(["a", "b"])), "2 class_names"),
    ("class_names 2-D", dict(x=np.zeros((40, 8, 8), np.float32), y=np.arange(40) % 2, class_names=np.array([["a", "b"]])), "class_names"),
    ("inputs text", dict(x=np.array([["a"] * 4] * 40), y=np.arange(40) % 2), "numeric arrays"),
    ("inputs Inf", dict(x=np.full((40, 4), np.inf, np.float32), y=np.arange(40) % 2), "NaN or Inf"),
    ("x_test other shape", dict(x=np.zeros((40, 8, 8), np.float32), y=np.arange(40) % 10, x_test=np.zeros((2, 4, 4), np.float32),
                               y_test=np.array([0, 1])), "x_test has sample shape"),
]


def _label_cases():
    cases = []
    for name, arrays, fragment in LABEL_DATA:
        cases.append((f"train npz {name}", lambda t, T, S, a=arrays: [*TRAIN, "--data", npz(t, **a), "--out", t / "o"], fragment))
        cases.append((f"evaluate npz {name}", lambda t, T, S, a=arrays: ["evaluate", S, "--data", npz(t, **a)], fragment))
    cases.append(("train npz not a zip", lambda t, T, S: [*TRAIN, "--data", f"npz:{write(t, 'z.npz', 'not a zip')}", "--out", t / "o"], "is not an .npz archive (not a zip archive)"))
    cases.append(("distill npz not a zip", lambda t, T, S: [*DISTILL, "--teacher", T, "--data", f"npz:{write(t, 'z.npz', 'PK garbage')}", "--out", t / "o"], "not a readable .npz"))
    cases.append(("evaluate npz a folder", lambda t, T, S: ["evaluate", S, "--data", f"npz:{t}"], "is a folder; pass 'npz:FILE.npz'"))
    return cases


def _artifact_cases():
    cases = []
    for name, edit, fragment in MANIFEST_EDITS:
        for reader, argv in READERS.items():
            cases.append((f"{reader} manifest {name}", lambda t, T, S, e=edit, r=argv: r(crafted(S, t, e), t), fragment))
    for name, change, fragment in WEIGHT_EDITS:
        for reader, argv in READERS.items():
            cases.append((f"{reader} {name}", lambda t, T, S, c=change, r=argv: r(rehashed(S, t, c), t), fragment))
    for name, edit, fragment in MANIFEST_EDITS[:6]:
        cases.append((f"specialists build teacher manifest {name}",
                      lambda t, T, S, e=edit: [*BUILD, "--teacher", crafted(S, t, e), "--out", t / "o"], fragment))
    cases += [
        ("evaluate NaN weights", lambda t, T, S: ["evaluate", rehashed(S, t, _nan_weights)], "NaN or Inf outputs"),
        ("evaluate NaN teacher for agreement", lambda t, T, S: ["evaluate", S, "--teacher", rehashed(S, t, _nan_weights)], "NaN or Inf outputs"),
        ("distill NaN teacher", lambda t, T, S: [*DISTILL, "--teacher", rehashed(S, t, _nan_weights), "--out", t / "o", "--no-cache"], "NaN or Inf"),
        ("evaluate ONNX with NaN outputs", lambda t, T, S: ["evaluate", onnx_model(t, "nan")], "NaN or Inf outputs"),
        ("evaluate ONNX with batch-reduced outputs", lambda t, T, S: ["evaluate", onnx_model(t, "reduced")], "one row of class scores per input"),
        ("distill ONNX with NaN outputs", lambda t, T, S: [*DISTILL, "--teacher", onnx_model(t, "nan"), "--out", t / "o", "--no-cache"], "NaN or Inf"),
        ("evaluate ONNX that is text", lambda t, T, S: ["evaluate", write(t, "m.onnx", "not onnx")], "not a loadable ONNX model"),
        ("distill ONNX that is text", lambda t, T, S: [*DISTILL, "--teacher", write(t, "m.onnx", "x"), "--out", t / "o"], "not a loadable ONNX model"),
        ("evaluate TorchScript that is text", lambda t, T, S: ["evaluate", write(t, "m.pt", "not torchscript")], "not a loadable TorchScript"),
        ("distill TorchScript that is text", lambda t, T, S: [*DISTILL, "--teacher", write(t, "m.pt", "x"), "--out", t / "o"], "not a loadable TorchScript"),
        ("specialists build ONNX generalist", lambda t, T, S: [*BUILD, "--teacher", write(t, "m.onnx", "x"), "--out", t / "o"], "one edgekd model"),
        ("regate a model artifact", lambda t, T, S: ["specialists", "regate", S, "--out", t / "o"], "pass one written by"),
        ("regate missing", lambda t, T, S: ["specialists", "regate", t / "none", "--out", t / "o"], "no such folder"),
        ("regate crafted manifest", lambda t, T, S: ["specialists", "regate", crafted(S, t, _set(kind="zoo")), "--out", t / "o"], "unknown kind"),
    ]
    return cases


def _checkpoint_cases():
    ckpt_ok = {"sha256": "0" * 64, "tensors": "member-0.ckpt.1-1.safetensors"}
    cases = [
        ("resume checkpoint not JSON", lambda t, T, S: [*TRAIN, "--resume", "--out", store(t, {"member-0.ckpt.json": "{"})], "is corrupt"),
        ("resume checkpoint a list", lambda t, T, S: [*TRAIN, "--resume", "--out", store(t, {"member-0.ckpt.json": [1]})], "is corrupt"),
        ("resume checkpoint position text", lambda t, T, S: [*TRAIN, "--resume", "--out", store(t, {"member-0.ckpt.json": {
            **ckpt_ok, "position": "start", "optimizer": {}}})], "is corrupt"),
        ("resume checkpoint negative epoch", lambda t, T, S: [*TRAIN, "--resume", "--out", store(t, {"member-0.ckpt.json": {
            **ckpt_ok, "position": {"epoch": -1, "batch": 0, "step": 0, "best_epoch": -1, "stale": 0, "history": [],
                                    "train_seconds": 0.0, "epochs_timed": 0}, "optimizer": {"param_groups": [], "scalars": {}}}})],
         "is corrupt"),
        ("resume checkpoint tensors missing", lambda t, T, S: [*TRAIN, "--resume", "--out", store(t, {"member-0.ckpt.json": {
            **ckpt_ok, "position": {"epoch": 0, "batch": 0, "step": 0, "best_epoch": -1, "stale": 0, "history": [],
                                    "train_seconds": 0.0, "epochs_timed": 0}, "optimizer": {"param_groups": [], "scalars": {}}}})],
         "missing or fails its sha256"),
        ("resume finished member with extra result key", lambda t, T, S: [*TRAIN, "--resume", "--out", store(t, {"member-0.done.json": {
            **ckpt_ok, "result": {"best_epoch": 1, "epochs_run": 1, "val_accuracy": 1.0, "val_nll": 0.0, "history": [],
                                  "seconds_per_epoch": 1.0, "evil": 1}}})], "is corrupt"),
        ("resume finished member result text", lambda t, T, S: [*TRAIN, "--resume", "--out", store(t, {"member-0.done.json": {
            **ckpt_ok, "result": "done"}})], "is corrupt"),
        ("resume under another config", lambda t, T, S: [*TRAIN, "--resume", "--out", store(t, {
            "run.json": {"fingerprint": {"config": {"epochs": 99}, "data": "x"}}, "member-0.done.json": DONE})], "'epochs' was 99, now 1"),
        ("resume under another train limit", lambda t, T, S: [*TRAIN, "--resume", "--train-limit", "300", "--out", store(t, {
            "run.json": {"fingerprint": {"config": {"train_limit": None}, "data": "x"}}, "member-0.done.json": DONE})], "'train_limit' was None, now 300"),
        ("distill resume under another teacher", lambda t, T, S: [*DISTILL, "--teacher", T, "--resume", "--out", store(t, {
            "run.json": {"fingerprint": {"config": {}, "data": "x", "teacher": "y"}}, "student.done.json": DONE})], "the teacher (its weights, or --combine"),
        ("run store with user files", lambda t, T, S: [*TRAIN, "--resume", "--out", store(t, {"notes.txt": "mine"})], "did not write"),
        ("run store is a file", lambda t, T, S: [*TRAIN, "--out", t / "o"] if write(t, "o.partial", "x") else [], "is not a folder"),
        ("interrupted run without --resume", lambda t, T, S: [*TRAIN, "--out", store(t, {
            "run.json": {"fingerprint": {"config": {}, "data": "x"}}, "member-0.done.json": DONE})], "--resume"),
        ("resume checkpoint of other shapes", lambda t, T, S: [*TRAIN, "--resume", "--out", misfit_checkpoint(t)],
         "does not fit this model"),
        ("specialists resume corrupt clusters", lambda t, T, S: [*BUILD, "--teacher", S, "--resume", "--out", store(t, {
            "run.json": {"fingerprint": {}}, "clusters.json": "[", "specialist-0.ckpt.json": "{}"})], "corrupt"),
    ]
    return cases


def _option_cases():
    return [
        ("train seed 1e23", lambda t, T, S: [*TRAIN, "--seed", "1e23", "--out", t / "o"], "--seed"),
        ("train seed 2^40", lambda t, T, S: [*TRAIN, "--seed", str(2 ** 40), "--out", t / "o"], "--seed"),
        ("distill seed negative", lambda t, T, S: [*DISTILL, "--teacher", T, "--seed", "-1", "--out", t / "o"], "--seed"),
        ("train lr 1e308", lambda t, T, S: [*TRAIN, "--lr", "1e308", "--out", t / "o"], "--lr"),
        ("train lr inf", lambda t, T, S: [*TRAIN, "--lr", "inf", "--out", t / "o"], "--lr"),
        ("train lr nan", lambda t, T, S: [*TRAIN, "--lr", "nan", "--out", t / "o"], "'lr' parameter"),
        ("distill lr 1e308", lambda t, T, S: [*DISTILL, "--teacher", T, "--lr", "1e308", "--out", t / "o"], "--lr"),
        ("train weight decay 1e300", lambda t, T, S: [*TRAIN, "--weight-decay", "1e300", "--out", t / "o"], "--weight-decay"),
        ("train jitter 3000 on 8x8", lambda t, T, S: [*TRAIN, "--arch", "cnn:width=4,fc=16", "--jitter", "3000", "--out", t / "o"], "'jitter' parameter"),
        ("train jitter 8 on 8x8", lambda t, T, S: [*TRAIN, "--jitter", "8", "--out", t / "o"], "'jitter' parameter"),
        ("distill jitter 3000 on 8x8", lambda t, T, S: [*DISTILL, "--teacher", T, "--jitter", "3000", "--out", t / "o"], "'jitter' parameter"),
        ("specialists jitter 3000", lambda t, T, S: [*BUILD, "--teacher", S, "--jitter", "3000", "--out", t / "o"], "'jitter' parameter"),
        ("pipeline jitter 3000", lambda t, T, S: ["pipeline", "--jitter", "3000", "--out", t / "o"], "'jitter' parameter"),
        ("pipeline student jitter 8", lambda t, T, S: ["pipeline", "--student-jitter", "8", "--out", t / "o"], "'student_jitter' parameter (--student-jitter)"),
        ("distill baseline jitter without --baseline", lambda t, T, S: [*DISTILL, "--teacher", T, "--baseline-jitter", "1", "--out", t / "o"], "--baseline-jitter applies only with --baseline"),
        ("distill dkd beta with kd-ls", lambda t, T, S: [*DISTILL, "--teacher", T, "--dkd-beta", "3", "--out", t / "o"], "--dkd-beta applies only with --method dkd"),
        ("distill auto epochs with fixed T and alpha", lambda t, T, S: [*DISTILL, "--teacher", T, "--auto-epochs", "3", "--out", t / "o"], "--auto-epochs applies only with --temperature auto"),
        ("distill refresh cache with no cache", lambda t, T, S: [*DISTILL, "--teacher", T, "--no-cache", "--refresh-cache", "--out", t / "o"], "--refresh-cache applies only without --no-cache"),
        ("distill teacher scale with an artifact", lambda t, T, S: [*DISTILL, "--teacher", T, "--teacher-scale", "2", "--out", t / "o"], "--teacher-scale applies only with a model file: .onnx, .pt2 or TorchScript"),
        ("evaluate teacher output with an artifact", lambda t, T, S: ["evaluate", S, "--teacher-output", "y"], "--teacher-output applies only with an .onnx model"),
        ("export calibration data without int8", lambda t, T, S: ["export", S, "--calibration-data", "digits", "--out", t / "m.onnx"], "--calibration-data applies only with --quantize int8"),
        ("export batch size for ONNX", lambda t, T, S: ["export", S, "--batch-size", "8", "--out", t / "m.onnx"], "--batch-size applies only with --executorch"),
        ("train resume and overwrite", lambda t, T, S: [*TRAIN, "--resume", "--overwrite", "--out", t / "o"], "pass one of them. Got both"),
        ("distill resume and overwrite", lambda t, T, S: [*DISTILL, "--teacher", T, "--resume", "--overwrite", "--out", t / "o"], "pass one of them. Got both"),
        ("specialists resume and overwrite", lambda t, T, S: [*BUILD, "--teacher", S, "--resume", "--overwrite", "--out", t / "o"], "pass one of them. Got both"),
        ("train arch option twice", lambda t, T, S: [*TRAIN, "--arch", "mlp:hidden=10,hidden=20", "--out", t / "o"], "'hidden' of architecture 'mlp' is given twice"),
        ("train arch option without a value", lambda t, T, S: [*TRAIN, "--arch", "cnn:width", "--out", t / "o"], "must look like key=value"),
        ("cluster temperature inf", lambda t, T, S: ["specialists", "cluster", "--teacher", S, "--cluster-temperature", "inf"], "'cluster_temperature' parameter"),
        ("evaluate with a seed", lambda t, T, S: ["evaluate", S, "--seed", "7"], "--seed applies only to commands that draw at random"),
        ("regate with a seed", lambda t, T, S: ["specialists", "regate", S, "--seed", "9", "--out", t / "o"], "--seed applies only to commands that draw at random"),
        ("bench with a seed", lambda t, T, S: ["bench", "--model", S, "--seed", "1", "--out", t / "o"], "--seed applies only to commands that draw at random"),
        ("bench --from with measuring options", lambda t, T, S: ["bench", "--from", write(t, "r.json", "{}"), "--seconds", "9"], "--seconds applies only when measuring"),
        ("synthetic sep 1e300", lambda t, T, S: [*TRAIN, "--data", "synthetic:classes=3,groups=1,dim=4,sep=1e300", "--arch", "mlp:hidden=8", "--out", t / "o"], "spread=F (0..1e+06)"),
        ("train image size twice", lambda t, T, S: [*TRAIN, "--data", f"imagefolder:{t},size=4x4", "--image-size", "6x6", "--out", t.parent / f"{t.name}-o"], "--image-size sets what 'size=' in --data"),
        ("train jitter on vectors", lambda t, T, S: ["teacher", "train", "--data", "synthetic:classes=3,groups=1,dim=4", "--arch", "mlp:hidden=8", "--jitter", "2", "--epochs", "1", "--out", t / "o"], "'jitter' parameter (--jitter) shifts images, but the inputs have shape (4,)"),
        ("train combine one member", lambda t, T, S: [*TRAIN, "--ensemble", "1", "--combine", "probs", "--out", t / "o"], "--combine applies only with --ensemble 2 or more"),
        ("distill method without a soft term", lambda t, T, S: [*DISTILL, "--teacher", T, "--alpha", "0", "--method", "dkd", "--out", t / "o"], "--method applies only with a soft term"),
        ("specialists no cache with a cache dir", lambda t, T, S: ["specialists", "build", "--teacher", T, "--no-cache", "--cache-dir", t / "c", "--out", t / "o"], "--cache-dir applies only without --no-cache"),
        ("distill temperature at alpha 0", lambda t, T, S: [*DISTILL, "--teacher", T, "--alpha", "0", "--temperature", "4", "--out", t / "o"], "--temperature applies only with a soft term"),
        ("distill temperature auto at alpha 0", lambda t, T, S: [*DISTILL, "--teacher", T, "--alpha", "0", "--temperature", "auto", "--out", t / "o"], "alpha=0 leaves out"),
        ("distill a million views", lambda t, T, S: [*DISTILL, "--teacher", T, "--jitter", "1", "--views", "1000000", "--out", t / "o"], "jitter 1 has only 9 distinct ones"),
        ("distill one view", lambda t, T, S: [*DISTILL, "--teacher", T, "--jitter", "2", "--views", "1", "--out", t / "o"], "views=1 would train without augmentation"),
        ("distill transfer limit below the classes", lambda t, T, S: [*DISTILL, "--teacher", T, "--transfer-limit", "5", "--out", t / "o"], "at least one sample of each of the 10 classes"),
        ("distill views without jitter", lambda t, T, S: [*DISTILL, "--teacher", T, "--views", "4", "--out", t / "o"], "pass --jitter N or --flip"),
        ("distill all views without jitter", lambda t, T, S: [*DISTILL, "--teacher", T, "--views", "all", "--out", t / "o"],
         "Got views=all instead; pass --jitter N or --flip"),
        ("distill T grid with a fixed T", lambda t, T, S: [*DISTILL, "--teacher", T, "--temperature-grid", "1,2", "--out", t / "o"], "pass --temperature auto"),
        ("distill alpha grid with a fixed alpha", lambda t, T, S: [*DISTILL, "--teacher", T, "--alpha", "0.7", "--alpha-grid", "0.5", "--out", t / "o"], "pass --alpha auto"),
        ("specialists top-n 11 of 10 classes", lambda t, T, S: [*BUILD, "--teacher", S, "--top-n", "11", "--out", t / "o"], "'top_n' parameter (--top-n) must be in [1, 10]"),
        ("train cnn width 1e20", lambda t, T, S: [*TRAIN, "--arch", "cnn:width=1e20", "--out", t / "o"], "width"),
        ("train cnn width 10^6", lambda t, T, S: [*TRAIN, "--arch", "cnn:width=1000000", "--out", t / "o"], "at most 4096"),
        ("train mlp hidden 10^9", lambda t, T, S: [*TRAIN, "--arch", "mlp:hidden=1000000000", "--out", t / "o"], "at most"),
        ("train mlp 100 layers", lambda t, T, S: [*TRAIN, "--arch", "mlp:hidden=" + "-".join(["8"] * 100), "--out", t / "o"], "at most 64"),
        ("train dsconv width 1e20", lambda t, T, S: [*TRAIN, "--arch", "dsconv:width=1e20", "--out", t / "o"], "at most 64"),
        ("train wrn width 4096", lambda t, T, S: [*TRAIN, "--arch", "wrn:width=4096", "--out", t / "o"], "Option 'width' of 'wrn' must be at most 16"),
        ("train mobilenetv2 width 4000", lambda t, T, S: [*TRAIN, "--arch", "mobilenetv2:width=4000", "--out", t / "o"], "must be at most 16"),
        ("train resnet depth 10^6", lambda t, T, S: [*TRAIN, "--arch", "resnet:depth=1000004", "--out", t / "o"], "must be at most 1202"),
        ("train dsconv width nan", lambda t, T, S: [*TRAIN, "--arch", "dsconv:width=nan", "--out", t / "o"], "finite"),
        ("distill student width 10^6", lambda t, T, S: [*DISTILL, "--teacher", T, "--student", "cnn:width=1000000", "--out", t / "o"], "at most 4096"),
        ("distill T inf", lambda t, T, S: [*DISTILL, "--teacher", T, "-T", "inf", "--out", t / "o"], "temperature"),
        ("distill alpha nan", lambda t, T, S: [*DISTILL, "--teacher", T, "--alpha", "nan", "--out", t / "o"], "alpha"),
        ("bench threads 100000", lambda t, T, S: ["bench", "--model", S, "--threads", "100000", "--out", t / "r"], "'threads' parameter"),
        ("bench batch 10^9", lambda t, T, S: ["bench", "--model", S, "--batch-sizes", "1000000000", "--out", t / "r"], "'batch_sizes' parameter (--batch-sizes)"),
        ("bench model without a path", lambda t, T, S: ["bench", "--model", "x=", "--out", t / "r"], "--model 'x=' names a model but gives no path"),
        ("bench same model twice", lambda t, T, S: ["bench", "--model", S, "--model", S, "--out", t / "r"], "is given twice"),
        ("bench threads negative", lambda t, T, S: ["bench", "--model", S, "--threads", "-1", "--out", t / "r"], "'threads' parameter"),
        ("bench seconds 0", lambda t, T, S: ["bench", "--model", S, "--seconds", "0", "--out", t / "r"], "--seconds"),
        ("export atol 0", lambda t, T, S: ["export", S, "--atol", "0", "--out", t / "m.onnx"], "'atol' parameter"),
        ("export calibration size 0", lambda t, T, S: ["export", S, "--quantize", "int8", "--calibration-size", "0", "--out", t / "m.onnx"], "calibration_size"),
        ("export uint8 input on fractional pixels", lambda t, T, S: ["export", S, "--uint8-input", "--data", npz(t, **images()),
                                                                   "--out", t / "m.onnx"], "--uint8-input needs whole pixel values in 0..255"),
        ("export wrong suffix", lambda t, T, S: ["export", S, "--out", t / "m.bin"], "must end in .onnx"),
        ("export val fraction 2", lambda t, T, S: ["export", S, "--val-fraction", "2", "--out", t / "m.onnx"], "val_fraction"),
        ("train val fraction 0.9", lambda t, T, S: [*TRAIN, "--val-fraction", "0.9", "--out", t / "o"], "--val-fraction"),
        ("train limit 3 for 10 classes", lambda t, T, S: [*TRAIN, "--train-limit", "3", "--out", t / "o"], "at least the number of classes"),
        ("cluster K = 1", lambda t, T, S: ["specialists", "cluster", "--teacher", S, "--clusters", "1"], "clusters"),
        ("cluster temperature 0", lambda t, T, S: ["specialists", "cluster", "--teacher", S, "--cluster-temperature", "0"], "--cluster-temperature"),
        ("specialists special fraction 1", lambda t, T, S: [*BUILD, "--teacher", S, "--special-fraction", "1", "--out", t / "o"], "--special-fraction"),
        ("models input shape negative", lambda t, T, S: ["models", "--input-shape", "1,-8,8"], "'input_shape' parameter"),
    ]


def _toml_cases():
    return [
        ("toml top-level typo", lambda t, T, S: [*TRAIN, "--config", toml(t, "epoch = 1\n"), "--out", t / "o"], "'epoch', which is no option"),
        ("toml epochs 1.9", lambda t, T, S: ["teacher", "train", "--config", toml(t, "epochs = 1.9\n"), "--out", t / "o"], "'epochs' must be an integer"),
        ("toml epochs text", lambda t, T, S: ["teacher", "train", "--config", toml(t, "epochs = '1'\n"), "--out", t / "o"], "'epochs' must be an integer"),
        ("toml temperature -1 (a number)", lambda t, T, S: [*DISTILL, "--teacher", T, "--config", toml(t, "temperature = -1\n"), "--out", t / "o"], "'temperature' parameter (--temperature) must be > 0"),
        ("toml teacher = 5", lambda t, T, S: ["distill", "--config", toml(t, "teacher = 5\n"), "--out", t / "o"], "'teacher' must be text"),
        ("toml teacher = 5 for teacher train", lambda t, T, S: ["teacher", "train", "--config", toml(t, "teacher = 5\nepochs = 1.5\n"), "--out", t / "o"], "'epochs' must be an integer"),
        ("toml unknown table", lambda t, T, S: [*TRAIN, "--config", toml(t, "[trainer]\nepochs = 1\n"), "--out", t / "o"], "table [trainer], which no edgekd command reads; tables here: [bench]"),
        ("toml table out of place", lambda t, T, S: [*TRAIN, "--config", toml(t, "[train]\narch = 'nosuch'\n"), "--out", t / "o"], "did you mean [teacher.train]?"),
        ("toml list option", lambda t, T, S: ["bench", "--config", toml(t, "[bench]\nmodel = ['nowhere']\n"), "--out", t / "o"], "Model 'nowhere' not found"),
        ("toml seed float", lambda t, T, S: [*TRAIN, "--config", toml(t, "seed = 1e23\n"), "--out", t / "o"], "'seed' must be an integer"),
        ("toml seed too big", lambda t, T, S: [*TRAIN, "--config", toml(t, "seed = 100000000000\n"), "--out", t / "o"], "Invalid value for '--seed'"),
        ("toml lr text", lambda t, T, S: [*TRAIN, "--config", toml(t, "lr = 'fast'\n"), "--out", t / "o"], "'lr' must be a number"),
        ("toml lr too big", lambda t, T, S: [*TRAIN, "--config", toml(t, "lr = 1e308\n"), "--out", t / "o"], "Invalid value for '--lr'"),
        ("toml flag a string", lambda t, T, S: [*DISTILL, "--teacher", T, "--config", toml(t, "baseline = 'yes'\n"), "--out", t / "o"], "true or false"),
        ("toml overwrite a string", lambda t, T, S: [*TRAIN, "--config", toml(t, "overwrite = 1\n"), "--out", t / "o"], "true or false"),
        ("toml skip not a list", lambda t, T, S: ["pipeline", "--config", toml(t, "skip = 'bench'\n"), "--out", t / "o"], "must be a list"),
        ("toml command table typo", lambda t, T, S: [*TRAIN, "--config", toml(t, "[teacher.train]\nepoch = 1\n"), "--out", t / "o"], "unknown option 'epoch'"),
        ("toml a folder", lambda t, T, S: [*TRAIN, "--config", t, "--out", t / "o"], "--config"),
        ("toml not UTF-8", lambda t, T, S: [*TRAIN, "--config", _binary(t), "--out", t / "o"], "not valid TOML"),
    ]


def _binary(t):
    (t / "b.toml").write_bytes(b"\xff\xfe epochs = 1")
    return t / "b.toml"


def _output_cases():
    return [
        ("train --resume into a user folder", lambda t, T, S: [*TRAIN, "--resume", "--out", user_folder(t)], "--resume found no interrupted run"),
        ("train --overwrite a user folder", lambda t, T, S: [*TRAIN, "--overwrite", "--out", user_folder(t)], "is not an edgekd artifact folder"),
        ("train --overwrite the IDX data folder", lambda t, T, S: [*TRAIN, "--data", f"mnist:{user_folder(t, 'idx')}", "--overwrite",
                                                                   "--out", t / "idx"], "an input of this command"),
        ("train --overwrite the npz's folder", lambda t, T, S: [*TRAIN, "--data", npz(t, **images()), "--overwrite", "--out", t], "contains"),
        ("distill --out the teacher", lambda t, T, S: [*DISTILL, "--teacher", T, "--overwrite", "--out", T], "an input of this command"),
        ("distill --out the teacher's parent", lambda t, T, S: [*DISTILL, "--teacher", T, "--overwrite", "--out", T.parent], "contains"),
        ("distill --overwrite a symlink", lambda t, T, S: [*DISTILL, "--teacher", T, "--overwrite", "--out", _link(t)], "symbolic link"),
        ("distill --overwrite an artifact with user files", lambda t, T, S: [*DISTILL, "--teacher", T, "--overwrite", "--out",
                                                                           _with_notes(S, t)], "notes.txt"),
        ("specialists --out the generalist", lambda t, T, S: [*BUILD, "--teacher", S, "--overwrite", "--out", S], "an input of this command"),
        ("regate --overwrite a user folder", lambda t, T, S: ["specialists", "regate", S, "--overwrite", "--out", user_folder(t)], "is not an edgekd"),
        ("export --overwrite a user file", lambda t, T, S: ["export", S, "--overwrite", "--out", write(t, "m.onnx", "mine")], "was not written by 'edgekd export'"),
        ("export --overwrite a user's json at the summary path", lambda t, T, S: ["export", S, "--overwrite", "--out",
            t / "u.onnx"] if write(t, "u.onnx.json", "{}") else [], "(it is not an edgekd export summary)"),
        ("export summary path is a folder", lambda t, T, S: ["export", S, "--overwrite", "--out", _summary_folder(t)], "not a plain file"),
        ("export over a listed file", lambda t, T, S: ["export", _with_onnx_listed(S, t), "--overwrite", "--out", t / "withonnx" / "m.onnx"],
         "of the artifact"),
        ("export --out a symlink", lambda t, T, S: ["export", S, "--out", _file_link(t)], "symbolic link"),
        ("bench --overwrite a user folder", lambda t, T, S: ["bench", "--model", S, "--overwrite", "--out", user_folder(t)], "not an edgekd benchmark report"),
        ("bench --out the model", lambda t, T, S: ["bench", "--model", S, "--overwrite", "--out", S], "an input of this command"),
        ("bench --from into a user folder", lambda t, T, S: ["bench", "--from", _report(t), "--out", user_folder(t)], "already exists"),
        ("bench --from --overwrite a user folder", lambda t, T, S: ["bench", "--from", _report(t), "--overwrite", "--out", user_folder(t)], "not an edgekd benchmark report"),
        ("bench --from not a report", lambda t, T, S: ["bench", "--from", write(t, "report.json", "{}")], "not an edgekd benchmark report"),
        ("bench --from not JSON", lambda t, T, S: ["bench", "--from", write(t, "report.json", "{")], "not valid JSON"),
        ("bench --from a report it cannot render", lambda t, T, S: ["bench", "--from", _report(t), "--out", t / "again"],
         "cannot be rendered (KeyError"),
        ("bench --from into the folder of another name", lambda t, T, S: ["bench", "--from", _report(t, "mine.json")], "not named report.json"),
        ("pipeline --overwrite a user folder", lambda t, T, S: ["pipeline", "--overwrite", "--out", user_folder(t)], "not an edgekd pipeline folder"),
        ("pipeline --overwrite user files in teacher/", lambda t, T, S: ["pipeline", "--overwrite", "--out", _pipeline_with_user_teacher(t)], "teacher"),
        ("pipeline --resume a user folder", lambda t, T, S: ["pipeline", "--resume", "--out", user_folder(t)], "not an edgekd pipeline folder"),
        ("pipeline --resume stages of unknown settings", lambda t, T, S: ["pipeline", "--resume", "--out", _pipeline_with_teacher(t, T)],
         "has no pipeline.json"),
        ("pipeline --resume an unreadable record", lambda t, T, S: ["pipeline", "--resume", "--out", _pipeline_with_teacher(t, T, "{")],
         "did not write as part of it (pipeline.json)"),   # an unreadable pipeline.json may be the user's: kept
        ("train --out a file", lambda t, T, S: [*TRAIN, "--overwrite", "--out", write(t, "f", "keep")], "is a file"),
        ("locked output", lambda t, T, S: _locked([*TRAIN, "--out", t / "o"], t / "o"), "Another edgekd command is writing"),
    ]


def _link(t):
    target = user_folder(t)
    (t / "link").symlink_to(target)
    return t / "link"


def _file_link(t):
    (t / "real.onnx").write_text("mine")
    (t / "m.onnx").symlink_to(t / "real.onnx")
    return t / "m.onnx"


def _with_notes(S, t):
    dst = t / "student-copy"
    shutil.copytree(S, dst)
    (dst / "notes.txt").write_text("my notes")
    return dst


def _summary_folder(t):
    (t / "m.onnx.json").mkdir()
    (t / "m.onnx.json" / "keep.txt").write_text("mine")
    return t / "m.onnx"


def _with_onnx_listed(S, t):
    dst = t / "withonnx"
    shutil.copytree(S, dst)
    (dst / "m.onnx").write_text("listed")
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"]["m.onnx"] = hashlib.sha256(b"listed").hexdigest()
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _report(t, name="report.json"):
    folder = t / "reports"
    folder.mkdir()
    (folder / name).write_text(json.dumps({"format": "edgekd.bench", "rows": []}))
    return folder / name


def _manifest_list(t):
    (t / "m").mkdir()
    (t / "m" / "manifest.json").write_text("[1, 2]")
    return t / "m"


def _pipeline_with_teacher(t, T, record=None):
    """A pipeline folder whose teacher stage is finished, with ``record`` as its pipeline.json (none if None)."""
    out = t / "demo"
    out.mkdir()
    shutil.copytree(T, out / "teacher")
    if record is not None:
        (out / "pipeline.json").write_text(record if isinstance(record, str) else json.dumps(record))
    return out


def _pipeline_with_user_teacher(t):
    out = t / "demo"
    (out / "teacher").mkdir(parents=True)
    (out / "teacher" / "notes.txt").write_text("mine")
    return out


_HELD_LOCKS = []


def _locked(argv, out):
    """Hold the output's lock as a concurrent writer would (released when the test process moves on)."""
    import fcntl

    handle = open(out.parent / f".{out.name}.edgekd-lock", "w")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _HELD_LOCKS.append(handle)
    return argv


EXTRA_CASES = _label_cases() + _artifact_cases() + _checkpoint_cases() + _option_cases() + _toml_cases() + _output_cases()


def _snapshot(*folders):
    """sha256 of the contents of every file (and the set of folders) under ``folders``."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for f in folders for p in sorted(f.rglob("*"))}


CASES = CASES + EXTRA_CASES


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_invocation(capsys, tmp_path, tiny_teacher, tiny_student, case):
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
    assert _snapshot(tiny_teacher, tiny_student, tmp_path) == before   # nothing changed, nothing written


def test_sweep_is_at_least_150_cases():
    assert len(CASES) >= 150 and len({c[0] for c in CASES}) == len(CASES)
