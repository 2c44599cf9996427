"""The benchmark harness on tiny digits models: statistics, error rows, reports, the CLI, the pipeline hook
and the latency scenario's smoke mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import runtimes as R
from benchmarks.harness import BenchConfig, run_benchmark
from edgekd.pipeline import bench_for_pipeline
from benchmarks.modelinfo import describe_model, graph_macs
from benchmarks.report import load_report, pareto_front, render_markdown, rerender, write_report
from benchmarks.timing import summarize, time_calls
from edgekd.errors import ConfigError

TINY = dict(batch_sizes=(1, 4), threads=(1,), seconds=0.03, rounds=2, min_runs=4, warmup_seconds=0.0,
            floor_seconds=0.01, probe_seconds=0.02, check_samples=32)


def mlp_onnx(artifact, path, *, quantize=False, batch="batch"):
    """The artifact's MLP written as an ONNX graph by hand (Sub, Div, Flatten, Gemm, Relu): no exporter needed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from torch import nn

    from edgekd.teachers import load_teacher

    teacher = load_teacher(artifact)
    net = teacher.module().members[0]
    inits = [numpy_helper.from_array(net.normalize.mean.numpy(), "mean"), numpy_helper.from_array(net.normalize.std.numpy(), "std")]
    nodes = [helper.make_node("Sub", ["x", "mean"], ["centred"]), helper.make_node("Div", ["centred", "std"], ["normed"])]
    current = "normed"
    for i, layer in enumerate(net.body):
        out = f"h{i}"
        if isinstance(layer, nn.Flatten):
            nodes.append(helper.make_node("Flatten", [current], [out], axis=1))
        elif isinstance(layer, nn.Linear):
            inits += [numpy_helper.from_array(layer.weight.detach().numpy(), f"w{i}"),
                      numpy_helper.from_array(layer.bias.detach().numpy(), f"b{i}")]
            nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out], transB=1))
        elif isinstance(layer, nn.ReLU):
            nodes.append(helper.make_node("Relu", [current], [out]))
        else:
            continue
        current = out
    nodes.append(helper.make_node("Identity", [current], ["logits"]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *teacher.input_shape])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, len(teacher.classes)])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), str(path))
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fp32 = path.with_name(path.stem + ".fp32-src.onnx")
        path.rename(fp32)
        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
    return path


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory, tiny_student):
    folder = tmp_path_factory.mktemp("onnx")
    corrupt = folder / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx file")
    return {"fp32": mlp_onnx(tiny_student, folder / "student.onnx"),
            "int8": mlp_onnx(tiny_student, folder / "student.int8.onnx", quantize=True), "corrupt": corrupt}


def wrap_calls(runner, wrap):
    """``runner`` whose bound calls (``bind(x)``, the thing timed and predicted through) are ``wrap(call)``."""
    bind = runner.bind
    runner.bind = lambda x: wrap(bind(x))
    return runner


@pytest.fixture(scope="module")
def broken_runtimes():
    """Three runtimes that fail in the three places a real one can: import, load, and while being timed."""
    @R.register_runtime("test-missing", formats=("onnx",), description="never installed", package="no-such-package")
    class Missing(R.Runtime):
        def _import(self):
            R.require_module("no_such_module_for_edgekd_tests", "no-such-package")

    @R.register_runtime("test-bad-load", formats=("onnx",), description="cannot parse graphs")
    class BadLoad(R.Runtime):
        def load(self, path, threads):
            raise RuntimeError("unsupported operator Gemm")

    @R.register_runtime("test-bad-call", formats=("onnx",), description="breaks after the warm-up")
    class BadCall(R.OnnxRuntime):
        def load(self, path, threads):
            def fragile(fn):
                calls = []

                def call():
                    calls.append(1)
                    if len(calls) > 3:  # the warm-up's 3 calls pass, the timed ones fail
                        raise RuntimeError("device lost")
                    return fn()
                return call
            return wrap_calls(super().load(path, threads), fragile)

    yield ("test-missing", "test-bad-load", "test-bad-call")
    for name in ("test-missing", "test-bad-load", "test-bad-call"):
        R._RUNTIMES.pop(name)


@pytest.fixture(scope="module")
def report(digits, tiny_teacher, tiny_student, onnx_models, broken_runtimes):
    config = BenchConfig(runtimes=("pytorch", "onnxruntime", *broken_runtimes), **TINY)
    models = [tiny_teacher, tiny_student, onnx_models["fp32"], f"int8={onnx_models['int8']}", onnx_models["corrupt"]]
    return run_benchmark(models, digits, config, command="pytest")


# --- statistics ------------------------------------------------------------------------------------

def test_summarize_percentiles_by_hand():
    stats = summarize([i * 1_000_000 for i in range(1, 101)], batch_size=4)  # 1..100 ms
    assert stats["runs"] == 100
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01) and stats["mean_ms"] == pytest.approx(50.5)
    assert stats["samples_per_s"] == pytest.approx(4 / 0.0505)


def test_time_calls_is_time_boxed_with_a_minimum():
    calls = []
    samples = time_calls(lambda: calls.append(1), 0.0, min_runs=7)
    assert len(samples) == len(calls) == 7 and all(s >= 0 for s in samples)
    samples = time_calls(lambda: sum(range(100)), 0.02, min_runs=1)
    assert sum(samples) / 1e9 <= 0.05 and len(samples) > 10


def test_pareto_front():
    points = [(1.0, 0.80), (2.0, 0.90), (3.0, 0.85), (0.5, 0.70), (4.0, 0.95), (2.0, 0.88)]
    assert pareto_front(points) == [3, 0, 1, 4]


# --- the harness -----------------------------------------------------------------------------------

def _rows(report, **match):
    return [r for r in report.rows if all(r[k] == v for k, v in match.items())]


def test_every_pair_measured_with_ordered_percentiles(report):
    ok = report.ok_rows()
    # teacher and student on pytorch, the two ONNX files on onnxruntime: 4 pairs x 2 batch sizes
    assert {(r["model"], r["runtime"]) for r in ok} == {("teacher", "pytorch"), ("student", "pytorch"),
                                                        ("student.onnx", "onnxruntime"), ("int8", "onnxruntime")}
    assert len(ok) == 4 * 2
    for r in ok:
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["runs"] >= TINY["min_runs"]
        assert r["samples_per_s"] == pytest.approx(r["batch_size"] / (r["mean_ms"] / 1e3))
        assert r["compute_floor_ms"] > 0 and r["runtime_floor_ms"] > 0
        assert r["floor_ms"] == pytest.approx(r["compute_floor_ms"] + r["runtime_floor_ms"])
        assert r["latency_over_floor"] == pytest.approx(r["p50_ms"] / r["floor_ms"])
    for r in _rows(report, model="teacher", status="ok"):
        assert r["speedup"] == 1.0
    student = _rows(report, model="student", batch_size=1, status="ok")[0]
    teacher = _rows(report, model="teacher", batch_size=1, status="ok")[0]
    assert student["speedup"] == pytest.approx(teacher["p50_ms"] / student["p50_ms"])


