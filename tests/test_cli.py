"""The spine through the command line: end to end on digits, and bad inputs (exit 2, one line)."""

import json

import numpy as np
import pytest
import torch



def test_help_is_instant_and_lists_commands(edgekd):
    code, out, _ = edgekd("--help")
    assert code == 0 and "distill" in out and "teacher" in out


def test_models_lists_registry(edgekd):
    code, out, _ = edgekd("models", "--json")
    names = {row["name"] for row in json.loads(out)}
    assert {"mlp", "cnn", "dsconv"} <= names


def test_models_counts_a_huge_input_without_building_it(edgekd):
    """The shapes are followed on the meta device: 3x4096x4096 asked for a 68 GB allocation, and 3x512x512
    took 51 s and 2.8 GB; the counts are the ones a real model gives."""
    code, out, err = edgekd("models", "--json", "--input-shape", "3,4096,4096")
    assert code == 0, err
    mlp = next(row for row in json.loads(out) if row["name"] == "mlp")
    assert mlp["parameters"] == 3 * 4096 * 4096 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
    code, out, _ = edgekd("models", "--json", "--input-shape", "1,28,28")
    from edgekd.models import count_macs, count_parameters, create_model

    real = create_model("dsconv", (1, 28, 28), 10)
    row = next(row for row in json.loads(out) if row["name"] == "dsconv")
    assert (row["parameters"], row["macs"]) == (count_parameters(real), count_macs(real, (1, 28, 28)))


