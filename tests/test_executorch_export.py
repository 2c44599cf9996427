"""``export.executorch_export``: an artifact -> a verified ExecuTorch program (.pte), fp32 and int8.

The export tests need ExecuTorch (``pip install -c constraints.txt ".[mobile]"``) and skip without it;
they are marked ``mobile`` (CI runs them in a second step with the extra installed). The option checks
need nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def executorch():
    pytest.importorskip("executorch.runtime", reason="ExecuTorch not installed (pip install '.[mobile]')")


@pytest.fixture(scope="module")
def pte_dir(tmp_path_factory, tiny_student, digits, executorch):
    """The tiny student as fp32 and int8 programs (batch 1), and the teacher ensemble at batch 8."""
    from export import ExportConfig, export_executorch

    folder = tmp_path_factory.mktemp("pte")
    results = {
        "fp32": export_executorch(tiny_student, folder / "student.pte", ExportConfig(executorch=True), data=digits),
        "int8": export_executorch(tiny_student, folder / "student.int8.pte",
                                  ExportConfig(executorch=True, quantize="int8", calibration_size=128), data=digits,
                                  calibration=digits),
        "dynamic": export_executorch(tiny_student, folder / "student.dyn.pte",
                                     ExportConfig(executorch=True, quantize="dynamic"), data=digits),
    }
    return folder, results


@pytest.mark.mobile
def test_fp32_program_matches_pytorch_and_records_what_it_takes(pte_dir, tiny_student, digits):
    from edgekd.teachers import load_teacher
    from export.executorch_export import load_program, program_input, run_program

    folder, results = pte_dir
    result = results["fp32"]
    assert result.format == "pte" and result.precision == "fp32" and result.path.is_file()
    assert all(p.max_abs_diff <= 1e-4 and p.disagreements == 0 for p in result.parity)
    summary = json.loads(result.summary_path.read_text())
    assert summary["input"]["shape"] == [1, 64] and summary["input"]["image_shape"] == [1, 8, 8]
    assert summary["output"]["classes"] == list(digits.classes)
    assert summary["source"]["path"] == str(tiny_student)
    from edgekd.artifacts import sha256_file
    from edgekd.outputs import export_summary_of
    assert summary["model_sha256"] == sha256_file(result.path) and export_summary_of(result.path) == summary
    method = load_program(result.path)
    assert program_input(method) == ((1, 64), "float32")
    x = digits.x_test[:37]
    got = run_program(method, x.reshape(len(x), -1).numpy(), 1)   # any count: the runner feeds one row at a time
    want = load_teacher(tiny_student).logits(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.mobile
def test_int8_program_is_gated_on_accuracy_and_smaller(pte_dir):
    _, results = pte_dir
    fp32, int8 = results["fp32"], results["int8"]
    assert int8.precision == "int8-static-xnnpack"
    assert int8.accuracy_drop is not None and int8.accuracy_drop <= 1.0
    assert int8.size_bytes < fp32.size_bytes
    assert int8.summary["quantization"]["tool"].startswith("torchao PT2E")
    assert int8.summary["quantization"]["calibration_samples"] == 128


@pytest.mark.mobile
def test_dynamic_int8_program_has_per_channel_weights_and_no_calibration(pte_dir, tiny_student, digits):
    """Dynamic mode has no calibration pass, yet each weight row needs its own scale: the export once
    failed in XNNPACK's lowering with a single scale for a per-channel weight."""
    from edgekd.teachers import load_teacher
    from export.executorch_export import load_program, run_program

    _, results = pte_dir
    dyn = results["dynamic"]
    assert dyn.precision == "int8-dynamic-xnnpack" and dyn.path.is_file()
    assert dyn.summary["quantization"]["calibration_samples"] is None
    assert dyn.size_bytes < results["fp32"].size_bytes and dyn.accuracy_drop <= 1.0
    x = digits.x_test[:64]
    got = run_program(load_program(dyn.path), x.reshape(len(x), -1).numpy(), 1).argmax(1)
    want = load_teacher(tiny_student).logits(x).numpy().argmax(1)
    assert (got == want).mean() >= 0.9