def test_compute_floor_uses_macs_and_the_measured_gemm_rate(report):
    teacher = next(m for m in report.models if m["name"] == "teacher")
    row = _rows(report, model="teacher", batch_size=4, status="ok")[0]
    assert row["compute_floor_ms"] == pytest.approx(teacher["macs"] * 4 * 2 / (report.peak_gflops["1"] * 1e9) * 1e3)


def test_int8_rows_use_the_measured_int8_peak(report):
    """An fp32 peak would put an int8 model's floor too high (its kernels do more MACs per cycle)."""
    row = _rows(report, model="int8", batch_size=4, status="ok")[0]
    macs = next(m for m in report.models if m["name"] == "int8")["macs"]
    assert row["compute_peak"] == "int8" and report.peak_int8_gops["1"] > 0
    assert row["compute_floor_ms"] == pytest.approx(macs * 4 * 2 / (report.peak_int8_gops["1"] * 1e9) * 1e3)
    assert _rows(report, model="student.onnx", batch_size=4, status="ok")[0]["compute_peak"] == "fp32"


def test_warm_figures_beside_the_round_robin_ones(digits, tiny_student):
    config = BenchConfig(**{**TINY, "warm_seconds": 0.02}, runtimes=("pytorch",))
    rows = run_benchmark([str(tiny_student)], digits, config).ok_rows()
    assert rows and all(r["warm_p50_ms"] > 0 and r["warm_p99_ms"] >= r["warm_p50_ms"] for r in rows)


def test_failures_become_rows_not_crashes(report):
    errors = report.error_rows()
    by = {(r["model"], r["runtime"]): r for r in errors}
    assert "cannot read the model" in by[("corrupt.onnx", None)]["error"]
    for model in ("student.onnx", "int8"):
        assert "no-such-package is not installed" in by[(model, "test-missing")]["error"]
        assert "unsupported operator Gemm" in by[(model, "test-bad-load")]["error"]
        timed = _rows(report, model=model, runtime="test-bad-call")
        assert [r["batch_size"] for r in timed] == [1, 4]
        assert all(r["status"] == "error" and "device lost" in r["error"] for r in timed)
    assert not any(r["model"] in ("teacher", "student") for r in errors)  # artifacts are not ONNX runtimes' business
    assert not any(r["model"] == "corrupt.onnx" and r["status"] == "ok" for r in report.rows)


def test_outputs_unlike_the_reference_are_an_error_row_not_a_timing(digits, onnx_models):
    """A runtime whose outputs cannot be compared with the reference (an ncnn ensemble once returned its
    members' logits side by side) is never timed, at any thread count."""
    @R.register_runtime("test-wide-output", formats=("onnx",), description="returns every logit three times")
    class Wide(R.OnnxRuntime):
        def load(self, path, threads):
            runner = super().load(path, threads)
            output = runner._output
            runner._output = lambda result: np.tile(output(result), 3)
            return runner

    try:
        config = BenchConfig(runtimes=("onnxruntime", "test-wide-output"), **{**TINY, "threads": (1, 2)})
        report = run_benchmark([onnx_models["fp32"]], digits, config)
    finally:
        R._RUNTIMES.pop("test-wide-output")
    rows = _rows(report, runtime="test-wide-output")
    assert sorted(r["threads"] for r in rows) == [1, 2]
    assert all(r["status"] == "error" and "outputs unlike the reference's" in r["error"] for r in rows)
    (parity,) = [p for p in report.parity if p["runtime"] == "test-wide-output"]
    assert parity["error"] and parity["max_abs_diff"] is None
    assert "returns (30,) values per input where the reference gives (10,)" in parity["error"]   # not numpy's broadcast
    assert {r["status"] for r in _rows(report, runtime="onnxruntime")} == {"ok"}


def test_model_facts_and_accuracy(report, digits, tiny_teacher, tiny_student):
    from edgekd.evaluate import evaluate
    from edgekd.teachers import load_teacher

    models = {m["name"]: m for m in report.models}
    expected = evaluate(load_teacher(tiny_student), digits, reference=load_teacher(tiny_teacher))
    student, onnx_student = models["student"], models["student.onnx"]
    assert student["accuracy"] == pytest.approx(expected.accuracy)
    assert student["agreement"] == pytest.approx(expected.agreement)
    assert models["teacher"]["agreement"] == 1.0
    # the hand-written ONNX graph computes the same function, and its MACs are counted on the graph
    assert onnx_student["accuracy"] == pytest.approx(student["accuracy"])
    assert onnx_student["macs"] == student["macs"] and onnx_student["macs_source"] == "graph"
    assert onnx_student["parameters"] == student["parameters"]  # initializers of more than one element
    assert models["int8"]["macs"] == student["macs"] and "int8" in models["int8"]["description"]
    assert models["int8"]["file_bytes"] < onnx_student["file_bytes"]
    assert abs(models["int8"]["accuracy"] - student["accuracy"]) < 0.05
    assert models["corrupt.onnx"]["error"]
    parity = {(p["model"], p["runtime"]): p for p in report.parity}
    # no model is compared with itself on its own reference runtime (that said 0.00e+00 / 100% before)
    assert ("student.onnx", "onnxruntime") not in parity and ("student", "pytorch") not in parity
    assert "device lost" not in str(parity[("student.onnx", "test-bad-call")])  # predict ran once, within the limit


def test_a_batch_size_other_than_the_models_fixed_one_is_a_skipped_row(digits, tiny_student, tmp_path):
    fixed = mlp_onnx(tiny_student, tmp_path / "batch1.onnx", batch=1)
    report = run_benchmark([fixed], digits, BenchConfig(runtimes=("onnxruntime",), **{**TINY, "batch_sizes": (1, 4)}))
    assert [(r["batch_size"], r["status"]) for r in report.rows] == [(1, "ok"), (4, "skipped")]
    assert report.rows[1]["error"].startswith("the model's batch is fixed at 1")
    batched = run_benchmark([str(tiny_student)], digits, BenchConfig(runtimes=("pytorch",), **{**TINY, "batch_sizes": (4,)}))
    # evaluated one sample at a time, to the accuracy of the artifact it came from, evaluated in batches (within
    # one image: the hand-written graph's float32 sums may round a near-tie the other way)
    assert report.models[0]["fixed_batch"] == 1
    assert abs(report.models[0]["accuracy"] - batched.models[0]["accuracy"]) <= 1 / len(digits.y_test) + 1e-9


