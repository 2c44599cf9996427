"""Export: every architecture through the gate, the gates failing when they should, metadata, int8,
the ORT format, the teacher ensemble as one graph, and bad inputs through the CLI (exit 2, one line,
nothing written)."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgekd.artifacts import load_artifact
from edgekd.errors import ConfigError, ExportError
from edgekd.models import list_models
from edgekd.teachers import load_teacher

import export.onnx_export as onnx_export
from edgekd.teacher_training import save_untrained
from export import DEFAULT_OPSET, ExportConfig, export_onnx, read_metadata
from export.verify import check_accuracy_drop

TINY = {"mlp": "mlp:hidden=16", "cnn": "cnn:width=4,fc=16", "dsconv": "dsconv:width=0.25"}


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_logits(path, x):
    s = session(path)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory, digits):
    return save_untrained(tmp_path_factory.mktemp("export") / "mlp", TINY["mlp"], digits)


# the architectures that take digits' 8x8 images; the KD literature's (28x28 and up) in test_kd_models.py
SMALL_INPUT_MODELS = [entry for entry in list_models() if entry.name in ("mlp", "cnn", "dsconv")]


@pytest.fixture(scope="module")
def arch_exports(tmp_path_factory, digits):
    """Each architecture that takes digits' 8x8 images, tiny, exported once (fp32) through the library (the KD
    literature's, which need 28x28, go through the fp32 and int8 gates in test_kd_models.py, marked slow)."""
    root = tmp_path_factory.mktemp("arch-exports")
    results = {}
    for entry in SMALL_INPUT_MODELS:
        artifact = save_untrained(root / entry.name, TINY.get(entry.name, entry.name), digits)
        results[entry.name] = (artifact, export_onnx(artifact, root / f"{entry.name}.onnx", ExportConfig(), data=digits))
    return results


@pytest.mark.parametrize("arch", [entry.name for entry in SMALL_INPUT_MODELS])
def test_each_small_input_architecture_exports_and_passes_the_gate(arch, arch_exports, digits):
    artifact, result = arch_exports[arch]
    assert result.path.is_file() and result.summary_path.is_file()
    assert result.format == "onnx" and result.precision == "fp32" and result.opset == DEFAULT_OPSET
    assert [p.batch_size for p in result.parity] == [1, 64]
    assert all(p.max_abs_diff <= 1e-4 and p.top1_agreement == 1.0 for p in result.parity)
    assert "float32_noise" not in result.summary["verification"]   # within atol: no float64 pass was needed
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto, full_check=True)
    assert next(o.version for o in proto.opset_import if o.domain == "") == DEFAULT_OPSET
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # the batch dimension is dynamic
    # independent check on the test split at an odd batch size
    x = digits.x_test[:37]
    expected = load_teacher(artifact).logits(x).numpy()
    np.testing.assert_allclose(onnx_logits(result.path, x.numpy()), expected, atol=1e-4)
    summary = json.loads(result.summary_path.read_text())
    assert summary["sizes_bytes"]["model"] == result.path.stat().st_size
    assert summary["opset"] == DEFAULT_OPSET and summary["seconds"]["total"] > 0


def test_metadata_round_trips_through_onnxruntime(arch_exports, digits):
    artifact, result = arch_exports["cnn"]
    meta = session(result.path).get_modelmeta().custom_metadata_map
    manifest = load_artifact(artifact).manifest
    assert json.loads(meta["edgekd.classes"]) == list(digits.classes)
    assert json.loads(meta["edgekd.input_shape"]) == ["batch", 1, 8, 8]
    assert json.loads(meta["edgekd.normalization"]) == manifest.normalization
    assert meta["edgekd.source_fingerprint"] == load_artifact(artifact).fingerprint
    assert meta["edgekd.input_dtype"] == "float32" and meta["edgekd.precision"] == "fp32"
    import edgekd

    assert meta["edgekd.version"] == edgekd.__version__
    decoded = read_metadata(result.path)
    fp32 = decoded["verification"]["fp32"]
    assert fp32["parity"] == [p.to_dict() for p in result.parity]
    assert fp32["parity"][0]["n"] == len(digits.x_val) and fp32["parity"][1]["batch_size"] == 64


class _Shifted(torch.nn.Module):
    def __init__(self, module, shift):
        super().__init__()
        self.module, self.shift = module, shift

    def forward(self, x):
        return self.module(x) + self.shift