@pytest.mark.mobile
def test_single_channel_images_at_batch_8(tmp_path, tiny_teacher, digits, executorch):
    """A (N, 1, H, W) tensor is NCHW and NHWC at once for ExecuTorch; the flattened input avoids that.
    The teacher (a 2-member cnn ensemble) exports as one program."""
    from export import ExportConfig, export_executorch

    result = export_executorch(tiny_teacher, tmp_path / "teacher.pte", ExportConfig(executorch=True, batch_size=8),
                               data=digits)
    assert result.summary["input"]["shape"] == [8, 64]
    assert result.parity[0].batch_size == 8 and result.parity[0].disagreements == 0


@pytest.mark.mobile
def test_a_failed_gate_writes_nothing(tmp_path, tiny_student, digits, executorch, monkeypatch):
    import export.verify
    from edgekd.errors import ExportError
    from export import ExportConfig, export_executorch

    # atol 1e-12 and no allowance for PyTorch's own float32 rounding (which the gate otherwise adds): refused
    monkeypatch.setattr(export.verify, "float32_noise", lambda *args, **kwargs: 0.0)
    with pytest.raises(ExportError, match="does not match PyTorch"):
        export_executorch(tiny_student, tmp_path / "s.pte", ExportConfig(executorch=True, atol=1e-12), data=digits)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.mobile