@pytest.mark.parametrize("fixed", [1, 4])
def test_a_fixed_batch_export_is_checked_and_timed_beside_its_reference(digits, tiny_student, tmp_path, fixed):
    """Its parity check and evaluation feed it batches of its own size (the last one padded: 359 test images
    are not a multiple of 4), so it is timed at that batch, not refused as unlike the reference."""
    import onnx

    from edgekd.artifacts import sha256_file

    model = mlp_onnx(tiny_student, tmp_path / f"batch{fixed}.onnx", batch=fixed)
    proto = onnx.load(model)   # as an edgekd export records it: its parity is checked against the source artifact
    onnx.helper.set_model_props(proto, {"edgekd.source": json.dumps({"path": str(tiny_student),
                                                                     "manifest_sha256": sha256_file(tiny_student / "manifest.json")})})
    onnx.save(proto, model)
    config = BenchConfig(runtimes=("pytorch", "onnxruntime"), **{**TINY, "batch_sizes": (fixed,)})
    report = run_benchmark([str(tiny_student), model], digits, config)
    rows = [r for r in report.rows if r["model"] == Path(model).name]
    assert [(r["runtime"], r["batch_size"], r["status"]) for r in rows] == [("onnxruntime", fixed, "ok")], rows
    parity = next(p for p in report.parity if p["model"] == Path(model).name)
    assert parity["error"] is None and parity["agreement"] == 1.0 and parity["max_abs_diff"] < 1e-4
    models = {m["name"]: m for m in report.models}
    assert models[Path(model).name]["accuracy"] == pytest.approx(models["student"]["accuracy"], abs=1.01 / len(digits.y_test))


def test_runtime_floors_measured(report):
    floors = {(f["runtime"], f["batch_size"]): f for f in report.floors if f["status"] == "ok"}
    for runtime in ("pytorch", "onnxruntime"):
        for batch in (1, 4):
            assert 0 < floors[(runtime, batch)]["p50_ms"] < 5


def test_graph_macs_and_metadata(tmp_path, tiny_student, onnx_models):
    import onnx

    from edgekd.artifacts import load_artifact

    macs = load_artifact(tiny_student).manifest.metrics["macs"]
    assert graph_macs(onnx.load(str(onnx_models["fp32"]))) == macs
    proto = onnx.load(str(onnx_models["fp32"]))
    proto.metadata_props.add(key="edgekd.macs", value="12345")
    onnx.save(proto, str(tmp_path / "m.onnx"))
    info = describe_model(tmp_path / "m.onnx", "m")
    assert (info.macs, info.macs_source, info.input_shape) == (12345, "metadata", (1, 8, 8))


def test_unknown_runtime_lists_the_known_ones():
    with pytest.raises(ConfigError, match="Unknown runtime 'tensorrt'; choose one of pytorch, onnxruntime"):
        BenchConfig(runtimes=("tensorrt",))
    assert [e.name for e in R.list_runtimes()][:5] == ["pytorch", "onnxruntime", "openvino", "tract", "opencv"]


def test_bad_config_and_missing_model(digits):
    with pytest.raises(ConfigError, match="'batch_sizes' parameter must be an integer >= 1. Got 0"):
        BenchConfig(batch_sizes=(1, 0))
    with pytest.raises(ConfigError, match="'device' parameter must be one of .*Got 'gpu'"):
        BenchConfig(device="gpu")
    assert BenchConfig().device == "auto"   # as every command's --device: one default
    with pytest.raises(ConfigError, match="Model 'no/such/model' not found"):
        run_benchmark(["no/such/model"], digits, BenchConfig(**TINY))


@pytest.mark.parametrize("runtime", ["openvino", "tract", "opencv"])
def test_optional_runtime_runs_or_reports_why(digits, onnx_models, runtime):
    report = run_benchmark([onnx_models["fp32"]], digits, BenchConfig(runtimes=("onnxruntime", runtime), **TINY))
    rows = _rows(report, runtime=runtime)
    available = next(r for r in report.runtimes if r["name"] == runtime)["available"]
    if not available:
        assert len(rows) == 1 and rows[0]["status"] == "skipped" and "not installed" in rows[0]["error"]
        return
    assert [r["status"] for r in rows] == ["ok", "ok"]
    parity = next(p for p in report.parity if p["runtime"] == runtime)
    assert parity["max_abs_diff"] < 1e-3 and parity["agreement"] == 1.0


# --- reports ---------------------------------------------------------------------------------------

def test_report_files_and_identical_rerender(report, tmp_path):
    paths = write_report(report, tmp_path / "a")
    data = json.loads(paths["report_json"].read_text())
    assert data["format"] == "edgekd.bench" and len(data["rows"]) == len(report.rows)
    for key in ("latency_png", "pareto_png"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["report_md"].read_text()
    assert md.startswith("# edgekd benchmark on `digits`\n\n- command: `pytest`")
    for heading in ("## Headline", "## Models", "## Latency at 1 thread", "## Runtime per-call floor",
                    "## Errors and skipped measurements", "## Method"):
        assert heading in md
    assert "device lost" in md and "unsupported operator Gemm" in md
    again = rerender(paths["report_json"], tmp_path / "b")
    assert again["report_md"].read_bytes() == paths["report_md"].read_bytes()
    assert render_markdown(load_report(again["report_json"])) == md


@pytest.mark.parametrize("again", ["write", "rerender in place"])
def test_a_report_stopped_while_written_is_the_old_one_whole(report, tmp_path, monkeypatch, again):
    """Written file by file in place: a SIGTERM as the plots were drawn left the new report.json and report.md
    beside the old plots, while the command said nothing was replaced."""
    import benchmarks.report

    paths = write_report(report, tmp_path / "r")
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}

    def stopped(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmarks.report, "plot_pareto", stopped)
    changed = {**report.to_dict(), "command": "a newer run"}
    with pytest.raises(KeyboardInterrupt):
        write_report(changed, tmp_path / "r") if again == "write" else rerender(paths["report_json"])
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]   # no temporary left beside it


def test_load_report_refuses_other_json(tmp_path):
    from edgekd.errors import EdgekdError

    (tmp_path / "x.json").write_text('{"rows": []}')
    with pytest.raises(EdgekdError, match="not an edgekd benchmark report"):
        load_report(tmp_path / "x.json")


# --- CLI -------------------------------------------------------------------------------------------

def test_cli_end_to_end_and_from(edgekd, tmp_path, tiny_teacher, tiny_student, onnx_models):
    out = tmp_path / "rep"
    args = ["bench", "--model", str(tiny_teacher), "--model", f"student={tiny_student}", "--model", str(onnx_models["fp32"]),
            "--data", "digits", "--out", str(out), "--batch-sizes", "1,2", "--threads", "1",
            "--runtimes", "pytorch,onnxruntime", "--seconds", "0.02", "--rounds", "1", "--quiet", "--json"]
    code, stdout, err = edgekd(*args)
    assert code == 0, err
    summary = json.loads(stdout)
    assert [h["model"] for h in summary["headline"]] == ["teacher", "student", "student.onnx"]
    assert summary["errors"] == []
    md = (out / "report.md").read_text()
    assert "- command: `edgekd bench --model" in md and "--batch-sizes 1,2" in md
    code, stdout, err = edgekd("bench", "--from", out / "report.json", "--out", tmp_path / "again")
    assert code == 0, err
    assert (tmp_path / "again" / "report.md").read_text() == md
    before = sorted(p.name for p in out.iterdir())
    code, stdout, err = edgekd("bench", "--from", out / "report.json")   # in place, as the README shows it
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == before and (out / "report.md").read_text() == md
    code, _, err = edgekd(*args)  # the folder is not empty now
    assert code == 2 and "already exists" in err and err.count("\n") == 1


