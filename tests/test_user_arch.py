"""Your own architecture, ``py:package.module.factory``: trained, exported, counted, and never imported
by opening an artifact unless the command runs with --trust-code."""

import json
import sys
from pathlib import Path

import pytest
import torch

from edgekd.errors import ConfigError
from edgekd.models import count_macs, create_model, parse_arch

FIXTURES = str(Path(__file__).parent / "fixtures")


@pytest.fixture(autouse=True)
def _on_path(monkeypatch):
    monkeypatch.syspath_prepend(FIXTURES)


def test_spec_parses_without_importing():
    assert parse_arch("py:nowhere.module.factory:hidden=8,mode=fast,sizes=4-8") == (
        "py:nowhere.module.factory", {"hidden": 8, "mode": "fast", "sizes": (4, 8)})
    with pytest.raises(ConfigError, match="py:package.module.factory"):
        parse_arch("py:factory_only")


def test_builds_and_counts_any_module():
    model = create_model("py:my_arch.tiny_net:hidden=8", (1, 8, 8), 10)
    assert model(__import__("torch").zeros(2, 1, 8, 8)).shape == (2, 10)
    assert count_macs(model, (1, 8, 8)) == 64 * 8 + 8 * 10   # flop counter, not only known layer types


@pytest.mark.parametrize("spec, message", [("py:my_arch.missing", "has no callable 'missing'"),
                                           ("py:no_such_module_x.f", "cannot import 'no_such_module_x'"),
                                           ("py:my_arch.not_a_module", "must return a torch.nn.Module"),
                                           ("py:my_arch.tiny_net:colour=red", "check its options"),
                                           ("py:my_arch.picky:width=16", "raised ValueError: width must be at most 8"),
                                           ("py:my_arch.extra_class", r"one score per class, \(batch, 10\), .* Got \(2, 11\)"),
                                           ("py:my_arch.all_double", r"edgekd feeds it float32 and it holds float64 weights"),
                                           ("py:my_arch.fixed_width", r"fails on inputs of shape \(2, 1, 8, 8\) \(RuntimeError: "
                                                                      r"mat1 and mat2 .*make it take \(batch, 1, 8, 8\)")])
def test_bad_user_architectures_are_one_clear_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        create_model(spec, (1, 8, 8), 10)