def test_cli_exports_a_pte(edgekd, tmp_path, tiny_student, executorch):
    code, out, err = edgekd("export", tiny_student, "--executorch", "--out", tmp_path / "s.pte")
    assert code == 0, err
    assert "(pte, fp32" in out and (tmp_path / "s.pte.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--executorch", "--out", "{tmp}/s.onnx"], "must end in .pte"),
    (["--out", "{tmp}/s.pte"], "pass --executorch"),
    (["--executorch", "--ort", "--out", "{tmp}/s.pte"], "not both"),
    (["--executorch", "--batch-size", "0", "--out", "{tmp}/s.pte"], "batch_size"),
    (["--executorch", "--quantize", "int8", "--quant-format", "qoperator", "--out", "{tmp}/s.pte"], "quant_format"),
    (["--quant-format", "qoperator", "--out", "{tmp}/s.onnx"], "--quant-format applies only with --quantize int8"),
    (["--quant-format", "qdq", "--out", "{tmp}/s.onnx"], "--quant-format applies only with --quantize int8"),   # the default, typed
    (["--ort-optimization", "basic", "--out", "{tmp}/s.onnx"], "--ort-optimization applies only with --ort"),
    (["--onnx", "--executorch", "--out", "{tmp}/s.pte"], "--onnx applies only without --executorch"),
])
def test_bad_options_are_one_line(edgekd, tmp_path, tiny_student, args, message):
    code, out, err = edgekd("export", tiny_student, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_flat_input_reshapes_to_the_model_shape():
    from export.executorch_export import FlatInput

    model = torch.nn.Conv2d(1, 2, 3)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(FlatInput(model, (1, 8, 8))(x.reshape(4, -1)), model(x))


def test_without_executorch_the_export_says_how_to_install_it(edgekd, tmp_path, tiny_student, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_executorch(name, *args, **kwargs):
        if name.startswith("executorch"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_executorch)
    code, out, err = edgekd("export", tiny_student, "--executorch", "--out", tmp_path / "s.pte")
    assert code == 2 and "edgekd[mobile]" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.mobile
def test_a_uint8_program_is_read_as_uint8_and_a_small_calibration_set_is_padded(tmp_path, tiny_student, digits):
    """executorch 1.4 gives the input's type as a number (0 for Byte): bench must feed such a program bytes;
    static int8 at a batch larger than the calibration set pads the last chunk (its observers saw nothing)."""
    from export import ExportConfig, export_executorch
    from export.executorch_export import load_program, program_input

    u8 = export_executorch(tiny_student, tmp_path / "u8.pte", ExportConfig(executorch=True, uint8_input=True), data=digits)
    assert program_input(load_program(u8.path)) == ((1, 64), "uint8")
    small = export_executorch(tiny_student, tmp_path / "b32.int8.pte",
                              ExportConfig(executorch=True, quantize="int8", batch_size=32, calibration_size=16,
                                           max_accuracy_drop=100), data=digits, calibration=digits)
    assert small.summary["quantization"]["calibration_samples"] == 16


@pytest.mark.mobile
def test_a_program_keeps_its_counts_where_its_artifact_is_not(pte_dir, tmp_path, tiny_student):
    """Copied to another machine, its artifact gone: bench still counts its MACs and parameters (its summary
    records them, as an ONNX file's metadata does)."""
    import shutil

    from benchmarks.modelinfo import describe_model
    from edgekd.artifacts import load_artifact

    folder, results = pte_dir
    shutil.copy(results["fp32"].path, tmp_path / "s.pte")
    summary = json.loads(results["fp32"].summary_path.read_text())
    summary["source"]["path"] = str(tmp_path / "gone")
    (tmp_path / "s.pte.json").write_text(json.dumps(summary))
    info = describe_model(tmp_path / "s.pte", "s")
    metrics = load_artifact(tiny_student).manifest.metrics
    assert (info.macs, info.parameters, info.macs_source) == (metrics["macs"], metrics["parameters"], "summary")


class _Counting(torch.nn.Module):
    """A linear model that counts its calls (``fixed``: its batch of 1 is built in, as some users' are)."""

    def __init__(self, fixed: bool = False):
        super().__init__()
        self.fc, self.fixed = torch.nn.Linear(4, 3), fixed

    def forward(self, x):
        return self.fc(x.reshape(1, 4) if self.fixed else x)


@pytest.mark.mobile
@pytest.mark.parametrize("fixed, calls", [(False, 3), (True, 130)])
def test_calibration_takes_64_rows_a_call_where_the_model_allows(executorch, monkeypatch, fixed, calls):
    """Every calibration row is observed, 64 a call through a free batch dimension (fed one by one at the
    program's batch of 1, 512 rows of a mobilenetv2 took minutes of HistogramObserver calls); a model with
    its batch built in is still calibrated, at its own batch."""
    import torchao.quantization.pt2e.quantize_pt2e as pt2e

    from export.executorch_export import quantize_pt2e

    seen, prepare = [], pt2e.prepare_pt2e

    def counted(model, quantizer):
        prepared = prepare(model, quantizer)
        prepared.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
        return prepared

    monkeypatch.setattr(pt2e, "prepare_pt2e", counted)
    calibration = np.random.default_rng(0).normal(size=(130, 4)).astype(np.float32)
    converted = quantize_pt2e(_Counting(fixed).eval(), torch.zeros(1, 4), calibration, 1)
    assert len(seen) == calls and sum(seen) == 130
    assert converted(torch.ones(1, 4)).shape == (1, 3)


@pytest.mark.mobile
def test_export_executorch_is_the_executorch_export_whatever_its_config_says(tmp_path, tiny_student, digits, executorch):
    """``export_executorch(m, "x.pte", ExportConfig())`` was refused with "pass --executorch"; no config at all
    was a TypeError."""
    from export import ExportConfig, export_executorch

    for name, config in (("a.pte", ExportConfig()), ("b.pte", None)):
        result = export_executorch(tiny_student, tmp_path / name, config, data=digits)
        assert result.format == "pte" and (tmp_path / name).read_bytes()[4:8] == b"ET12"


@pytest.mark.mobile
def test_int8_of_a_float64_model_is_refused_in_one_line(edgekd, tmp_path, executorch, monkeypatch):
    """The XNNPACK quantizer asserted float32 deep in convert_pt2e: an internal error."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures"))
    out = tmp_path / "t"
    code, _, err = edgekd("teacher", "train", "--arch", "py:my_arch.float64_net", "--epochs", "1", "--quiet", "--out", out)
    assert code == 0, err
    code, _, err = edgekd("export", out, "--trust-code", "--executorch", "--quantize", "int8", "--out", tmp_path / "m.pte")
    assert code == 2 and "needs a model with float32 weights; this one holds float64" in err, err
