"""Scenario (e): latency of the teacher ensemble (PyTorch) against the student in fp32 and int8 on every
runtime installed, with the accuracy each gives.

    python -m benchmarks.latency_report --teacher runs/fmnist/teacher --student runs/fmnist/student \\
        --student-onnx runs/fmnist/student.onnx --student-int8 runs/fmnist/student.int8.onnx \\
        --data fashion-mnist --out benchmarks/results/latency_fmnist
    python -m benchmarks.latency_report --smoke --out /tmp/latency_smoke   # tiny untrained digits models, seconds

The result folder holds ``report.json`` (the data), ``report.md`` (it starts with the command line, date,
machine and versions; ``edgekd bench --from report.json`` re-renders it), ``latency.png`` and
``pareto.png``. The headline: the student in int8 on onnxruntime at batch 1 and one thread against the
teacher ensemble in PyTorch (the issue's aim: at least 50x faster), with the accuracy cost beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import tempfile
from pathlib import Path

AIM = 50.0


def headline(data: dict, *, student: str = "student-int8", runtime: str = "onnxruntime") -> dict | None:
    """The int8 student on onnxruntime against the reference (teacher, PyTorch) at batch 1, one thread."""
    batch, threads = min(data["config"]["batch_sizes"]), min(data["config"]["threads"])
    ref = data["reference"]
    rows = {(r["model"], r["runtime"]): r for r in data["rows"]
            if r["status"] == "ok" and r["batch_size"] == batch and r["threads"] == threads}
    fast, slow = rows.get((student, runtime)), rows.get((ref["model"], ref["runtime"]))
    if fast is None or slow is None:
        return None
    models = {m["name"]: m for m in data["models"]}
    acc_fast, acc_slow = models[student].get("accuracy"), models[ref["model"]].get("accuracy")
    return {"model": student, "runtime": runtime, "reference_model": ref["model"], "reference_runtime": ref["runtime"],
            "batch_size": batch, "threads": threads, "p50_ms": fast["p50_ms"], "reference_p50_ms": slow["p50_ms"],
            "speedup": slow["p50_ms"] / fast["p50_ms"], "aim": AIM, "accuracy": acc_fast, "reference_accuracy": acc_slow,
            "accuracy_cost_points": 100 * (acc_slow - acc_fast) if acc_fast is not None and acc_slow is not None else None,
            "latency_over_floor": fast["latency_over_floor"]}


def headline_text(h: dict | None) -> str:
    if h is None:
        return "No headline: the int8 student on onnxruntime or the teacher in PyTorch has no successful batch-1 row."
    cost = f"{h['accuracy_cost_points']:+.2f}" if h["accuracy_cost_points"] is not None else "?"
    verdict = "meets" if h["speedup"] >= h["aim"] else "misses"
    return (f"**`{h['model']}` on {h['runtime']} runs {h['speedup']:.0f}x faster than `{h['reference_model']}` on "
            f"{h['reference_runtime']}** (batch {h['batch_size']}, {h['threads']} thread: p50 {h['p50_ms'] * 1e3:.1f} µs "
            f"against {h['reference_p50_ms']:.3f} ms), which {verdict} the aim of {h['aim']:.0f}x; accuracy "
            f"{h['accuracy']:.4f} against {h['reference_accuracy']:.4f}, a cost of {cost} points.")


def run(teacher, student, student_onnx, student_int8, data_spec: str, out: Path, *, student_ort=None, config=None,
        command: str, overwrite: bool = False, echo=print) -> dict:
    from benchmarks.harness import BenchConfig, run_benchmark
    from benchmarks.report import write_report
    from edgekd.data import load_dataset
    from edgekd.validation import check_output_dir

    check_output_dir(out, overwrite=overwrite)
    models = [f"teacher={teacher}", f"student={student}", f"student-fp32={student_onnx}", f"student-int8={student_int8}"]
    if student_ort:
        models.append(f"student-int8-ort={student_ort}")
    data = load_dataset(data_spec)
    report = run_benchmark(models, data, config or BenchConfig(), command=command, echo=echo)
    head = headline(report.to_dict())
    extra = {"title": f"Latency: teacher ensemble vs student fp32 vs student int8 on `{data.spec}`",
             "summary": headline_text(head), "headline": head}
    report = dataclasses.replace(report, extra=extra)
    paths = write_report(report, out)
    return {"paths": {k: str(v) for k, v in paths.items()}, "headline": head}


# --- smoke: tiny models made on the fly --------------------------------------------------------------

def make_smoke_models(folder: Path, echo=print) -> dict:
    """Randomly initialised tiny models on digits (a 2-member cnn ensemble and an mlp), the mlp exported
    to fp32 and int8 ONNX with the ``export`` package when present, else with ``torch.onnx.export``
    (dynamo) and onnxruntime's dynamic quantizer. Their accuracy means nothing; their timing path is real."""
    from edgekd.data import load_dataset
    from edgekd.teacher_training import save_untrained

    data = load_dataset("digits")
    echo("smoke: building tiny untrained models on digits")
    teacher = save_untrained(folder / "teacher", "cnn:width=8,fc=32", data, members=2)
    student = save_untrained(folder / "student", "mlp:hidden=32", data)
    fp32, int8 = folder / "student.onnx", folder / "student.int8.onnx"
    try:
        from export import ExportConfig, export_onnx
    except ImportError:
        _export_plain(student, data.input_shape, fp32, int8)
    else:
        export_onnx(student, fp32, ExportConfig(), data=data)
        export_onnx(student, int8, ExportConfig(quantize="int8", max_accuracy_drop=100.0, calibration_size=128),
                    data=data, calibration=data)
    return {"teacher": teacher, "student": student, "student_onnx": fp32, "student_int8": int8}