def test_train_export_and_load_only_with_trust(edgekd, tmp_path):
    out = tmp_path / "t"
    code, _, err = edgekd("teacher", "train", "--arch", "py:my_arch.tiny_net:hidden=16", "--epochs", "6", "--lr", "0.01",
                          "--quiet", "--out", out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["members"][0]["arch"] == "py:my_arch.tiny_net" and manifest["metrics"]["macs"] == 64 * 16 + 16 * 10
    sys.modules.pop("my_arch", None)
    code, _, err = edgekd("evaluate", out)   # opening the artifact imports nothing
    assert code == 2 and "pass --trust-code" in err and "my_arch" not in sys.modules
    code, stdout, err = edgekd("evaluate", out, "--trust-code", "--json")
    assert code == 0 and json.loads(stdout)["accuracy"] > 0.5, err
    bench = ["bench", "--model", out, "--runtimes", "pytorch", "--batch-sizes", "1", "--threads", "1", "--seconds", "0.02",
             "--rounds", "1", "--quiet"]
    code, _, err = edgekd(*bench, "--out", tmp_path / "r")   # refused as evaluate is, not a report of one error row
    assert code == 2 and "pass --trust-code" in err and not (tmp_path / "r").exists()
    code, _, err = edgekd(*bench, "--trust-code", "--out", tmp_path / "r")
    assert code == 0, err
    code, _, err = edgekd("export", out, "--onnx", "--quantize", "int8", "--max-accuracy-drop", "100", "--trust-code",
                          "--out", tmp_path / "t.int8.onnx")
    assert code == 0, err


def test_a_student_without_a_final_linear_is_told_what_the_bias_correction_needs(edgekd, tmp_path, tiny_teacher):
    code, _, err = edgekd("distill", "--teacher", tiny_teacher, "--student", "py:my_arch.tiny_net:head=false", "--epochs", "1",
                          "--omit-classes", "3", "--quiet", "--out", tmp_path / "s")
    assert code == 2 and "raises their output biases, so the architecture must end in an nn.Linear with a bias" in err
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()   # refused before training
    code, _, err = edgekd("distill", "--teacher", tiny_teacher, "--student", "py:my_arch.conv_head_net:width=6", "--epochs",
                          "1", "--omit-classes", "3", "--quiet", "--out", tmp_path / "s")
    assert code == 2 and "output is not an nn.Linear's" in err   # the excitation's Linear is not taken for the head


def test_the_output_layer_is_the_linear_whose_output_is_returned():
    from edgekd.models import output_layer

    name, layer = output_layer(create_model("py:my_arch.head_first", (1, 8, 8), 10), 10, "a test edits it")
    assert name == "body.head" and layer.out_features == 10
    with pytest.raises(ConfigError, match=r"output is not an nn.Linear's .*a test edits it"):
        output_layer(create_model("py:my_arch.gated_tail", (1, 8, 8), 10), 10, "a test edits it")


def test_register_model_reads_bools_and_refuses_what_it_cannot_hold():
    """bool("false") is True: a registered model's ``bn=false`` built it with BatchNorm; registering "mlp" again
    replaced the built-in (its artifacts then failed to build); a None default failed when read."""
    from torch import nn

    from edgekd.errors import ConfigError
    from edgekd.models import parse_arch, register_model

    @register_model("test-tiny-bool", description="a test model", hidden=16, bn=True)
    def tiny(input_shape, num_classes, hidden, bn):
        return nn.Linear(1, num_classes)

    assert parse_arch("test-tiny-bool:bn=false")[1]["bn"] is False
    assert parse_arch("test-tiny-bool:bn=1")[1]["bn"] is True
    with pytest.raises(ConfigError, match="must look like True"):
        parse_arch("test-tiny-bool:bn=maybe")
    register_model("test-tiny-bool", description="the same cell run again", hidden=16, bn=True)(tiny)
    with pytest.raises(ConfigError, match="A model named 'mlp' is registered already"):
        register_model("mlp", description="mine")(lambda input_shape, num_classes: nn.Linear(1, num_classes))
    with pytest.raises(ConfigError, match="Got {'note': None} instead"):
        register_model("test-none", description="x", note=None)
    with pytest.raises(ConfigError, match="Got 'my:net' instead"):
        register_model("my:net", description="x")


def test_a_net_that_flattens_with_view_trains_and_teaches_in_its_own_layout(edgekd, tmp_path, digits):
    """The tutorials' ``x.view(x.size(0), -1)`` fails on a channels_last batch: edgekd trains in the default layout,
    and makes a teacher's targets through its channels_last copy only where that copy runs and agrees."""
    from edgekd.teachers import ModuleTeacher

    out = tmp_path / "t"
    code, _, err = edgekd("teacher", "train", "--arch", "py:my_arch.tutorial_net", "--epochs", "2", "--quiet", "--out", out)
    assert code == 0, err
    code, _, err = edgekd("distill", "--teacher", out, "--trust-code", "--student", "py:my_arch.tutorial_net:width=2",
                          "--epochs", "1", "--quiet", "--out", tmp_path / "s")
    assert code == 0, err
    net = create_model("py:my_arch.tutorial_net", digits.input_shape, digits.num_classes).eval()
    teacher = ModuleTeacher(net, kind="model", classes=digits.classes, input_shape=digits.input_shape, fingerprint="f",
                            description="a tutorial net")
    assert teacher.channels_last_net() is None
    assert torch.equal(teacher.logits(digits.x_val[:5]), net(digits.x_val[:5].reshape(5, *digits.input_shape)).float())


@pytest.mark.parametrize("arch", [" py:my_arch.tiny_net", "\tpy:my_arch.tiny_net", "\u00a0py:my_arch.tiny_net"])
def test_an_architecture_name_with_whitespace_cannot_slip_past_trust(edgekd, tiny_teacher, tmp_path, arch):
    """'\\tpy:...' in a crafted manifest passed the trust check (which tested startswith) while the parser stripped it
    and imported the module on opening."""
    import shutil

    crafted = tmp_path / "crafted"
    shutil.copytree(tiny_teacher, crafted)
    manifest = json.loads((crafted / "manifest.json").read_text())
    manifest["members"][0]["arch"] = arch
    (crafted / "manifest.json").write_text(json.dumps(manifest))
    sys.modules.pop("my_arch", None)
    code, _, err = edgekd("evaluate", crafted)
    assert code == 2 and "not an architecture name" in err and "my_arch" not in sys.modules, err


def test_an_artifact_is_built_as_training_built_it(edgekd, tmp_path):
    """A net that draws a buffer it does not save came back different at every load (5% then 9%): members are built
    under the seed they were trained with."""
    out = tmp_path / "t"
    code, _, err = edgekd("teacher", "train", "--arch", "py:my_arch.random_projection", "--epochs", "2", "--quiet",
                          "--out", out)
    assert code == 0, err
    recorded = json.loads((out / "manifest.json").read_text())["metrics"]["test_accuracy"]
    for _ in range(2):
        code, stdout, err = edgekd("evaluate", out, "--trust-code", "--json")
        assert code == 0 and json.loads(stdout)["accuracy"] == pytest.approx(recorded, abs=1e-9), err


def test_recurrent_and_attention_layers_are_counted_in_full():
    """oneDNN's LSTM kernel and eval mode's attention fast path hide their matrix products from the counter: an
    LSTM counted its head alone (320 MACs) and a transformer layer its projections without attention."""
    from torch import nn

    class Lstm(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.LSTM(8, 32, batch_first=True), nn.Linear(32, 10)

        def forward(self, x):
            return self.head(self.rnn(x.reshape(len(x), 8, 8))[0][:, -1])

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            return self.head(self.layer(x.reshape(len(x), 8, 8)).mean(1))

    assert count_macs(Lstm(), (1, 8, 8)) == 8 * 4 * 32 * (8 + 32) + 32 * 10      # 8 steps of 4 gates, then the head
    # q, k, v and out projections, scores and their weighted sum, the 8 -> 16 -> 8 feed-forward, the head
    assert count_macs(Attention(), (1, 8, 8)) == 4 * 8 * 8 * 8 + 2 * 8 * 8 * 8 + 2 * 8 * 8 * 16 + 8 * 10
    assert torch.backends.mha.get_fastpath_enabled() and torch.backends.mkldnn.enabled   # put back


def test_a_batchnorm1d_head_trains_whatever_row_is_left_over(digits):
    """With n % batch_size == 1 the last batch was a lone row, on which BatchNorm1d fails in training (an internal
    error): it joins the batch before."""
    import torch.nn.functional as F

    from edgekd.training import TrainConfig, fit, steps_in_epoch

    assert [steps_in_epoch(n, 128) for n in (1, 127, 128, 129, 130, 257)] == [1, 1, 1, 1, 2, 2]
    # two ranks share a last batch: 3 rows gave one of them a single row
    assert [steps_in_epoch(n, 128, ranks=2) for n in (129, 131, 132)] == [1, 1, 2]
    model = create_model("py:my_arch.bn_head", digits.input_shape, digits.num_classes)
    x, y = digits.x_train[:129], digits.y_train[:129]
    sizes = []
    fit(model, n_train=129, make_batch=lambda i, g, e: sizes.append(len(i)) or (x[i], y[i]),
        loss_fn=lambda out, b: F.cross_entropy(out, b[1]), val=(digits.x_val, digits.y_val),
        config=TrainConfig(epochs=2, batch_size=64, lr=1e-2), store=None, name="m")
    assert sizes == [64, 65] * 2


@pytest.mark.parametrize("arch, what", [("bad_in_place", "backward: RuntimeError"), ("typo_in_training", "forward: AttributeError")])
def test_your_architecture_failing_in_training_is_one_line_naming_it(edgekd, tmp_path, arch, what):
    code, _, err = edgekd("teacher", "train", "--arch", f"py:my_arch.{arch}", "--epochs", "1", "--out", tmp_path / "t")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"Architecture 'py:my_arch.{arch}' failed in training ({what}: " in err
    assert "internal error" not in err


def test_a_net_torch_export_cannot_trace_is_told_why_in_one_line(edgekd, tmp_path):
    """The exporter's first line is the same boilerplate for every model, and it printed the graphs it traced:
    the line names the cause (control flow on a tensor's value) and its usual fix."""
    out = tmp_path / "t"
    code, _, err = edgekd("teacher", "train", "--arch", "py:my_arch.branchy", "--epochs", "1", "--quiet", "--out", out)
    assert code == 0, err
    code, _, err = edgekd("export", out, "--trust-code", "--onnx", "--out", tmp_path / "t.onnx")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "data-dependent" in err and "use torch.where or torch.cond" in err and "GraphModule" not in err


def test_a_model_that_computes_in_float64_is_not_sold_as_int8(edgekd, tmp_path):
    """onnxruntime quantizes float32 MatMul/Gemm/Conv only: the float64 graph came out unchanged, and was named,
    gated and timed as int8."""
    out = tmp_path / "t"
    code, _, err = edgekd("teacher", "train", "--arch", "py:my_arch.float64_net", "--epochs", "1", "--quiet", "--out", out)
    assert code == 0, err
    for mode in ("int8", "dynamic"):
        code, _, err = edgekd("export", out, "--trust-code", "--onnx", "--quantize", mode, "--out", tmp_path / f"{mode}.onnx")
        assert code == 2 and f"--quantize {mode} quantized nothing" in err and "float64" in err, err
        assert not (tmp_path / f"{mode}.onnx").exists()


def test_specialists_say_which_class_count_a_factory_that_ignores_it_was_asked_for(tmp_path):
    from edgekd.errors import ConfigError as Refused
    from specialists.training import specialist_model

    generalist = create_model("py:my_arch.ten_classes", (1, 8, 8), 10)
    with pytest.raises(Refused, match=r"num_classes = the cluster's classes \+ 1 \(a dustbin\), here 3, and "
                                      r"'py:my_arch.ten_classes' cannot be built so: .*one score per class, \(batch, 3\)"):
        specialist_model(generalist, "py:my_arch.ten_classes", {}, (1, 8, 8), (0.0,), (1.0,), (0, 1))


def test_a_specialist_ensemble_is_built_as_it_was_trained(edgekd, tmp_path):
    """Its members recorded no seed: the generalist and the specialists came back with other random buffers, and
    evaluate disagreed with the accuracy recorded at build time."""
    teacher, spec = tmp_path / "t", tmp_path / "s"
    code, _, err = edgekd("teacher", "train", "--arch", "py:my_arch.random_projection", "--epochs", "2", "--seed", "3",
                          "--quiet", "--out", teacher)
    assert code == 0, err
    code, _, err = edgekd("specialists", "build", "--teacher", teacher, "--trust-code", "--clusters", "2", "--epochs", "1",
                          "--quiet", "--out", spec)
    assert code == 0, err
    manifest = json.loads((spec / "manifest.json").read_text())
    assert manifest["members"][0]["seed"] == 3 and all(m["seed"] == 0 for m in manifest["members"][1:])
    code, stdout, err = edgekd("evaluate", spec, "--trust-code", "--json")
    assert code == 0 and json.loads(stdout)["accuracy"] == pytest.approx(manifest["metrics"]["test_accuracy"], abs=1e-9), err


@pytest.mark.parametrize("where, seed", [("member", "abc"), ("member", 2 ** 70), ("member", True), ("top", 2 ** 70)])
def test_a_seed_that_cannot_build_a_member_is_refused_when_the_manifest_is_read(edgekd, tiny_teacher, tmp_path, where, seed):
    import shutil

    crafted = tmp_path / "crafted"
    shutil.copytree(tiny_teacher, crafted)
    manifest = json.loads((crafted / "manifest.json").read_text())
    (manifest["members"][0] if where == "member" else manifest)["seed"] = seed
    (crafted / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = edgekd("evaluate", crafted)
    assert code == 2 and "'seed'" in err and "internal error" not in err, err