def test_gate_rejects_a_perturbed_onnx_output_with_the_numbers(monkeypatch, tmp_path, mlp_artifact, digits):
    real = onnx_export.torch_to_onnx

    def perturbed(module, example, path, opset):  # the exported graph adds 1e-3 to every logit
        real(_Shifted(module, torch.full((10,), 1e-3)), example, path, opset)

    monkeypatch.setattr(onnx_export, "torch_to_onnx", perturbed)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ExportError) as info:
        export_onnx(mlp_artifact, out_dir / "m.onnx", ExportConfig(), data=digits)
    message = str(info.value)
    assert "batch 1 (n=143): max |diff| 1.00e-03, mean 1.00e-03" in message and "batch 64 (n=143)" in message
    assert "atol 0.0001" in message
    assert list(out_dir.iterdir()) == []  # no model, no summary, no temporary folder


def test_an_export_cut_between_its_renames_leaves_a_pair_that_is_refused_then_replaced(monkeypatch, tmp_path, mlp_artifact, digits):
    from edgekd.artifacts import sha256_file
    from edgekd.outputs import export_summary_of

    out = tmp_path / "m.onnx"
    first = export_onnx(mlp_artifact, out, ExportConfig(), data=digits)
    assert first.summary["model_sha256"] == sha256_file(out) and export_summary_of(out) == first.summary
    old_model = out.read_bytes()
    real = onnx_export.os.replace

    def cut_before_the_model(src, dst):  # the process dies after the summary is in place
        if str(dst) == str(out):
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(onnx_export.os, "replace", cut_before_the_model)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(mlp_artifact, out, ExportConfig(verify_batch_size=32), data=digits, overwrite=True)
    monkeypatch.undo()
    assert out.read_bytes() == old_model   # the old model, beside the new summary ...
    assert json.loads((tmp_path / "m.onnx.json").read_text())["verification"] != first.summary["verification"]
    assert export_summary_of(out) is None  # ... which does not describe it, so is not read as its summary
    assert json.loads((tmp_path / "m.onnx.json").read_text())["replaces_sha256"] == sha256_file(out)
    again = export_onnx(mlp_artifact, out, ExportConfig(), data=digits, overwrite=True)  # and --overwrite recovers
    assert export_summary_of(out) == again.summary


def test_gate_rejects_any_top1_disagreement_even_within_atol():
    from export.verify import check_parity, parity

    reference = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], np.float32)
    flipped = reference + np.array([[0, 0], [0, 0], [0, 2.5]], np.float32)  # the last row's top-1 flips
    results = [parity(reference, flipped, 1)]
    assert results[0].disagreements == 1 and results[0].top1_agreement == pytest.approx(2 / 3)
    with pytest.raises(ExportError, match=r"top-1 agreement 66.67% \(1 disagreement\)"):
        check_parity(results, atol=10.0, what="exported fp32 model")
    check_parity([parity(reference, reference + 1e-5, 1)], atol=1e-4, what="exported fp32 model")


def test_the_fp32_gate_allows_pytorchs_own_float32_rounding_on_a_wide_layer(tmp_path):
    """150,528 pixels summed into each unit, then BatchNorm over photos that differ little (so it divides the large
    sums' rounding by a small spread): a correct export differs from PyTorch by more than atol 1e-4 + rtol x |logit|,
    but by about as much as PyTorch's own float32 differs from float64, which the gate allows (NOISE_FACTOR times)."""
    from export.onnx_export import torch_to_onnx
    from export.verify import NOISE_FACTOR, check_parity, float32_noise, measure_parity, open_session, parity, torch_logits

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 224 * 224, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.ReLU(), torch.nn.Linear(16, 10)).eval()
    x = (torch.randint(0, 200, (1, 3, 224, 224)) + torch.randint(0, 2, (32, 3, 224, 224))).float()
    with torch.no_grad():
        sums = model[1](model[0](x))
        model[2].running_mean.copy_(sums.mean(0)), model[2].running_var.copy_(sums.var(0))
    reference = torch_logits(model, x)
    noise = float32_noise(model, x, reference)
    torch_to_onnx(model, x[:2], tmp_path / "wide.onnx", DEFAULT_OPSET)
    results = measure_parity(open_session(tmp_path / "wide.onnx"), x.numpy(), reference, rtol=1e-5)
    with pytest.raises(ExportError, match="does not match PyTorch"):   # the fixed tolerance alone refuses it
        check_parity(results, atol=1e-4, rtol=1e-5, what="exported fp32 model")
    check_parity(results, atol=1e-4, rtol=1e-5, what="exported fp32 model", noise=noise)
    asked = []   # measured only when the fixed tolerance alone refuses (the float64 pass is costly on a big model)
    check_parity(results, atol=1e-4, rtol=1e-5, what="exported fp32 model", noise=lambda: asked.append(1) or noise)
    check_parity(results, atol=1.0, rtol=1e-5, what="exported fp32 model", noise=lambda: asked.append(2) or noise)
    assert asked == [1]
    from export.verify import LazyNoise

    record = {}
    lazy = LazyNoise(model, x, reference, record)
    check_parity(results, atol=1e-4, rtol=1e-5, what="exported fp32 model", noise=lazy)
    assert record == {"float32_noise": noise} and lazy() == noise   # measured once, recorded in the summary
    broken = [parity(reference, reference + 2 * NOISE_FACTOR * noise, 1, 1e-5)]   # a real error still fails
    with pytest.raises(ExportError, match=r"4 x PyTorch's own float32 rounding here \(\d\.\de-0[45]\)"):
        check_parity(broken, atol=1e-4, rtol=1e-5, what="exported fp32 model", noise=noise)