def _export_plain(student: Path, input_shape, fp32: Path, int8: Path) -> None:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgekd.teachers import load_teacher

    module = load_teacher(student).module()
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(module.eval(), (torch.zeros(2, *input_shape),), str(fp32), dynamo=True,
                      dynamic_shapes=({0: batch},), verbose=False)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)


SMOKE_CONFIG = dict(batch_sizes=(1, 16), threads=(1,), seconds=0.1, rounds=2, min_runs=4, warmup_seconds=0.02,
                    floor_seconds=0.03, probe_seconds=0.05, check_samples=64)


def main(argv=None) -> int:
    from benchmarks.harness import BenchConfig, parse_int_list
    from edgekd.errors import EdgekdError

    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", help="Teacher ensemble artifact folder (timed in PyTorch; the reference).")
    parser.add_argument("--student", help="Student artifact folder (timed in PyTorch).")
    parser.add_argument("--student-onnx", help="The student exported to fp32 ONNX.")
    parser.add_argument("--student-int8", help="The student exported to int8 ONNX.")
    parser.add_argument("--student-ort", help="Optional: the int8 student in the ORT format.")
    parser.add_argument("--data", default="fashion-mnist", help="Data spec for the accuracy columns.")
    parser.add_argument("--out", required=True, help="Result folder, e.g. benchmarks/results/latency_fmnist.")
    parser.add_argument("--batch-sizes", default="1,8,64")
    parser.add_argument("--threads", default="1,all")
    parser.add_argument("--runtimes", default="all")
    parser.add_argument("--seconds", type=float, default=1.0, help="Timed seconds per measurement.")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="Where the PyTorch rows run.")
    parser.add_argument("--smoke", action="store_true", help="Tiny digits models made on the fly; runs in seconds.")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.latency_report " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        if args.smoke:
            config = BenchConfig(**SMOKE_CONFIG, device=args.device)
            with tempfile.TemporaryDirectory(prefix="edgekd-latency-smoke-") as tmp:
                models = make_smoke_models(Path(tmp), echo=lambda m: print(m, file=sys.stderr))
                result = run(models["teacher"], models["student"], models["student_onnx"], models["student_int8"], "digits",
                             Path(args.out), config=config, command=command, overwrite=args.overwrite,
                             echo=lambda m: print(m, file=sys.stderr))
        else:
            missing = [f"--{n.replace('_', '-')}" for n in ("teacher", "student", "student_onnx", "student_int8")
                       if not getattr(args, n)]
            if missing:
                parser.error(f"{', '.join(missing)} required (or pass --smoke)")
            config = BenchConfig(batch_sizes=parse_int_list("batch_sizes", args.batch_sizes),
                                 threads=parse_int_list("threads", args.threads, allow_all=True),
                                 runtimes=None if args.runtimes == "all" else tuple(args.runtimes.split(",")),
                                 seconds=args.seconds, device=args.device)
            result = run(args.teacher, args.student, args.student_onnx, args.student_int8, args.data, Path(args.out),
                         student_ort=args.student_ort, config=config, command=command, overwrite=args.overwrite,
                         echo=lambda m: print(m, file=sys.stderr))
    except EdgekdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(headline_text(result["headline"]).replace("**", ""))
    print(f"report: {result['paths']['report_md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