@pytest.mark.parametrize("extra, message", [
    (["--model", "no/such/dir"], "Model 'no/such/dir' not found"),
    (["--batch-sizes", "1,0"], "The 'batch_sizes' parameter (--batch-sizes) must be a comma-separated list of integers in [1, 65536]"),
    (["--batch-sizes", "a"], "The 'batch_sizes' parameter"),
    (["--threads", "0"], "The 'threads' parameter"),
    (["--runtimes", "tensorrt"], "Unknown runtime 'tensorrt'"),
])
def test_cli_bad_inputs_exit_2_in_one_line(edgekd, tmp_path, tiny_student, extra, message):
    args = ["bench", "--model", str(tiny_student), "--out", str(tmp_path / "r"), *extra]
    code, _, err = edgekd(*args)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_cli_needs_a_model_or_a_report(edgekd, tmp_path):
    code, _, err = edgekd("bench", "--out", tmp_path / "r")
    assert code == 2 and "at least one --model" in err and err.count("\n") == 1
    code, _, err = edgekd("bench", "--from", tmp_path / "none.json")
    assert code == 2 and "not found" in err and err.count("\n") == 1


# --- pipeline hook and the latency scenario ----------------------------------------------------------

def test_bench_for_pipeline(digits, tiny_teacher, tiny_student, tmp_path):
    result = bench_for_pipeline([tiny_teacher, tiny_student, tiny_student / "baseline"], digits, tmp_path / "bench")
    assert set(result) >= {"report_json", "report_md", "latency_png", "pareto_png", "headline", "errors", "wall_seconds"}
    head = {h["model"]: h for h in result["headline"]}
    assert set(head) == {"teacher", "student", "baseline"} and head["teacher"]["speedup"] == 1.0
    assert result["errors"] == 0
    data = load_report(result["report_json"])
    assert data["config"]["threads"] == [1] and data["config"]["batch_sizes"] == [1, 32]