def test_the_pytorch_reference_of_large_images_is_computed_a_bounded_chunk_at_a_time():
    from edgekd.data import INFERENCE_CHUNK_BYTES
    from export.verify import torch_logits

    seen = []

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3 * 224 * 224, 10)

        def forward(self, x):
            seen.append(len(x))
            return self.linear(x.reshape(len(x), -1))

    assert torch_logits(Flat(), torch.zeros(200, 3, 224, 224, dtype=torch.uint8)).shape == (200, 10)
    assert sum(seen) == 200 and max(seen) * 3 * 224 * 224 * 4 <= INFERENCE_CHUNK_BYTES


def test_float32_noise_is_zero_for_a_model_that_cannot_run_in_float64(digits):
    from export.verify import float32_noise

    class Fixed(torch.nn.Module):   # a user's forward that casts its input to float32 whatever the weights are
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.linear(x.reshape(len(x), -1).float())

    x = digits.x_val[:8]
    assert float32_noise(Fixed(), x, Fixed()(x.float()).detach().numpy()) == 0.0


def test_int8_gate_rejects_a_broken_quantized_model(monkeypatch, tmp_path, digits, tiny_student):
    def broken(src, dst, mode, *, calibration, workdir, quant_format="qdq"):  # a "quantizer" that zeroes every float weight
        from onnx import numpy_helper

        proto = onnx.load(str(src))
        for init in proto.graph.initializer:
            weights = numpy_helper.to_array(init)
            if weights.dtype.kind == "f":
                init.CopyFrom(numpy_helper.from_array(np.zeros_like(weights), init.name))
        onnx.save(proto, str(dst))
        return {"mode": mode}

    monkeypatch.setattr(onnx_export, "quantize_model", broken)
    out = tmp_path / "m.int8.onnx"
    with pytest.raises(ExportError, match=r"The quantized model loses \d+\.\d\d accuracy points on the test split "
                                          r"\(n=359\).*--max-accuracy-drop allows 1"):
        export_onnx(tiny_student, out, ExportConfig(quantize="dynamic"), data=digits)
    assert list(tmp_path.iterdir()) == []


