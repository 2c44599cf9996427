"""``benchmarks.mobile_runtimes``: ExecuTorch, ncnn and MNN rows in the benchmark, on tiny real models.

Marked ``mobile``; each test skips when its runtime is not installed (``pip install ".[mobile]"``)."""

from __future__ import annotations

import pytest

FAST = dict(batch_sizes=(1, 4), threads=(1,), seconds=0.05, rounds=2, min_runs=2, warmup_seconds=0.01,
            floor_seconds=0.02, probe_seconds=0.02, check_samples=32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_student, digits):
    """The tiny student as fp32 and int8 ONNX (and, with ExecuTorch, a batch-1 .pte)."""
    from export import ExportConfig, export_onnx

    folder = tmp_path_factory.mktemp("mobile")
    paths = {"fp32": folder / "s.onnx", "int8": folder / "s.int8.onnx"}
    export_onnx(tiny_student, paths["fp32"], ExportConfig(), data=digits)
    export_onnx(tiny_student, paths["int8"], ExportConfig(quantize="int8", max_accuracy_drop=100.0, calibration_size=64),
                data=digits, calibration=digits)
    return paths


def _rows(report, runtime):
    return [r for r in report.rows if r["runtime"] == runtime]


@pytest.mark.mobile
@pytest.mark.parametrize("runtime, package", [("ncnn", "ncnn"), ("mnn", "MNN")])
def test_converted_runtime_times_fp32_and_skips_int8_with_the_reason(runtime, package, exported, tiny_student, digits):
    pytest.importorskip(package)
    from benchmarks.harness import BenchConfig, run_benchmark

    models = [f"student={tiny_student}", f"fp32={exported['fp32']}", f"int8={exported['int8']}"]
    before = sorted(p.name for p in exported["fp32"].parent.iterdir())
    report = run_benchmark(models, digits, BenchConfig(runtimes=("pytorch", "onnxruntime", runtime), **FAST))
    assert sorted(p.name for p in exported["fp32"].parent.iterdir()) == before   # nothing written beside the inputs
    ok = [r for r in _rows(report, runtime) if r["status"] == "ok"]
    assert {(r["model"], r["batch_size"]) for r in ok} == {("fp32", 1), ("fp32", 4)}
    skipped = [r for r in _rows(report, runtime) if r["model"] == "int8"]
    assert skipped and all(r["status"] == "skipped" and "int8" in r["error"] for r in skipped)
    parity = next(p for p in report.parity if p["runtime"] == runtime and p["model"] == "fp32")
    assert parity["reference_runtime"] == "pytorch (source artifact)"
    assert parity["max_abs_diff"] < 1e-4 and parity["agreement"] == 1.0
    record = next(r for r in report.runtimes if r["name"] == runtime)
    conversion = record["conversions"][str(exported["fp32"])]
    assert conversion["source_sha256"] and conversion["seconds"] >= 0
    assert conversion["cached"] is False   # this run converted it (each test has a cache of its own)
    from benchmarks.report import render_markdown
    assert f"`{exported['fp32'].name}` by {conversion['tool']}" in render_markdown(report.to_dict())
    floors = [f for f in report.floors if f["runtime"] == runtime]
    assert floors and all(f["status"] == "ok" for f in floors)


@pytest.mark.mobile
@pytest.mark.parametrize("runtime, package", [("ncnn", "ncnn"), ("mnn", "MNN")])
def test_an_ensemble_teacher_converts_to_its_mean_logits(runtime, package, tiny_teacher, digits, tmp_path):
    """The ensemble as one graph on a mobile runtime gives the members' mean, not their logits side by side
    (pnnx drops the batch axis: a mean over a leading members axis once reduced nothing on ncnn)."""
    pytest.importorskip(package)
    from benchmarks.harness import BenchConfig, run_benchmark
    from export import ExportConfig, export_onnx

    onnx_path = tmp_path / "teacher.onnx"
    export_onnx(tiny_teacher, onnx_path, ExportConfig(), data=digits)
    report = run_benchmark([f"teacher={onnx_path}"], digits, BenchConfig(runtimes=("onnxruntime", runtime), **FAST))
    parity = next(p for p in report.parity if p["runtime"] == runtime)
    assert parity["error"] is None and parity["max_abs_diff"] < 1e-4 and parity["agreement"] == 1.0
    assert {r["status"] for r in _rows(report, runtime)} == {"ok"}