@pytest.mark.slow
def test_latency_report_smoke(tmp_path, capsys):
    from benchmarks.latency_report import main

    out = tmp_path / "latency_smoke"
    assert main(["--smoke", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "(a) `student-int8-ort" in stdout and "faster than `teacher` on pytorch" in stdout
    md = (out / "report.md").read_text()
    lines = md.splitlines()
    assert lines[0].startswith("# Latency: teacher ensemble vs student fp32 vs student int8")
    assert lines[2] == f"- command: `python -m benchmarks.latency_report --smoke --out {out}`"
    assert lines[3].startswith("- date: ") and lines[4].startswith("- machine: ") and lines[5].startswith("- versions: ")
    data = load_report(out / "report.json")
    heads = data["extra"]["headlines"]
    a, b = heads["a"], heads["b"]
    assert a["model"].startswith("student-int8-ort") and a["runtime"] == "onnxruntime"   # the .ort is the mobile file here
    assert (a["reference_model"], a["reference_runtime"]) == ("teacher", "pytorch")
    # the headline ratio is paired by round; the pooled-p50 ratio stands beside it
    assert a["paired"]["rounds"] == 2 and a["paired"]["min"] <= a["speedup"] <= a["paired"]["max"]
    assert a["speedup"] == pytest.approx(a["paired"]["median"]) and a["warm_speedup"] > 0
    assert a["pooled_speedup"] == pytest.approx(a["reference_p50_ms"] / a["p50_ms"])
    assert b["reference_p50_ms"] <= a["reference_p50_ms"]   # the teacher's fastest runtime is at least as fast as eager
    assert math.isfinite(heads["quantization"]["points_lost"])
    assert {o["model"] for o in heads["ort"]} == {"student-int8-ort", "student-int8-ort-basic"}
    assert all(o["pooled_ratio"] == pytest.approx(o["p50_ms"] / o["onnx_p50_ms"]) for o in heads["ort"])
    assert all(o["ratio"] == pytest.approx(o["paired"]["median"]) for o in heads["ort"])
    # the headline rows timed again on their own, in more rounds: the aims are judged there
    confirmation, confirmed = data["extra"]["confirmation"], data["extra"]["confirmed"]
    assert confirmation["config"]["rounds"] == 6 and confirmation["config"]["batch_sizes"] == [1]
    timed = {(r["model"], r["runtime"]) for r in confirmation["rows"] if r["status"] == "ok"}
    assert timed == {(a["model"], "onnxruntime"), ("teacher", "pytorch"), (b["reference_model"], b["reference_runtime"])}
    ca = confirmed["a"]
    assert ca["paired"]["rounds"] == 6 and ca["paired"]["low"] <= ca["speedup"] <= ca["paired"]["high"]
    assert ca["verdict"] in ("meets", "misses", "undecided") and ca["meets"] == (ca["verdict"] == "meets")
    assert (ca["accuracy"], ca["reference_accuracy"]) == (a["accuracy"], a["reference_accuracy"])   # the full run's
    # which it does not evaluate again: only what its parity check and timed batch take
    assert {m["n_eval"] for m in confirmation["models"]} == {confirmation["config"]["eval_samples"]} == {data["config"]["check_samples"]}
    assert "the aims are judged here" in data["extra"]["summary"] and "the aims are judged here" in md
    assert rerender(out / "report.json", tmp_path / "again")["report_md"].read_text() == md


def test_eval_samples_evaluates_the_first_samples_and_still_checks_parity(digits, tiny_student, tmp_path):
    from export import ExportConfig, export_onnx

    onnx_path = tmp_path / "student.onnx"
    export_onnx(tiny_student, onnx_path, ExportConfig(), data=digits)
    report = run_benchmark([tiny_student, onnx_path], digits, BenchConfig(runtimes=("pytorch", "onnxruntime"), **TINY, eval_samples=20))
    assert [m["n_eval"] for m in report.models] == [20, 20] and report.config["eval_samples"] == 20
    assert {p["samples"] for p in report.parity} == {20} and report.ok_rows()   # parity on what was evaluated; timed
    with pytest.raises(ConfigError, match="eval_samples"):
        BenchConfig(eval_samples=0)


def test_an_export_is_compared_with_the_pytorch_model_it_came_from(digits, tiny_student, tmp_path):
    from export import ExportConfig, export_onnx

    onnx_path = tmp_path / "student.onnx"
    export_onnx(tiny_student, onnx_path, ExportConfig(), data=digits)
    report = run_benchmark([onnx_path], digits, BenchConfig(runtimes=("onnxruntime",), **TINY))
    (parity,) = report.parity
    assert parity["reference_runtime"] == "pytorch (source artifact)" and parity["max_abs_diff"] < 1e-4



@pytest.mark.slow
def test_opencv_names_the_int8_form_it_rejects_and_the_one_it_reads(digits, tiny_student, tmp_path):
    """OpenCV DNN cannot load a QDQ graph; the row says so and points at --quant-format qoperator, whose
    file it runs."""
    pytest.importorskip("cv2")
    from export import ExportConfig, export_onnx

    qdq, qop = tmp_path / "qdq.onnx", tmp_path / "qop.onnx"
    for path, fmt in ((qdq, "qdq"), (qop, "qoperator")):
        export_onnx(tiny_student, path, ExportConfig(quantize="int8", quant_format=fmt, max_accuracy_drop=100.0,
                                                     calibration_size=64), data=digits, calibration=digits)
    config = BenchConfig(**TINY, runtimes=("onnxruntime", "opencv"))
    report = run_benchmark([f"qdq={qdq}", f"qop={qop}"], digits, config)
    refused = [r for r in report.rows if r["model"] == "qdq" and r["runtime"] == "opencv"]
    assert refused and all("--quant-format qoperator" in r["error"] for r in refused)
    assert _rows(report, model="qop", runtime="opencv", status="ok")
    assert next(m for m in report.models if m["name"] == "qop")["description"] == "ONNX (int8)"


def test_paired_ratio_cancels_drift_between_rounds():
    """Two rows whose latencies both doubled in round 2 (another tenant) keep their ratio of 2."""
    from benchmarks.harness import paired_ratio

    slow = {"round_p50_ms": [2.0, 4.0, 2.0, None]}
    fast = {"round_p50_ms": [1.0, 2.0, 1.0, 1.0]}
    assert paired_ratio(slow, fast) == {"median": 2.0, "min": 2.0, "max": 2.0, "rounds": 3,
                                        "low": None, "high": None, "coverage": None}   # too few rounds for an interval
    assert paired_ratio({"round_p50_ms": []}, fast) is None and paired_ratio({}, fast) is None


def test_median_interval_is_the_sign_test_interval():
    """Order statistics [x_(k), x_(n+1-k)] with coverage 1 - 2 P(Binomial(n, 1/2) <= k-1) >= 95%: the
    textbook table gives k = 1 at n = 6, 2 at n = 9, 3 at n = 12 (96.1%), 5 at n = 17 (95.1%)."""
    from benchmarks.harness import median_interval

    assert median_interval([3.0, 1.0, 2.0, 5.0, 4.0]) is None   # 2 / 2**5 > 5%: no interval
    assert median_interval(range(1, 7))[:2] == (1, 6)
    assert median_interval(range(1, 10))[:2] == (2, 8)
    low, high, coverage = median_interval([float(v) for v in range(12, 0, -1)])
    assert (low, high) == (3.0, 10.0) and coverage == pytest.approx(1 - 2 * 79 / 4096)
    assert median_interval(range(1, 18))[:2] == (5, 13)


def test_verdict_is_undecided_when_the_interval_straddles_the_aim():
    from benchmarks.harness import paired_ratio, verdict

    def paired(*ratios):
        return paired_ratio({"round_p50_ms": list(ratios)}, {"round_p50_ms": [1.0] * len(ratios)})

    clear = paired(31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42)
    assert verdict(clear, clear["median"], 30.0) == "meets"
    assert verdict(clear, clear["median"], 45.0) == "misses"
    straddling = paired(18, 22, 23, 29, 30, 32, 38, 38, 39, 40, 41, 42)   # the shape of a bimodal machine
    assert straddling["median"] >= 30 and verdict(straddling, straddling["median"], 30.0) == "undecided"
    # lower is better (a time ratio against an aim of at most 1.2x)
    assert verdict(paired(*[0.9] * 12), 0.9, 1.2, higher_is_better=False) == "meets"
    assert verdict(paired(*[1.5] * 12), 1.5, 1.2, higher_is_better=False) == "misses"
    # too few rounds for an interval: the figure itself decides
    few = paired(29.0, 31.0)
    assert few["low"] is None and verdict(few, few["median"], 30.0) == "meets"


def test_rows_carry_their_round_p50s(tmp_path, tiny_student, digits):
    from benchmarks.harness import BenchConfig, run_benchmark

    config = BenchConfig(batch_sizes=(1,), threads=(1,), runtimes=("pytorch",), seconds=0.06, rounds=3, min_runs=3,
                         warmup_seconds=0.01, floor_seconds=0.01, probe_seconds=0.01, check_samples=16)
    row = run_benchmark([tiny_student], digits, config).ok_rows()[0]
    assert len(row["round_p50_ms"]) == 3 and all(v > 0 for v in row["round_p50_ms"])


def test_latency_report_reuses_an_export_only_from_the_same_code(tmp_path, tiny_student, digits):
    """An export whose summary names the same artifact and settings is reused; one made by other
    graph-building code (another ``builder_fingerprint``) is made again, not timed stale."""
    import json

    from benchmarks.latency_report import prepare_exports
    from export.source import builder_fingerprint

    said = []
    made, failed = prepare_exports({"student": tiny_student}, tmp_path, digits, ("student-onnx",), echo=said.append)
    assert not failed and len(said) == 1
    summary = made["student-onnx"].with_name("student.onnx.json")
    assert json.loads(summary.read_text())["builder"] == builder_fingerprint()
    prepare_exports({"student": tiny_student}, tmp_path, digits, ("student-onnx",), echo=said.append)
    assert len(said) == 1   # reused
    stale = json.loads(summary.read_text())
    summary.write_text(json.dumps({**stale, "builder": "0" * 64}))
    prepare_exports({"student": tiny_student}, tmp_path, digits, ("student-onnx",), echo=said.append)
    assert len(said) == 2 and json.loads(summary.read_text())["builder"] == builder_fingerprint()


def test_machine_facts_name_torchs_threads_and_kernels_and_the_header_shows_them():
    """The thread count and the kernel level change a seed's weights, so a result says which it ran
    with; results made before they were recorded render as they did."""
    import torch

    from benchmarks.provenance import header_markdown
    from benchmarks.timing import machine_facts

    facts = machine_facts()
    assert facts["torch_threads"] == torch.get_num_threads()
    prov = {"command": "c", "machine": facts, "versions": {}, "date": "d", "run_seconds": 60}
    n = facts["torch_threads"]
    cap = torch.backends.cpu.get_cpu_capability()
    assert f"(torch {n} thread{'s' * (n != 1)}, {cap} kernels)" in header_markdown("t", prov)[3]
    older = dict(prov, machine={k: v for k, v in facts.items() if k not in ("torch_threads", "cpu_capability")})
    assert "- machine:" in header_markdown("t", older)[3] and "thread" not in header_markdown("t", older)[3]
    assert "kernels" not in header_markdown("t", older)[3]


def test_models_of_one_name_are_told_apart_by_their_folder_and_one_model_twice_is_refused(tmp_path, monkeypatch):
    from benchmarks.modelinfo import parse_model_args, unique_names

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert unique_names([Path("student"), Path("runs/student")], [None, None]) == [f"{tmp_path.name}/student", "runs/student"]
    with pytest.raises(ConfigError, match="is given twice"):
        parse_model_args(["student", "./student"])
    with pytest.raises(ConfigError, match="names a model but gives no path"):
        parse_model_args(["fast="])


def test_the_split_is_streamed_to_each_model_never_copied_whole():
    """Evaluation converts and predicts a chunk at a time (a multiple of a fixed batch); no float32 copy of the
    whole split is made, which for an image folder larger than memory could not be."""
    import torch

    from benchmarks.harness import _predict_split

    x_split = torch.arange(359 * 4, dtype=torch.uint8).reshape(359, 1, 2, 2)
    seen = []

    class Runner:
        def predict(self, x):
            seen.append((len(x), x.dtype.type))
            return x.reshape(len(x), -1)[:, :3].astype(np.float32)

    want = x_split.reshape(359, -1)[:, :3].numpy().astype(np.float32)
    assert np.array_equal(_predict_split(Runner(), x_split, (1, 2, 2), False, None, chunk=100), want)
    assert seen == [(100, np.float32)] * 3 + [(59, np.float32)]
    seen.clear()
    assert np.array_equal(_predict_split(Runner(), x_split, (4,), True, 8, chunk=100), want)
    assert {n for n, _ in seen} == {8} and len(seen) == 45 and {d for _, d in seen} == {np.uint8}


def test_the_recorded_bench_command_reloads_the_same_data():
    """The image-folder flags are folded into --data, and the val fraction and device are kept."""
    from edgekd.commands.bench import _command_line

    params = {"model": ("runs/s",), "data": "imagefolder:photos", "image_size": "32x32", "channels": 3,
              "test_fraction": None, "val_fraction": 0.2, "train_limit": None, "device": "cuda", "out": "r",
              "batch_sizes": "1", "threads": "1", "runtimes": "pytorch", "seconds": 1.0, "rounds": 1}
    line = _command_line(params)
    assert "--data imagefolder:photos,size=32x32,channels=3 --val-fraction 0.2" in line and "--device cuda" in line


def test_an_export_is_described_from_its_source_artifact_only_while_it_is_that_artifact(tmp_path, tiny_student, digits,
                                                                                      monkeypatch):
    """The export records its source's absolute path and manifest hash: found from any folder, and ignored once
    that folder holds another model (retrained in place), whose counts and outputs are not the export's."""
    import shutil

    from export import ExportConfig, export_onnx

    source = tmp_path / "student"
    shutil.copytree(tiny_student, source)
    monkeypatch.chdir(tmp_path)
    export_onnx("student", tmp_path / "s.onnx", ExportConfig(), data=digits)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert describe_model(tmp_path / "s.onnx", "s").source_artifact == str(source.resolve())
    manifest = json.loads((source / "manifest.json").read_text())
    # how it was trained rides with the report, so a recipe quoted beside a figure can be checked against it
    trained = describe_model(tmp_path / "s.onnx", "s").trained_with
    assert trained == describe_model(source, "s").trained_with == {"config": manifest["config"],
                                                                     "test_accuracy": manifest["metrics"]["test_accuracy"]}
    manifest["metrics"]["macs"] = 1   # as a retrained model's manifest differs
    (source / "manifest.json").write_text(json.dumps(manifest))
    assert describe_model(tmp_path / "s.onnx", "s").source_artifact is None
    assert describe_model(tmp_path / "s.onnx", "s").trained_with is None


def test_a_headline_names_the_runtime_its_accuracy_was_measured_on():
    """A headline shows its own runtime's accuracy where that runtime measured one, else the file's
    evaluating runtime's, named, so OpenCV's row does not claim onnxruntime's accuracy as its own."""
    from benchmarks.report import accuracy_on, headline_rows

    data = {"config": {"batch_sizes": [1], "threads": [1]}, "reference": {"model": "t"},
            "models": [{"name": "t", "accuracy": 0.93, "evaluated_with": "pytorch"},
                       {"name": "s.onnx", "accuracy": 0.90, "evaluated_with": "onnxruntime"}],
            "rows": [{"model": "t", "runtime": "pytorch", "batch_size": 1, "threads": 1, "status": "ok", "p50_ms": 5.0,
                      "p99_ms": 6.0, "speedup": 1.0},
                     *({"model": "s.onnx", "runtime": r, "batch_size": 1, "threads": 1, "status": "ok", "p50_ms": p,
                        "p99_ms": p, "speedup": 5.0 / p} for r, p in (("onnxruntime", 0.08), ("opencv", 0.06)))]}
    head = {h["model"]: h for h in headline_rows(data)}
    assert head["s.onnx"]["runtime"] == "opencv" and head["s.onnx"]["accuracy_runtime"] == "onnxruntime"
    assert accuracy_on(head["s.onnx"]) == " (on onnxruntime)" and accuracy_on(head["t"]) == ""
    data["models"][1]["accuracy_by_runtime"] = {"onnxruntime": 0.90, "opencv": 0.89}
    head = {h["model"]: h for h in headline_rows(data)}
    assert head["s.onnx"]["accuracy"] == 0.89 and accuracy_on(head["s.onnx"]) == ""


@pytest.mark.parametrize("fixed", [None, 4])
def test_graph_macs_per_sample_at_a_fixed_batch_and_none_for_an_uncounted_operator(tmp_path, fixed):
    """Linear 64 -> 32 -> 10 is 64*32 + 32*10 = 2,368 MACs a sample, whatever batch the graph fixes; a
    ConvTranspose (not counted) makes the count unknown, not short."""
    import onnx
    import torch
    from torch import nn

    from benchmarks.modelinfo import graph_macs

    path = tmp_path / "m.onnx"
    module = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    torch.onnx.export(module, (torch.zeros(fixed or 2, 64),), str(path), dynamo=True, input_names=["x"],
                      dynamic_shapes=None if fixed else ({0: torch.export.Dim("batch")},))
    proto = onnx.load(str(path))
    assert graph_macs(proto) == 2368
    proto.graph.node.append(onnx.helper.make_node("ConvTranspose", ["a", "b"], ["c"]))
    assert graph_macs(proto) is None


def test_graph_macs_of_a_qoperator_graph_whose_qgemms_onnx_cannot_shape(tmp_path):
    """QGemm is a com.microsoft op: ONNX's shape inference gives its output no shape, so the count (and the
    next QGemm's input) comes from the operands. 64 -> 32 -> 10 is 2,368 MACs a sample as in fp32."""
    import numpy as np
    import onnx
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from torch import nn

    from benchmarks.modelinfo import graph_macs

    fp32, q = tmp_path / "m.onnx", tmp_path / "m.qop.onnx"
    module = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    torch.onnx.export(module, (torch.zeros(2, 64),), str(fp32), dynamo=True, input_names=["x"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": np.random.default_rng(0).random((8, 64), dtype=np.float32)}])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(q), Reader(), quant_format=QuantFormat.QOperator)
    proto = onnx.load(str(q))
    assert [n.op_type for n in proto.graph.node].count("QGemm") == 2
    assert graph_macs(proto) == 2368


@pytest.mark.skipif(__import__("importlib").util.find_spec("executorch") is not None, reason="ExecuTorch installed")
def test_a_pte_without_executorch_is_a_row_not_a_refused_report(edgekd, tmp_path, tiny_student):
    """As the README says of any missing runtime: the other models are measured, the .pte gets its reason."""
    (tmp_path / "m.pte").write_bytes(b"a program")
    code, out, err = edgekd("bench", "--model", tiny_student, "--model", tmp_path / "m.pte", "--out", tmp_path / "r",
                            "--runtimes", "pytorch,executorch", "--batch-sizes", "1", "--threads", "1", "--seconds", "0.02",
                            "--rounds", "1", "--quiet", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert [h["model"] for h in summary["headline"]] == ["student"]
    assert any(e["model"] == "m.pte" and "no selected runtime that is installed reads pte" in e["error"]
               for e in summary["errors"])


def test_an_ort_file_takes_nothing_from_an_onnx_beside_it_that_is_another_export(tmp_path, tiny_student, digits):
    """m.ort beside an m.onnx of another model: the counts are the .ort's own source's, not the neighbour's."""
    from edgekd.artifacts import load_artifact
    from edgekd.teacher_training import save_untrained
    from export import ExportConfig, export_onnx

    other = save_untrained(tmp_path / "other", "mlp:hidden=4", digits)
    export_onnx(tiny_student, tmp_path / "m.ort", ExportConfig(ort=True, quantize="dynamic"), data=digits)
    export_onnx(other, tmp_path / "m.onnx", ExportConfig(), data=digits)
    info = describe_model(tmp_path / "m.ort", "m")
    assert info.macs == load_artifact(tiny_student).manifest.metrics["macs"] != load_artifact(other).manifest.metrics["macs"]
    assert info.int8 and info.input_shape == (1, 8, 8)


def test_latency_report_makes_again_an_export_whose_graph_makers_changed(tmp_path, tiny_student, digits):
    """Reused only when the same onnx/onnxruntime (or ExecuTorch) versions made it: an upgraded quantizer
    writes other int8 graphs, which must not be timed under the old files' names."""
    from benchmarks.latency_report import _reusable
    from export import ExportConfig, export_onnx
    from export.source import builder_fingerprint, load_source

    config = ExportConfig(quantize="dynamic")
    out = tmp_path / "s.int8.onnx"
    export_onnx(tiny_student, out, config, data=digits)
    source = load_source(tiny_student).describe()
    assert _reusable(out, source, builder_fingerprint(), config, digits.spec)
    # the same weights under another manifest (an ensemble retrained with --combine probs has the same member
    # files), or other data to verify and calibrate on: made again
    assert not _reusable(out, {**source, "manifest_sha256": "0" * 64}, builder_fingerprint(), config, digits.spec)
    assert not _reusable(out, source, builder_fingerprint(), config, "mnist")
    summary_path = tmp_path / "s.int8.onnx.json"
    summary = json.loads(summary_path.read_text())
    summary["versions"]["onnxruntime"] = "0.0.1"
    summary_path.write_text(json.dumps(summary))
    assert not _reusable(out, source, builder_fingerprint(), config, digits.spec)


def test_every_bench_option_default_is_the_libraries():
    """bench's defaults as BenchConfig has them ('all' threads and runtimes are its None)."""
    from edgekd.commands.bench import bench_cmd

    options = {p.name: p.default for p in bench_cmd.params}
    config = BenchConfig()
    assert tuple(int(b) for b in options["batch_sizes"].split(",")) == config.batch_sizes
    assert (options["threads"], config.threads) == ("1,all", None) and (options["runtimes"], config.runtimes) == ("all", None)
    assert (options["seconds"], options["rounds"]) == (config.seconds, config.rounds)


def test_a_runtime_whose_outputs_disagree_with_the_files_own_is_not_timed(digits, tiny_student, onnx_models):
    """A converter bug (MNN once overwrote chunks) gives outputs that agree with onnxruntime's on the same
    file for few images: such a runtime gets an error row, not a time that could win the headline."""
    @R.register_runtime("test-wrong", formats=("onnx",), description="returns another model's answers")
    class Wrong(R.OnnxRuntime):
        def load(self, path, threads):
            return wrap_calls(super().load(path, threads), lambda fn: lambda: [np.roll(out, 3, axis=-1) for out in fn()])

    try:
        config = BenchConfig(runtimes=("onnxruntime", "test-wrong"), **TINY)
        result = run_benchmark([str(onnx_models["fp32"])], digits, config)
    finally:
        R._RUNTIMES.pop("test-wrong")
    rows = [r for r in result.rows if r["runtime"] == "test-wrong"]
    assert rows and all(r["status"] == "error" and "agrees with onnxruntime's on the same file for only" in r["error"]
                        for r in rows)
    from benchmarks.report import headline_rows, render_markdown

    assert [h["runtime"] for h in headline_rows(result.to_dict())] == ["onnxruntime"]
    # each runtime that reads the file scores it itself: the rolled answers are wrong on the whole split
    (model,) = result.models
    own = model["accuracy_by_runtime"]
    assert own["onnxruntime"] == model["accuracy"] > 0.5 and own["test-wrong"] < 0.3
    assert f"onnxruntime (test-wrong {own['test-wrong']:.4f})" in render_markdown(result.to_dict())


def test_bench_that_measures_nothing_exits_2_with_its_report(edgekd, tmp_path):
    """A garbage .ort (read only when timed) gave a report of error rows and exit 0."""
    bad = tmp_path / "g.ort"
    bad.write_bytes(b"garbage")
    code, _, err = edgekd("bench", "--model", bad, "--runtimes", "onnxruntime", "--batch-sizes", "1", "--seconds", "0.05",
                          "--rounds", "1", "--out", tmp_path / "r")
    assert code == 2 and "Nothing could be measured" in err and (tmp_path / "r" / "report.md").is_file()


def _foreign_classifier(path, softmax: bool):
    """A linear classifier of flat digits as another converter writes it: with ``softmax``, outputs
    (label, probabilities), the label first (skl2onnx's habit); else one output of logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.05, (64, 10)).astype(np.float32), "w"),
               numpy_helper.from_array(np.zeros(10, np.float32), "b")]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["z"])]
    outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 10])]
    if softmax:
        nodes += [helper.make_node("Softmax", ["z"], ["p"], axis=1), helper.make_node("ArgMax", ["z"], ["label"], axis=1, keepdims=0)]
        outputs = [helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]),
                   helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 10])]
    graph = helper.make_graph(nodes, "foreign", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])], outputs,
                              initializer=weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_foreign_graph_ending_in_softmax_is_scored_as_its_logits_are(digits, tmp_path):
    """Its class scores are the first 2-D float output, read as probabilities: the NLL and ECE of the same
    classifier's logits, not those of a softmax taken twice."""
    models = [f"logits={_foreign_classifier(tmp_path / 'z.onnx', False)}",
              f"probs={_foreign_classifier(tmp_path / 'p.onnx', True)}"]
    report = run_benchmark(models, digits, BenchConfig(runtimes=("onnxruntime",), **TINY))
    logits, probs = (next(m for m in report.models if m["name"] == n) for n in ("logits", "probs"))
    assert probs["accuracy"] == logits["accuracy"] and probs.get("error") is None
    assert probs["nll"] == pytest.approx(logits["nll"], rel=1e-4) and probs["ece"] == pytest.approx(logits["ece"], abs=1e-4)


def test_an_ort_is_fed_its_own_input_type_whatever_the_onnx_beside_it_takes(digits, tiny_student, tmp_path):
    from benchmarks.modelinfo import describe_model
    from export import ExportConfig, export_onnx

    export_onnx(tiny_student, tmp_path / "m.onnx", ExportConfig(), data=digits)   # float32 input
    export_onnx(tiny_student, tmp_path / "m.ort", ExportConfig(ort=True, uint8_input=True), data=digits)
    assert describe_model(tmp_path / "m.ort", "m").input_dtype == "uint8"
    report = run_benchmark([tmp_path / "m.ort"], digits, BenchConfig(runtimes=("onnxruntime",), **TINY))
    assert {r["status"] for r in report.rows} == {"ok"}


def test_a_raw_pixel_model_on_data_that_are_not_whole_pixels_is_an_error_row_not_rounded(digits, tiny_student, tmp_path):
    import dataclasses

    from benchmarks.harness import check_models_fit, readable_models
    from edgekd.errors import EdgekdError
    from export import ExportConfig, export_onnx

    export_onnx(tiny_student, tmp_path / "u8.onnx", ExportConfig(uint8_input=True), data=digits)
    scaled = dataclasses.replace(digits, x_test=digits.x_test / 16.0, x_val=digits.x_val / 16.0)   # in [0, 1]
    with pytest.raises(EdgekdError, match=r"takes raw pixels as bytes\) needs whole pixel values in 0..255 .*not whole"):
        check_models_fit(readable_models([str(tmp_path / "u8.onnx")]), scaled)
    report = run_benchmark([tmp_path / "u8.onnx"], scaled, BenchConfig(runtimes=("onnxruntime",), **TINY))
    assert report.models[0].get("accuracy") is None and "needs whole pixel values" in report.models[0]["error"]


def test_the_compute_floor_uses_the_higher_of_two_peak_probes(monkeypatch):
    """A probe that ran while the machine was busy reads low; the one after the timings raises the peak,
    and every row's floor is scaled to it."""
    import benchmarks.harness as H

    monkeypatch.setattr(H, "peak_gemm_flops", lambda t, seconds: 4e10)    # twice the first probe's 2e10
    monkeypatch.setattr(H, "peak_int8_ops", lambda t, seconds: 1e10)      # below the first: kept
    peak, peak_int8 = {"1": 2e10}, {"1": 5e10}
    rows = [{"status": "ok", "threads": 1, "compute_peak": "fp32", "compute_floor_ms": 2.0, "runtime_floor_ms": 0.5, "p50_ms": 2.0},
            {"status": "ok", "threads": 1, "compute_peak": "int8", "compute_floor_ms": 1.0, "runtime_floor_ms": None, "p50_ms": 2.0}]
    H._probe_again(rows, peak, peak_int8, [1], BenchConfig(), lambda _m: None)
    assert peak == {"1": 4e10} and peak_int8 == {"1": 5e10}
    assert (rows[0]["compute_floor_ms"], rows[0]["floor_ms"], rows[0]["latency_over_floor"]) == (1.0, 1.5, pytest.approx(2 / 1.5))
    assert (rows[1]["compute_floor_ms"], rows[1]["floor_ms"]) == (1.0, 1.0)


def test_the_pipelines_bench_times_the_pytorch_rows_on_the_runs_device(monkeypatch, digits, tmp_path):
    import benchmarks.harness as H

    seen = {}

    def stop(models, data, config, **kwargs):
        seen["device"] = config.device
        raise RuntimeError("stopped")

    monkeypatch.setattr(H, "run_benchmark", stop)
    with pytest.raises(RuntimeError, match="stopped"):
        bench_for_pipeline([], digits, tmp_path / "b", device="cpu")
    assert seen["device"] == "cpu"   # --device cpu on a GPU host: not CUDA rows beside CPU ones


def test_a_model_whose_outputs_are_nan_is_an_error_row_not_an_accuracy(digits, tmp_path):
    """An all-NaN graph scored 0.1003 (class 0's share of the test set), ECE 0, and was timed; evaluate refuses it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.full((64, 10), np.nan, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])],
                              "nan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], [weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "nan.onnx"))
    report = run_benchmark([tmp_path / "nan.onnx"], digits, BenchConfig(runtimes=("onnxruntime",), **TINY))
    model = report.models[0]
    assert model.get("accuracy") is None and "NaN or Inf outputs on 359 of 359 inputs" in model["error"]
    assert all(r["status"] != "ok" for r in report.rows)


def test_an_export_of_a_model_that_gives_nan_says_so_not_to_raise_atol():
    import torch

    from edgekd.errors import ExportError
    from export.verify import torch_logits

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.nn.init.constant_(net[1].weight, float("nan"))
    with pytest.raises(ExportError, match="gives NaN or Inf outputs in PyTorch on 4 of 4 val inputs: its weights are broken"):
        torch_logits(net, torch.rand(4, 1, 8, 8))


def test_a_split_of_large_images_is_scored_a_bounded_chunk_at_a_time():
    """512 rows of 224x224 photos a chunk (and a runtime's copies of them) took bench past 1.5 GB."""
    import torch

    from benchmarks.harness import _predict_split
    from edgekd.data import INFERENCE_CHUNK_BYTES

    seen = []

    class Runner:
        def predict(self, x):
            seen.append(len(x))
            return np.zeros((len(x), 10), np.float32)

    photos = torch.zeros(300, 3, 224, 224, dtype=torch.uint8)
    assert _predict_split(Runner(), photos, (3, 224, 224), False, None).shape == (300, 10)
    assert sum(seen) == 300 and max(seen) * 3 * 224 * 224 * 4 <= INFERENCE_CHUNK_BYTES
    seen.clear()
    _predict_split(Runner(), photos, (3, 224, 224), False, 8)   # a fixed batch: whole multiples of it
    assert all(n % 8 == 0 for n in seen[:-1])