def test_end_to_end_teacher_distill_evaluate(edgekd, tmp_path):
    teacher, student = tmp_path / "runs" / "teacher", tmp_path / "student"  # missing parent folders are created
    code, out, err = edgekd("teacher", "train", "--arch", "cnn:width=4,fc=16", "--ensemble", "2", "--epochs", "2",
                         "--out", teacher, "--quiet")
    assert code == 0, err
    assert "member 1 (seed 1)" in out and "ensemble of 2" in out
    code, out, err = edgekd("distill", "--teacher", teacher, "--student", "mlp:hidden=16", "--epochs", "2",
                         "--temperature", "auto", "--temperature-grid", "2,8", "--alpha", "0.9", "--baseline",
                         "--out", student, "--quiet")
    assert code == 0, err
    assert "chose T=" in out and "student, hard labels" in out and "student, distilled" in out
    assert "student recipe chosen on val" in out and "recipes not kept, trained apart: student" in out
    assert "(tried kd-ls, jitter 2 on consistent views; kd, jitter 0; kd-ls, jitter 0)" in out
    code, out, err = edgekd("evaluate", student, "--teacher", teacher, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {"accuracy", "nll", "ece", "n", "per_class_accuracy", "agreement"} <= set(result)
    assert result["n"] == 359 and 0 <= result["agreement"] <= 1
    manifest = json.loads((student / "manifest.json").read_text())
    assert manifest["config"]["params"]["student"] == "mlp:hidden=16"  # the resolved config travels


def test_config_file_supplies_defaults_and_flags_override(edgekd, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('epochs = 1\n[teacher.train]\narch = "mlp:hidden=8"\nensemble = 2\n')
    out = tmp_path / "t"
    code, stdout, err = edgekd("teacher", "train", "--config", config, "--ensemble", "1", "--out", out, "--quiet")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["members"][0]["arch"] == "mlp" and len(manifest["members"]) == 1
    assert manifest["config"]["params"]["epochs"] == 1 and manifest["config"]["config_file"] == str(config)


def test_config_file_numbers_for_options_that_also_take_text(edgekd, tmp_path, tiny_teacher):
    """--temperature takes 'auto' or a number, so TOML's `temperature = 3` is the number 3, not a type error."""
    config = tmp_path / "c.toml"
    config.write_text('[distill]\ntemperature = 3\nalpha = 0.7\ntransfer_limit = 300\nsearch_methods = ""\n'
                      'student = "mlp:hidden=8"\nepochs = 1\nrecipe_search = false\n')
    out = tmp_path / "s"
    code, stdout, err = edgekd("distill", "--config", config, "--teacher", tiny_teacher, "--out", out, "--quiet")
    assert code == 0, err
    params = json.loads((out / "manifest.json").read_text())["config"]["params"]
    assert (params["temperature"], params["alpha"], params["transfer_limit"]) == ("3", "0.7", "300")
    # a float stays the number it was: 1.0 is the whole transfer set (a fraction), not a count of 1
    config.write_text(config.read_text().replace("temperature = 3", "temperature = 1.2345678")
                      .replace("transfer_limit = 300", "transfer_limit = 1.0"))
    code, _, err = edgekd("distill", "--config", config, "--teacher", tiny_teacher, "--out", tmp_path / "f", "--quiet")
    assert code == 0, err
    params = json.loads((tmp_path / "f" / "manifest.json").read_text())["config"]["params"]
    assert (params["temperature"], params["transfer_limit"]) == ("1.2345678", "1.0")
    config.write_text("[distill]\ntemperature_grid = [1, 2.5]\ntemperature = true\n")
    code, _, err = edgekd("distill", "--config", config, "--teacher", tiny_teacher, "--out", tmp_path / "o")
    assert code == 2 and "'temperature' must be a number or text" in err


@pytest.fixture
def onnx_teacher(tmp_path, tiny_teacher):
    """The tiny ensemble exported to ONNX *without* its normalisation, expecting flattened [0,1] inputs,
    as a foreign framework's model would."""
    from edgekd.teachers import load_teacher

    class Foreign(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = load_teacher(tiny_teacher).module().requires_grad_(False)

        def forward(self, x):  # (N, 64) in [0, 1]
            return torch.softmax(self.net(x.reshape(-1, 1, 8, 8) * 16.0), dim=-1)

    path = tmp_path / "foreign.onnx"
    torch.onnx.export(Foreign().eval(), (torch.rand(2, 64),), str(path), input_names=["pixels"],
                      output_names=["probabilities"], dynamic_axes={"pixels": {0: "n"}}, dynamo=False)
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_teacher_with_input_scale_matches_artifact(onnx_teacher, tiny_teacher, digits):
    from edgekd.teachers import InputTransform, load_teacher

    foreign = load_teacher(onnx_teacher, transform=InputTransform(scale=1 / 16))
    native = load_teacher(tiny_teacher)
    a, b = foreign.logits(digits.x_test), native.logits(digits.x_test)
    # probabilities came back as log-probabilities: same argmax, same softmax
    assert (a.argmax(1) == b.argmax(1)).all()
    assert torch.allclose(a.softmax(1), b.softmax(1), atol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_distill_from_onnx_teacher(edgekd, tmp_path, onnx_teacher):
    code, out, err = edgekd("distill", "--teacher", onnx_teacher, "--teacher-scale", 0.0625, "--student", "mlp:hidden=16",
                         "--epochs", "1", "--out", tmp_path / "s", "--quiet")
    assert code == 0, err
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["teacher"]["description"].startswith("ONNX"), manifest["teacher"]


def test_torchscript_teacher(tmp_path, tiny_teacher, digits):
    from edgekd.teachers import load_teacher

    net = load_teacher(tiny_teacher).module()
    path = tmp_path / "t.pt"
    torch.jit.save(torch.jit.trace(net, digits.x_val[:2]), str(path))
    ts = load_teacher(path)
    assert torch.allclose(ts.logits(digits.x_val), load_teacher(tiny_teacher).logits(digits.x_val), atol=1e-5)


def test_logit_cache_reused_and_invalidated(tmp_path, tiny_teacher, digits):
    import shutil

    from edgekd.cache import LogitCache
    from edgekd.data import load_dataset
    from edgekd.distill import teacher_logits
    from edgekd.teachers import load_teacher

    cache = LogitCache(tmp_path / "cache")
    teacher = load_teacher(tiny_teacher)
    first = teacher_logits(teacher, digits, "train", cache)
    again = teacher_logits(teacher, digits, "train", cache)
    assert cache.misses == 1 and cache.hits == 1 and torch.equal(first, again)
    teacher_logits(teacher, load_dataset("digits", train_limit=300), "train", cache)   # other data
    assert cache.misses == 2
    changed = tmp_path / "changed"
    shutil.copytree(tiny_teacher, changed)
    from edgekd.artifacts import load_artifact, save_artifact

    art = load_artifact(changed)
    state = art.load_tensors("member-0.safetensors")
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    tensors = {m.weights: (state if i == 0 else art.load_tensors(m.weights)) for i, m in enumerate(art.manifest.members)}
    save_artifact(changed, art.manifest, tensors, overwrite=True)
    teacher_logits(load_teacher(changed), digits, "train", cache)  # other teacher
    assert cache.misses == 3


def test_corrupt_cache_is_reported(tmp_path, tiny_teacher, digits):
    from edgekd.cache import LogitCache
    from edgekd.distill import teacher_logits
    from edgekd.errors import EdgekdError
    from edgekd.teachers import load_teacher

    cache = LogitCache(tmp_path / "cache")
    teacher_logits(load_teacher(tiny_teacher), digits, "train", cache)
    path = next((tmp_path / "cache").glob("*.safetensors"))
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x55
    path.write_bytes(bytes(raw))
    with pytest.raises(EdgekdError, match="sha256"):
        teacher_logits(load_teacher(tiny_teacher), digits, "train", cache)


def _bad_npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return f"npz:{path}"


def _file(path):
    path.write_bytes(b"\x00not a model")
    return path


def _folder(path):
    path.mkdir()
    return path


BAD = [
    ("missing dataset folder", lambda p, t, s: ["evaluate", t, "--data", f"fashion-mnist:{p / 'nope'}"], "not found"),
    ("unknown dataset", lambda p, t, s: ["evaluate", t, "--data", "cifar10"], "Unknown dataset"),
    ("unknown architecture", lambda p, t, s: ["teacher", "train", "--arch", "vgg", "--out", p / "o"], "Unknown architecture 'vgg'; choose one of"),
    ("T <= 0", lambda p, t, s: ["distill", "--teacher", t, "-T", "-1", "--out", p / "o"], "'temperature' parameter (--temperature) must be > 0 and finite. Got -1.0"),
    ("alpha outside [0,1]", lambda p, t, s: ["distill", "--teacher", t, "--alpha", "1.5", "--out", p / "o"], "'alpha' parameter (--alpha) must be in [0, 1]. Got 1.5"),
    ("class mismatch", lambda p, t, s: ["distill", "--teacher", t, "--out", p / "o", "--data",
                                        _bad_npz(p, x=np.random.default_rng(0).random((21, 1, 8, 8), np.float32), y=np.arange(21) % 7)], "10 outputs but dataset"),
    ("corrupt artifact", lambda p, t, s: ["evaluate", s], "corrupt"),
    ("empty transfer set", lambda p, t, s: ["distill", "--teacher", t, "--omit-classes", "0,1,2,3,4,5,6,7,8,9", "--out", p / "o"], "transfer set is empty"),
    ("existing output", lambda p, t, s: ["distill", "--teacher", t, "--out", t], "an input of this command"),
    ("model missing", lambda p, t, s: ["evaluate", p / "nothing-here"], "not found"),
    ("not a teacher", lambda p, t, s: ["distill", "--teacher", _file(p / "weights.bin"), "--out", p / "o"], "is not a teacher: expected"),
    ("folder not an artifact", lambda p, t, s: ["evaluate", _folder(p / "photos")], "is a folder but not an edgekd artifact"),
    ("bad option type", lambda p, t, s: ["distill", "--teacher", t, "--epochs", "many", "--out", p / "o"], "'many' is not a valid integer"),
    ("unknown arch option", lambda p, t, s: ["distill", "--teacher", t, "--student", "mlp:depth=3", "--out", p / "o"], "Unknown option 'depth=3'"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_inputs_exit_2_with_one_line(edgekd, tmp_path, tiny_teacher, tiny_student, case):
    import shutil

    _, make_args, message = case
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_student, corrupt)
    (corrupt / "manifest.json").write_text("{not json")
    before = {p: p.stat().st_mtime_ns for p in tiny_teacher.rglob("*")}
    code, out, err = edgekd(*make_args(tmp_path, tiny_teacher, corrupt))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert "Traceback" not in err
    assert {p: p.stat().st_mtime_ns for p in tiny_teacher.rglob("*")} == before  # nothing overwritten
    assert not (tmp_path / "o").exists()


def test_evaluate_reads_edgekds_own_uint8_export_and_names_a_missing_model(edgekd, tmp_path, tiny_student):
    out = tmp_path / "s.u8.onnx"
    assert edgekd("export", tiny_student, "--onnx", "--uint8-input", "--out", out)[0] == 0
    code, stdout, err = edgekd("evaluate", out, "--json")
    assert code == 0, err
    import json

    assert json.loads(stdout)["accuracy"] > 0.5
    code, _, err = edgekd("evaluate", tmp_path / "nope")
    assert code == 2 and err.startswith("error: Model '") and "not found" in err


def test_distill_search_methods_can_be_emptied(edgekd, tiny_teacher, tmp_path):
    """--search-methods '' keeps the ±2 px recipe search but tries no other soft term."""
    code, out, err = edgekd("distill", "--teacher", tiny_teacher, "--student", "mlp:hidden=16", "--epochs", "1",
                            "--search-methods", "", "--baseline", "--out", tmp_path / "s")
    assert code == 0, err
    assert "(tried kd-ls, jitter 2 on consistent views; kd-ls, jitter 0)" in out
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["config"]["method"] == "kd-ls" and manifest["config"]["params"]["search_methods"] == ""


def test_evaluate_without_data_reads_the_data_the_model_was_made_on(edgekd, tmp_path):
    """Not 'digits' whatever the model: synthetic vectors of digits' size scored on digits meant nothing."""
    spec = "synthetic:classes=10,groups=2,dim=64,seed=0"
    code, _, err = edgekd("teacher", "train", "--data", spec, "--arch", "mlp:hidden=8", "--epochs", "1", "--quiet",
                          "--out", tmp_path / "syn")
    assert code == 0, err
    code, out, err = edgekd("evaluate", tmp_path / "syn", "--json")
    assert code == 0, err
    assert json.loads(out)["data"] == spec
    code, out, err = edgekd("evaluate", tmp_path / "syn", "--data", "digits", "--json")   # asked for: as asked
    assert code == 0 and json.loads(out)["data"] == "digits"


@pytest.mark.parametrize("argv", [[], ["teacher"], ["specialists"], ["cache"]])
def test_a_group_without_a_command_prints_its_help(edgekd, argv):
    """The help, as --help gives it, not squashed into one 'error:' line."""
    code, out, err = edgekd(*argv)
    assert code == 0 and out.startswith(f"Usage: edgekd {' '.join(argv)}".rstrip() + " [OPTIONS] COMMAND") and err == ""
    assert "\n  " in out


def test_a_class_name_mismatch_is_one_warning_line(edgekd, tmp_path):
    """Said as edgekd's warnings are ('warning: ...'), not as Python's (a file, a line number and the code line)."""
    import numpy as np

    x, y = np.random.default_rng(0).random((60, 4)).astype(np.float32), np.arange(60) % 2
    np.savez(tmp_path / "a.npz", x=x, y=y, class_names=np.array(["cat", "dog"]))
    np.savez(tmp_path / "b.npz", x=x, y=y, class_names=np.array(["car", "bus"]))
    code, _, err = edgekd("teacher", "train", "--data", f"npz:{tmp_path / 'a.npz'}", "--arch", "mlp:hidden=4", "--epochs", "1",
                          "--quiet", "--out", tmp_path / "t")
    assert code == 0, err
    code, _, err = edgekd("evaluate", tmp_path / "t", "--data", f"npz:{tmp_path / 'b.npz'}")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 0 and len(lines) == 1 and lines[0].startswith("warning: Model's classes (cat, dog)"), err


def test_evaluate_applies_the_teacher_options_to_the_teacher_only(edgekd, tmp_path, tiny_student, digits):
    """With --teacher, --teacher-scale and the like are the teacher's preprocessing, not MODEL's."""
    import torch

    from edgekd.teachers import load_teacher

    torch.jit.save(torch.jit.trace(load_teacher(tiny_student).module().eval(), digits.x_test[:2]), str(tmp_path / "m.pt"))
    code, out, err = edgekd("evaluate", tmp_path / "m.pt", "--json")   # MODEL is foreign too: the options could reach it
    alone = json.loads(out)["accuracy"]

    class Scaled(torch.nn.Module):   # wants inputs divided by 16 first, as --teacher-scale 0.0625 gives it
        def __init__(self):
            super().__init__()
            self.net = load_teacher(tiny_student).module()

        def forward(self, x):
            return self.net(x * 16)

    torch.jit.save(torch.jit.trace(Scaled().eval(), digits.x_test[:2]), str(tmp_path / "t.pt"))
    code, out, err = edgekd("evaluate", tmp_path / "m.pt", "--teacher", tmp_path / "t.pt", "--teacher-scale", "0.0625", "--json")
    result = json.loads(out)
    assert code == 0 and result["accuracy"] == alone and result["agreement"] == 1.0, err

    class Standardized(torch.nn.Module):   # wants (x - 8) / 4, as --teacher-mean 8 --teacher-std 4 give it
        def __init__(self):
            super().__init__()
            self.net = load_teacher(tiny_student).module()

        def forward(self, x):
            return self.net(x * 4 + 8)

    torch.jit.save(torch.jit.trace(Standardized().eval(), digits.x_test[:2]), str(tmp_path / "z.pt"))
    code, out, err = edgekd("evaluate", tmp_path / "m.pt", "--teacher", tmp_path / "z.pt", "--teacher-mean", "8",
                            "--teacher-std", "4", "--json")
    assert code == 0 and json.loads(out)["agreement"] == 1.0, err
    code, out, err = edgekd("evaluate", tmp_path / "m.pt", "--teacher", tmp_path / "z.pt", "--json")   # without them
    assert code == 0 and json.loads(out)["agreement"] < 1.0, err


@pytest.mark.parametrize("argv", [
    ["distill", "--teacher", "{missing}", "--out", "{tmp}/o"],
    ["evaluate", "{missing}"],
    ["evaluate", "{model}", "--teacher", "{missing}"],
    ["specialists", "build", "--teacher", "{missing}", "--out", "{tmp}/o"],
    ["specialists", "cluster", "--teacher", "{missing}"],
])
def test_a_missing_model_is_refused_before_the_data_is_loaded(edgekd, tmp_path, monkeypatch, tiny_student, argv):
    """The data were loaded (a large image folder decoded) before the teacher was found missing."""
    import edgekd.commands.core as core
    import edgekd.commands.specialists as specialists

    def loaded(*_a, **_k):
        raise AssertionError("the data were loaded first")
    monkeypatch.setattr(core, "load_data", loaded)
    monkeypatch.setattr(specialists, "load_data", loaded)
    args = [a.format(missing=tmp_path / "nope", tmp=tmp_path, model=tiny_student) for a in argv]
    code, _, err = edgekd(*args)
    assert code == 2 and ("not found" in err or "no such folder" in err), err


def test_only_a_command_that_keeps_a_checkpoint_is_told_to_resume_after_sigterm():
    from edgekd.clicommon import _resumable

    assert _resumable(["teacher", "train", "--epochs", "3"]) and _resumable(["distill", "--teacher", "t"])
    assert _resumable(["specialists", "build"]) and _resumable(["--quiet", "pipeline"])
    assert not _resumable(["export", "runs/s", "--out", "s.onnx"]) and not _resumable(["bench", "--model", "m"])
    assert not _resumable(["specialists", "regate", "s"])


def test_correct_teacher_reaches_the_loss(edgekd, tmp_path, tiny_teacher):
    """--correct-teacher trains another student than the same command without it, and is recorded."""
    weights = {}
    for name, extra in (("plain", []), ("corrected", ["--correct-teacher"])):
        code, _, err = edgekd("distill", "--teacher", tiny_teacher, "--student", "mlp:hidden=8", "--epochs", "1",
                              "--no-recipe-search", "--quiet", *extra, "--out", tmp_path / name)
        assert code == 0, err
        weights[name] = b"".join(p.read_bytes() for p in sorted((tmp_path / name).glob("*.safetensors")))
    manifest = json.loads((tmp_path / "corrected" / "manifest.json").read_text())
    assert manifest["config"]["params"]["correct_teacher"] is True and weights["plain"] != weights["corrected"]


def test_the_teacher_transform_is_refused_where_it_would_blank_or_double_the_inputs(edgekd, tmp_path, tiny_teacher, digits):
    """--teacher-scale 0 distilled from a teacher that saw one blank image; an edgekd export normalises itself."""
    from export import ExportConfig, export_onnx

    export_onnx(tiny_teacher, tmp_path / "t.onnx", ExportConfig(), data=digits)
    common = ["distill", "--teacher", tmp_path / "t.onnx", "--student", "mlp:hidden=8", "--epochs", "1", "--quiet"]
    code, _, err = edgekd(*common, "--teacher-scale", "0", "--out", tmp_path / "a")
    assert code == 2 and "scale must not be 0" in err and not (tmp_path / "a").exists()
    code, _, err = edgekd(*common, "--teacher-scale", "0.0625", "--out", tmp_path / "b")
    assert code == 2 and "is an edgekd export, which normalises its raw inputs itself" in err
    assert not (tmp_path / "b").exists()