def test_conversion_cache_is_keyed_by_the_file_content(tmp_path):
    """Converted once per content: the same bytes under another name reuse it, changed bytes convert anew."""
    from benchmarks.mobile_runtimes import convert_cached

    calls = []

    def convert(src, folder):
        calls.append(src)
        (folder / "model.mnn").write_bytes(src.read_bytes())
        return {"tool": "test"}

    model, other = tmp_path / "m.onnx", tmp_path / "other.onnx"
    model.write_bytes(b"graph-1")
    other.write_bytes(b"graph-1")
    folder, first = convert_cached(model, "mnn", convert)
    assert first["cached"] is False and first["source_sha256"] and len(calls) == 1
    assert convert_cached(model, "mnn", convert)[1]["cached"] is True
    assert convert_cached(other, "mnn", convert)[0] == folder and len(calls) == 1
    model.write_bytes(b"graph-2")
    changed, record = convert_cached(model, "mnn", convert)
    assert changed != folder and record["cached"] is False and len(calls) == 2
    assert (changed / "model.mnn").read_bytes() == b"graph-2"


def test_conversion_covers_external_weights_and_a_failed_one_leaves_nothing(tmp_path, monkeypatch):
    """A graph whose weights sit in NAME.onnx.data: other weights are another conversion, and the converter gets
    them beside its copy; a converter that fails leaves no temporary folder in the cache."""
    import onnx
    import torch

    from benchmarks.mobile_runtimes import _cache_dir, convert_cached

    seen = []

    def convert(src, folder):
        seen.append(sorted(p.name for p in folder.iterdir()))
        return {"tool": "test"}

    paths = []
    for sign in (1.0, -1.0):
        folder = tmp_path / f"m{sign:+.0f}"
        folder.mkdir()
        net = torch.nn.Linear(64, 10)
        with torch.no_grad():
            net.weight.fill_(sign)
            net.bias.zero_()   # small enough to stay in the graph: the same in both
        torch.onnx.export(net, (torch.zeros(1, 64),), str(folder / "m.onnx"), dynamo=True)
        onnx.save(onnx.load(str(folder / "m.onnx")), str(folder / "m.onnx"), save_as_external_data=True,
                  all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=256)
        paths.append(folder / "m.onnx")
    assert paths[0].read_bytes() == paths[1].read_bytes()   # the graphs alike, the weights not
    first, second = convert_cached(paths[0], "mnn", convert)[0], convert_cached(paths[1], "mnn", convert)[0]
    assert first != second and seen[0] == ["m.onnx.data", "source.onnx"]

    def broken(src, folder):
        raise RuntimeError("converter failed")

    (tmp_path / "x.onnx").write_bytes(b"graph-x")
    with pytest.raises(RuntimeError):
        convert_cached(tmp_path / "x.onnx", "mnn", broken)
    assert not [p for p in _cache_dir().iterdir() if ".tmp" in p.name]


def test_a_converter_writing_beside_its_input_leaves_the_users_folder_alone(tmp_path, monkeypatch):
    """pnnx writes ``<input>.pnnxsim.onnx`` beside the file it converts: that must be edgekd's copy."""
    from benchmarks.mobile_runtimes import convert_cached

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    users = tmp_path / "mine"
    users.mkdir()
    (users / "m.onnx").write_bytes(b"graph")

    def convert(src, folder):
        src.with_suffix(".pnnxsim.onnx").write_bytes(b"side")   # as pnnx does
        (folder / "model.mnn").write_bytes(src.read_bytes())
        return {"tool": "test"}

    folder, _ = convert_cached(users / "m.onnx", "mnn", convert)
    assert sorted(p.name for p in users.iterdir()) == ["m.onnx"]
    assert sorted(p.name for p in folder.iterdir()) == ["conversion.json", "model.mnn"]