def test_onnxruntime_quantizer_temporaries_stay_in_the_exports_own_folder(monkeypatch, tmp_path, digits, tiny_student):
    """onnxruntime's quantizer makes ort.quant.* folders (a copy of the model) in the system's temporary folder,
    where a killed export left them, and may save sym_shape_infer_temp.onnx in the current folder, over a
    user's file: both are made in the export's own temporary folder now."""
    import os
    import tempfile

    import onnxruntime.quantization as ortq

    where, real = [], ortq.quantize_static

    def recorded(*args, **kwargs):
        where.append((tempfile.gettempdir(), os.getcwd()))
        return real(*args, **kwargs)

    monkeypatch.setattr(ortq, "quantize_static", recorded)
    shutil.copytree(tiny_student, tmp_path / "student")
    monkeypatch.chdir(tmp_path)   # relative paths, from the user's folder
    export_onnx("student", Path("m.int8.onnx"), ExportConfig(quantize="int8", calibration_size=32), data=digits,
                calibration=digits)
    assert len(where) == 1 and where[0][0] == where[0][1]   # its temporaries and its current folder: the export's
    assert Path(where[0][0]).parent == tmp_path and Path(where[0][0]).name.endswith(".edgekd-tmp")
    assert tempfile.gettempdir() != where[0][0] and os.getcwd() == str(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx", "m.int8.onnx.json", "student"]


def test_an_exporter_package_missing_is_named_as_the_install_not_the_model(monkeypatch, tmp_path, digits, tiny_student):
    """With onnxscript or onnx-ir missing (or too old for this torch) the export said the model failed to export."""
    def exporter_without_onnx_ir(*_args, **_kwargs):   # what torch raises when onnx-ir is absent
        raise ModuleNotFoundError("No module named 'onnx_ir'", name="onnx_ir")

    monkeypatch.setattr(torch.onnx, "export", exporter_without_onnx_ir)
    with pytest.raises(ExportError, match="torch.onnx.export cannot run: .*onnx_ir.*pip install -c constraints.txt"):
        export_onnx(tiny_student, tmp_path / "m.onnx", ExportConfig(), data=digits)


def test_export_onnx_refuses_an_executorch_config(tmp_path, tiny_student):
    """It wrote an ONNX graph named .pte (its summary saying onnx), to fail later on the device."""
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError, match="export_onnx writes ONNX; call export.export_executorch"):
        export_onnx(tiny_student, tmp_path / "s.pte", ExportConfig(executorch=True))
    assert list(tmp_path.iterdir()) == []


def test_accuracy_drop_gate_arithmetic():
    assert check_accuracy_drop(0.90, 0.895, max_drop=1.0, what="m", n=1000) == pytest.approx(0.5)
    with pytest.raises(ExportError, match="loses 1.50 accuracy points .* 90.00% in fp32, 88.50% after"):
        check_accuracy_drop(0.90, 0.885, max_drop=1.0, what="m", n=1000)