@pytest.mark.mobile
def test_executorch_rows_run_their_batch_and_skip_others(tmp_path, tiny_student, digits):
    pytest.importorskip("executorch.runtime")
    from benchmarks.harness import BenchConfig, run_benchmark
    from export import ExportConfig, export_executorch

    pte = export_executorch(tiny_student, tmp_path / "s.pte", ExportConfig(executorch=True), data=digits).path
    config = BenchConfig(runtimes=("pytorch", "executorch"), **{**FAST, "threads": (1, 2)})
    report = run_benchmark([f"student={tiny_student}", f"pte={pte}"], digits, config)
    rows = _rows(report, "executorch")
    assert {(r["batch_size"], r["threads"], r["status"]) for r in rows} == {
        (1, 1, "ok"), (1, 2, "ok"), (4, 1, "skipped"), (4, 2, "skipped")}
    assert all("--batch-size 4" in r["error"] for r in rows if r["status"] == "skipped")
    model = next(m for m in report.models if m["name"] == "pte")
    assert model["format"] == "pte" and model["fixed_batch"] == 1 and model["macs"]
    assert model["agreement"] == 1.0
    parity = next(p for p in report.parity if p["runtime"] == "executorch")
    assert parity["max_abs_diff"] < 1e-4


def test_a_missing_mobile_runtime_is_a_skipped_row(monkeypatch, exported, digits):
    """Without the extra installed the benchmark still runs, and each .onnx model MNN would have run gets a
    skipped row that says how to install it."""
    import builtins

    from benchmarks.harness import BenchConfig, run_benchmark

    real_import = builtins.__import__

    def no_mnn(name, *args, **kwargs):
        if name == "MNN":
            raise ImportError("No module named 'MNN'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mnn)
    report = run_benchmark([f"fp32={exported['fp32']}"], digits, BenchConfig(runtimes=("onnxruntime", "mnn"), **FAST))
    record = next(r for r in report.runtimes if r["name"] == "mnn")
    assert record["available"] is False and "edgekd[mobile]" in record["reason"]
    rows = _rows(report, "mnn")
    assert [(r["model"], r["status"]) for r in rows] == [("fp32", "skipped")] and "edgekd[mobile]" in rows[0]["error"]
    assert any(r["status"] == "ok" for r in _rows(report, "onnxruntime"))


@pytest.mark.mobile
@pytest.mark.parametrize("runtime, package", [("onnxruntime", "onnxruntime"), ("openvino", "openvino"), ("tract", "tract"),
                                              ("opencv", "cv2"), ("ncnn", "ncnn"), ("mnn", "MNN")])
def test_a_prediction_survives_the_next_call(runtime, package, exported, digits):
    """MNN handed out a view of its output buffer: evaluating the test split chunk by chunk turned every
    chunk into the last one (a 93% teacher scored 14%). Every runner's predictions are its own memory."""
    pytest.importorskip(package)
    import numpy as np

    from benchmarks.runtimes import get_runtime

    x = np.asarray(digits.split("test")[0], dtype=np.float32)
    runner = get_runtime(runtime).cls().load(exported["fp32"], 1)
    first = runner.predict(x[:64])
    kept = first.copy()
    runner.predict(x[64:128])
    np.testing.assert_array_equal(first, kept)


def test_a_conversion_finished_by_another_process_meanwhile_is_kept_not_deleted(tmp_path):
    """Two benches converting one model: the one finishing second keeps the folder the first is loading
    from (it deleted it, and the first's loads failed)."""
    import json

    from benchmarks.mobile_runtimes import _cache_dir, _model_key, convert_cached

    model = tmp_path / "m.onnx"
    model.write_bytes(b"graph")
    digest = _model_key(model, [])

    def convert(src, folder):   # while this runs, another process finishes the same conversion
        (folder / "model.mnn").write_bytes(b"mine")
        other = _cache_dir() / folder.name[1:].rsplit(".", 2)[0]
        other.mkdir()
        (other / "model.mnn").write_bytes(b"theirs")
        (other / "conversion.json").write_text(json.dumps({"source_sha256": digest}))
        return {"tool": "test"}

    folder, record = convert_cached(model, "mnn", convert)
    assert record["cached"] is False and (folder / "model.mnn").read_bytes() == b"theirs"
    assert [p.name for p in _cache_dir().iterdir() if digest[:32] in p.name] == [folder.name]   # its temporary one gone