def test_teacher_ensemble_int8_ort_through_cli(edgekd, tmp_path, tiny_teacher, digits):
    out = tmp_path / "ensemble.int8.ort"
    code, stdout, err = edgekd("export", tiny_teacher, "--onnx", "--ort", "--quantize", "int8",
                            "--calibration-data", "digits", "--calibration-size", "128", "--out", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary == json.loads((tmp_path / "ensemble.int8.ort.json").read_text())
    assert summary["format"] == "ort" and summary["source"]["kind"] == "ensemble" and summary["source"]["members"] == 2
    assert all(p["max_abs_diff"] <= 1e-4 for p in summary["verification"]["fp32"]["parity"])  # the one-graph ensemble
    s = session(out)  # the .ort loads back
    assert len(s.get_inputs()) == 1 and len(s.get_outputs()) == 1
    assert json.loads(s.get_modelmeta().custom_metadata_map["edgekd.source"])["kind"] == "ensemble"
    logits = s.run(None, {"input": digits.x_test.numpy()})[0]
    assert float((logits.argmax(1) == digits.y_test.numpy()).mean()) == pytest.approx(summary["verification"]["ort"]["test_accuracy"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ensemble.int8.ort", "ensemble.int8.ort.json"]


def test_ort_optimization_level_extended_fuses_what_basic_keeps(tmp_path, tiny_student, digits):
    """Extended (the default) folds the int8 QDQ pairs into fused CPU kernels; basic keeps them for a
    phone's hardware execution provider. Both are verified the same way."""
    from export.mobile import to_ort_format

    int8 = tmp_path / "s.int8.onnx"
    export_onnx(tiny_student, int8, ExportConfig(quantize="int8", calibration_size=64, max_accuracy_drop=100.0),
                data=digits, calibration=digits)
    paths = {level: tmp_path / f"s.{level}.ort" for level in ("basic", "extended")}
    for level, path in paths.items():
        to_ort_format(int8, path, level)
    assert paths["basic"].read_bytes().count(b"DequantizeLinear") > paths["extended"].read_bytes().count(b"DequantizeLinear")
    result = export_onnx(tiny_student, tmp_path / "s.ort", ExportConfig(quantize="int8", ort=True, calibration_size=64,
                                                                         max_accuracy_drop=100.0), data=digits, calibration=digits)
    assert result.summary["verification"]["ort"]["optimization"] == "extended"
    with pytest.raises(ConfigError, match="ort_optimization"):
        ExportConfig(ort=True, ort_optimization="all")


def test_student_ort_with_uint8_input(edgekd, tmp_path, tiny_student, digits):
    out = tmp_path / "student.ort"
    code, stdout, err = edgekd("export", tiny_student, "--ort", "--uint8-input", "--out", out)
    assert code == 0, err
    assert "ORT format, loaded back" in stdout
    s = session(out)
    assert s.get_inputs()[0].type == "tensor(uint8)"
    assert read_metadata(out)["input_dtype"] == "uint8"
    pixels = digits.x_val.numpy().astype(np.uint8)  # raw pixels as a device reads them
    expected = load_teacher(tiny_student).logits(digits.x_val).numpy()
    np.testing.assert_allclose(s.run(None, {"input": pixels})[0], expected, atol=1e-4)


def test_uint8_input_refuses_non_pixel_data(tmp_path, mlp_artifact, digits):
    from dataclasses import replace

    scaled = replace(digits, x_val=digits.x_val / 3, _fingerprints={})
    with pytest.raises(ExportError, match="whole pixel values in 0..255"):
        export_onnx(mlp_artifact, tmp_path / "m.onnx", ExportConfig(uint8_input=True), data=scaled)
    assert list(tmp_path.iterdir()) == []


def test_uint8_input_names_the_whole_splits_range_when_read_by_chunks(monkeypatch):
    from export.source import ModelInputs

    monkeypatch.setattr(ModelInputs, "CHECK_ROWS", 2)
    x = torch.tensor([[0.0], [300.0], [4.0], [-7.5]])   # the first chunk is out of range, the second too, and not whole
    with pytest.raises(ExportError, match=r"values in \[-7\.5, 300\] that are not whole numbers"):
        ModelInputs(x, True, "npz:x.npz")
    assert np.asarray(ModelInputs(torch.tensor([[0.0], [255.0], [7.0]]), True, "s")).tolist() == [[0], [255], [7]]


def _as_specialist_artifact(monkeypatch, tmp_path, source, module):
    """A copy of ``source`` of kind "specialist-ensemble", loaded by a stand-in loader whose teacher's
    ``module()`` is ``module`` (None: no graph form)."""
    from edgekd import teachers

    folder = tmp_path / "spec"
    shutil.copytree(source, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["kind"] = "specialist-ensemble"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    real = load_teacher(source)

    class Stand_in(teachers.Teacher):
        description = "specialist-ensemble stand-in"

        def module(self):
            return module

        def _logits(self, x):
            return real.logits(x) + 0.01  # "the solver run to convergence": a little off the fixed-step module

    # the stand-in serves the kind for this test only (monkeypatch puts the real registry back)
    monkeypatch.setattr(teachers, "_TEACHER_KINDS", {"specialist-ensemble": lambda artifact: Stand_in()})
    return folder, real


def test_specialist_ensemble_without_a_graph_form_says_why(monkeypatch, tmp_path, mlp_artifact):
    folder, _ = _as_specialist_artifact(monkeypatch, tmp_path, mlp_artifact, None)
    with pytest.raises(ExportError, match="cannot be exported as one graph: its combination solves"):
        onnx_export.load_source(folder)


def test_specialist_ensemble_with_a_fixed_step_module_exports(monkeypatch, tmp_path, mlp_artifact, digits):
    module = load_teacher(mlp_artifact).module()
    folder, _ = _as_specialist_artifact(monkeypatch, tmp_path, mlp_artifact, module)
    result = export_onnx(folder, tmp_path / "spec.onnx", ExportConfig(), data=digits)
    assert result.summary["source"]["kind"] == "specialist-ensemble"
    assert result.summary["verification"]["fixed_steps_vs_solver"]["max_abs_diff"] == pytest.approx(0.01, abs=1e-5)
    assert all(p.max_abs_diff <= 1e-4 for p in result.parity)


# --- bad inputs through the CLI ----------------------------------------------------------------------

@pytest.mark.parametrize("case", ["not-a-model-file", "folder-without-manifest", "missing", "opset-11", "opset-99",
                                  "missing-out-folder", "ort-suffix-without-flag",
                                  "existing-out", "calibration-of-another-size"])
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(case, edgekd, tmp_path, tiny_student):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.onnx"
    model, extra = tiny_student, []
    if case == "not-a-model-file":
        model = tmp_path / "notes.txt"
        model.write_text("hello")
    elif case == "folder-without-manifest":
        model = tmp_path / "empty"
        model.mkdir()
    elif case == "missing":
        model = tmp_path / "nope"
    elif case == "opset-11":
        extra = ["--opset", "11"]
    elif case == "opset-99":
        extra = ["--opset", "99"]
    elif case == "missing-out-folder":
        out = tmp_path / "missing" / "m.onnx"
    elif case == "ort-suffix-without-flag":
        out = out_dir / "m.ort"
    elif case == "existing-out":
        out.write_bytes(b"old")
    elif case == "calibration-of-another-size":
        np.savez(tmp_path / "v.npz", x=np.random.default_rng(0).random((30, 16), np.float32), y=np.arange(30) % 10)
        extra = ["--quantize", "int8", "--calibration-data", f"npz:{tmp_path / 'v.npz'}"]
    code, stdout, err = edgekd("export", model, "--out", out, *extra)
    assert code == 2, (stdout, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    expected = {"not-a-model-file": "is not an edgekd model", "folder-without-manifest": "without manifest.json",
                "missing": "not found", "opset-11": "'opset' parameter (--opset) must be in [18,",
                "opset-99": "Got 99 instead",
                "missing-out-folder": "does not exist", "ort-suffix-without-flag": "pass --ort",
                "existing-out": "was not written by 'edgekd export'",
                "calibration-of-another-size": "has (16,); pass the data it was trained on with --calibration-data."}[case]
    assert expected in err
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == (["m.onnx"] if case == "existing-out" else [])
    assert case != "existing-out" or out.read_bytes() == b"old"


def test_config_validates_like_sklearn():
    with pytest.raises(ConfigError, match=r"The 'atol' parameter must be > 0 and finite. Got -1.0 instead."):
        ExportConfig(atol=-1.0)
    with pytest.raises(ConfigError, match=r"'quantize' parameter must be one of 'int8', 'dynamic'. Got 'int4'"):
        ExportConfig(quantize="int4")


def test_every_export_option_default_is_the_libraries():
    """The command reads its defaults from ExportConfig (export.config, which imports neither torch nor onnx:
    --help stays instant), where they live."""
    import subprocess
    import sys

    code = "import sys; import edgekd.commands.export; print('torch' in sys.modules, 'onnx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == ["False", "False"]
    import dataclasses

    from edgekd.commands.export import export_cmd

    fields = {f.name: f.default for f in dataclasses.fields(ExportConfig)}
    shared = {p.name: p.default for p in export_cmd.params if p.name in fields and p.name not in ("data", "val_fraction")
              and not getattr(p, "is_flag", False)}   # flags default to off, as the dataclass's booleans
    assert len(shared) >= 9 and shared == {name: fields[name] for name in shared}


def test_export_for_pipeline(tmp_path, tiny_student, tiny_teacher, digits):
    from edgekd.pipeline import export_for_pipeline
    from export import render_export_table

    rows = export_for_pipeline(tiny_student, tiny_teacher, digits, tmp_path / "exports", calibration_size=128,
                               max_accuracy_drop=100.0)
    assert set(rows) == {"student_fp32", "student_int8", "teacher"}
    assert all("error" not in row for row in rows.values()), rows
    assert rows["student_int8"]["precision"] == "int8-static-qdq" and rows["teacher"]["max_abs_diff"] <= 1e-4
    # the int8 student: static QDQ, calibrated on 128 train inputs, smaller, accuracy as claimed
    int8 = tmp_path / "exports" / "student.int8.onnx"
    summary = json.loads((tmp_path / "exports" / "student.int8.onnx.json").read_text())
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert summary["quantization"]["calibration_samples"] == 128 and summary["quantization"]["format"] == "QDQ"
    assert summary["sizes_bytes"]["int8_onnx"] < 0.75 * summary["sizes_bytes"]["fp32_onnx"]
    v = summary["verification"]
    assert v["reference_test_accuracy"] - v["int8"]["test_accuracy"] == pytest.approx(rows["student_int8"]["accuracy_drop_points"] / 100)
    logits = onnx_logits(int8, digits.x_test.numpy())
    assert float((logits.argmax(1) == digits.y_test.numpy()).mean()) == pytest.approx(rows["student_int8"]["test_accuracy"])
    assert {p.name for p in (tmp_path / "exports").iterdir()} == {
        "student.onnx", "student.onnx.json", "student.int8.onnx", "student.int8.onnx.json", "teacher.onnx", "teacher.onnx.json"}
    assert "| teacher | `teacher.onnx` |" in render_export_table(rows)
    # the teacher ensemble is one graph: one input, one output, the mean of its members' logits
    teacher_onnx = tmp_path / "exports" / "teacher.onnx"
    graph = onnx.load(str(teacher_onnx)).graph
    assert len(graph.input) == 1 and len(graph.output) == 1 and graph.output[0].name == "logits"
    expected = load_teacher(tiny_teacher).logits(digits.x_test).numpy()
    np.testing.assert_allclose(onnx_logits(teacher_onnx, digits.x_test.numpy()), expected, atol=1e-4)


@pytest.mark.slow
def test_export_report_smoke(tmp_path, mlp_artifact, digits):
    from benchmarks.export_report import main

    teacher = save_untrained(tmp_path / "teacher", TINY["mlp"], digits, members=2)
    out = tmp_path / "export_smoke.md"
    assert main(["--smoke", "--variants", "fp32", "--student", str(mlp_artifact), "--teacher", str(teacher),
                 "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["command"].startswith("python -m benchmarks.export_report --smoke")
    assert report["machine"]["cores"] >= 1 and "onnxruntime" in report["versions"]
    assert [(r["model"], r["variant"]) for r in report["rows"]] == [("student", "fp32"), ("teacher ensemble", "fp32")]
    assert all("error" not in r for r in report["rows"])
    text = out.read_text()
    assert text.startswith("# Export report: export_smoke") and "| teacher ensemble | fp32 |" in text


def test_int8_calibrates_on_the_artifacts_own_data_by_default(edgekd, tmp_path, tiny_student):
    out = tmp_path / "s.int8.onnx"
    code, stdout, err = edgekd("export", tiny_student, "--onnx", "--quantize", "int8", "--calibration-size", "64",
                               "--max-accuracy-drop", "100", "--out", out)   # the gate is tested elsewhere
    assert code == 0, err
    summary = json.loads((tmp_path / "s.int8.onnx.json").read_text())
    assert summary["quantization"]["calibration_data"] == "digits [train]"
    assert stdout.count(" bytes") == 2 and "the size of the fp32 graph" in stdout   # the file once, the fp32 size once


def flat_digits(tmp_path, digits):
    """digits stored as 64-long vectors, as a user's npz may hold them."""
    x = np.concatenate([digits.x_train, digits.x_val, digits.x_test]).reshape(-1, 64)
    y = np.concatenate([digits.y_train, digits.y_val, digits.y_test])
    np.savez(tmp_path / "flat.npz", x=x, y=y)
    return f"npz:{tmp_path / 'flat.npz'}"


def test_flat_data_of_the_models_size_is_read_as_its_images(edgekd, tmp_path, tiny_teacher, digits):
    # an internal error (mat1 and mat2 shapes cannot be multiplied) before Dataset.shaped
    code, stdout, err = edgekd("export", tiny_teacher, "--data", flat_digits(tmp_path, digits), "--out", tmp_path / "t.onnx")
    assert code == 0, err
    assert "top-1 agreement 100.00%" in stdout


def test_the_gate_reads_the_splits_a_slice_at_a_time(tiny_student, digits, tmp_path, monkeypatch):
    """No float32 copy of a whole split is made: every conversion is one batch of the parity or accuracy pass
    (an image folder's split is a memory-mapped file that may be larger than memory)."""
    import export.source

    converted, real = [], export.source.model_input
    monkeypatch.setattr(export.source, "model_input", lambda x, *a: converted.append(len(x)) or real(x, *a))
    result = export_onnx(tiny_student, tmp_path / "s.onnx", ExportConfig(), data=digits)
    assert result.test_accuracy > 0.5 and converted
    assert max(converted) <= 256 < len(digits.x_test), max(converted)   # 359 test images, never all at once
    assert sum(converted) >= len(digits.x_test)   # yet every test image was read


def test_the_export_records_its_sources_macs_and_parameters_for_bench(arch_exports):
    """As benchmarks.modelinfo reads them: the same counts for fp32 and for an int8 graph, whose own
    initializers (scales, zero points) would not count parameters."""
    from benchmarks.modelinfo import describe_model

    artifact, result = arch_exports["cnn"]
    metrics = load_artifact(artifact).manifest.metrics
    meta = read_metadata(result.path)
    assert int(meta["macs"]) == metrics["macs"] and int(meta["parameters"]) == metrics["parameters"]
    info = describe_model(result.path, "m")
    assert (info.macs, info.macs_source, info.parameters) == (metrics["macs"], "metadata", metrics["parameters"])


def test_overwrite_replaces_an_export_but_not_a_users_file_put_in_its_place(edgekd, tmp_path, tiny_student):
    """An edgekd summary beside the file is not enough: the file must be the one it describes, or the one it
    recorded as replaced (an export cut between its two renames). A user's own model in its place, or the
    export edited in place with edgekd's metadata kept (onnxsim, a script's onnx.save), is kept."""
    import json

    from edgekd.artifacts import sha256_file

    out = tmp_path / "m.onnx"
    code, _, err = edgekd("export", tiny_student, "--quiet", "--out", out)
    assert code == 0, err
    summary = out.with_name("m.onnx.json")
    record = json.loads(summary.read_text())
    # as after an export cut between renaming the summary and the model: the old model beside the new summary
    record["model_sha256"], record["replaces_sha256"] = "0" * 64, sha256_file(out)
    summary.write_text(json.dumps(record))
    code, _, err = edgekd("export", tiny_student, "--quiet", "--overwrite", "--out", out)
    assert code == 0, err
    edited = onnx.load(str(out))
    edited.producer_name = "user-tool"   # edited in place, edgekd's metadata kept
    onnx.save(edited, str(out))
    code, _, err = edgekd("export", tiny_student, "--quiet", "--overwrite", "--out", out)
    assert code == 2 and "it is not the file its summary 'm.onnx.json' describes" in err
    assert onnx.load(str(out)).producer_name == "user-tool"
    out.write_bytes(b"my hand-optimised model")
    code, _, err = edgekd("export", tiny_student, "--quiet", "--overwrite", "--out", out)
    assert code == 2 and "it is not the file its summary 'm.onnx.json' describes" in err
    assert out.read_bytes() == b"my hand-optimised model"


def test_a_report_row_of_an_executorch_export():
    """result_row read sizes_bytes['fp32_onnx'], which a .pte summary does not have (KeyError)."""
    from pathlib import Path

    from export.onnx_export import ExportResult
    from export.summary import result_row
    from export.verify import Parity

    parity = (Parity(batch_size=1, n=8, max_abs_diff=1e-6, mean_abs_diff=1e-7, top1_agreement=1.0, disagreements=0),)
    result = ExportResult(path=Path("s.pte"), summary_path=Path("s.pte.json"), format="pte", precision="fp32", opset=None,
                          size_bytes=1000, parity=parity, test_accuracy=0.9, reference_test_accuracy=0.9,
                          accuracy_drop=None, seconds=1.0, summary={"sizes_bytes": {"fp32_pte": 1000, "model": 1000}})
    assert result_row(result)["fp32_size_bytes"] == 1000


def test_an_export_used_as_a_teacher_meets_the_checks_its_artifact_meets(tmp_path, tiny_student, digits):
    """Its metadata carries the classes and the split it was trained with: another class order, or another
    --val-fraction (rows it trained on scored as val), is refused for the file as for the folder."""
    import dataclasses

    from edgekd.data import load_dataset
    from edgekd.errors import DataError, TeacherError
    from edgekd.teachers import check_teacher_fits

    path = tmp_path / "s.onnx"
    export_onnx(tiny_student, path, ExportConfig(), data=digits)
    teacher = load_teacher(path)
    assert teacher.classes == digits.classes and teacher.trained_on["n_val"] == len(digits.y_val)
    check_teacher_fits(teacher, digits)
    with pytest.raises(TeacherError, match="in another order"):
        check_teacher_fits(teacher, dataclasses.replace(digits, classes=digits.classes[::-1]))
    with pytest.raises(DataError, match="rows it trained on would be scored as held out"):
        check_teacher_fits(teacher, load_dataset("digits", val_fraction=0.3))
    assert load_teacher(path, output="logits").classes == digits.classes


def test_read_metadata_of_a_missing_file_says_so(tmp_path):
    from edgekd.errors import ConfigError
    from export import read_metadata

    with pytest.raises(ConfigError, match="File '.*none.onnx' not found; pass a .onnx or .ort file written by 'edgekd export'"):
        read_metadata(tmp_path / "none.onnx")


def test_the_file_stages_take_a_teacher_loaded_from_an_artifact(tmp_path, tiny_student, digits):
    """export_onnx, build_specialists and run_benchmark took paths only: a loaded teacher was a TypeError."""
    from benchmarks.harness import BenchConfig, run_benchmark
    from edgekd.teachers import load_teacher

    teacher = load_teacher(tiny_student)
    assert export_onnx(teacher, tmp_path / "s.onnx", data=digits).path == tmp_path / "s.onnx"
    report = run_benchmark(teacher, digits, BenchConfig(runtimes=("pytorch",), batch_sizes=(1,), threads=(1,),
                                                        seconds=0.01, rounds=1, eval_samples=32))
    assert [r for r in report.rows if r["status"] == "ok"]
