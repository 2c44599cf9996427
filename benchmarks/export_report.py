"""Export figures of a student and a teacher ensemble: fp32 parity, int8 accuracy drop, int8/fp32 size
ratio and export time, as JSON (the data) and Markdown (rendered from it).

    python -m benchmarks.export_report --student runs/fmnist/student-mlp --teacher runs/fmnist/teacher \\
        --data fashion-mnist --out benchmarks/results/export_fmnist.md
    python -m benchmarks.export_report --smoke --out /tmp/export_smoke.md   # untrained tiny digits models, fp32 + int8

Each model is exported with ``export_onnx`` as fp32 ONNX (the strict parity gate, atol 1e-4), int8
static QDQ (calibrated on the train split) and that int8 model in the ORT format; the student also as
int8 dynamic (which turns a CNN teacher's convolutions into slow ConvInteger, so not the teacher).
The int8 gate is opened wide here (``--max-accuracy-drop 100``) so that the drop is *measured*;
the table says whether it would pass the default gate of 1 point. A failing export becomes a row with
its error instead of stopping the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from benchmarks.scenario_common import run_script

DEFAULT_GATE_POINTS = 1.0
VARIANTS = (  # key, label, file, ExportConfig fields
    ("fp32", "fp32", "model.onnx", {}),
    ("int8", "int8 static QDQ", "model.int8.onnx", {"quantize": "int8"}),
    ("int8-ort", "int8 static QDQ, .ort", "model.int8.ort", {"quantize": "int8", "ort": True}),
    ("dynamic", "int8 dynamic", "model.dyn.onnx", {"quantize": "dynamic"}),
)
SMOKE_VARIANTS = ("fp32", "int8")
# dynamic quantization turns convolutions into ConvInteger, several times slower than fp32: not for the CNN teacher
TEACHER_VARIANTS = ("fp32", "int8", "int8-ort")




def measure(models: dict[str, tuple[Path, tuple[str, ...] | None]], data, *, calibration_size: int = 512,
            workdir: Path) -> list[dict]:
    """One row per (model, export variant); ``models`` maps a label to (artifact, variant keys or None for all)."""
    from edgekd.errors import EdgekdError
    from export import ExportConfig, export_onnx
    from export.summary import result_row

    rows = []
    for label, (path, variants) in models.items():
        for key, variant, filename, fields in VARIANTS:
            if variants is not None and key not in variants:
                continue
            config = ExportConfig(calibration_data=data.spec if fields.get("quantize") == "int8" else None,
                                  calibration_size=calibration_size, max_accuracy_drop=100.0, **fields)
            out = workdir / label.replace(" ", "-") / filename
            out.parent.mkdir(parents=True, exist_ok=True)
            row = {"model": label, "source": str(path), "variant": variant}
            try:
                result = export_onnx(path, out, config, overwrite=True, data=data,
                                     calibration=data if fields.get("quantize") == "int8" else None)
            except EdgekdError as exc:
                rows.append({**row, "error": str(exc)})
                continue
            figures = result_row(result)
            figures.pop("path"), figures.pop("summary")
            summary = result.summary
            figures["parity"] = [p.to_dict() for p in result.parity]
            figures["fp32_parity"] = summary["verification"]["fp32"]["parity"]
            fp32_row = next((r for r in rows if r["model"] == label and r["variant"] == "fp32" and "size_bytes" in r), None)
            # like for like: both files carry edgekd's metadata (the summary's ratio compares them without it)
            base = result.size_bytes if key == "fp32" else fp32_row["size_bytes"] if fp32_row else figures["fp32_size_bytes"]
            figures["size_ratio_to_fp32"] = round(result.size_bytes / base, 4)
            figures["seconds_by_stage"] = summary["seconds"]
            figures["source_description"] = summary["source"]["description"]
            figures["source_weights_bytes"] = summary["source"]["weights_bytes"]
            if result.accuracy_drop is not None:
                figures["passes_default_gate"] = result.accuracy_drop <= DEFAULT_GATE_POINTS
            rows.append({**row, **figures})
    return rows


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "platform": platform.platform()}


def render_markdown(report: dict) -> str:
    lines = [f"# Export report: {report['name']}", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores "
             f"({report['machine']['platform']})  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "  ",
             f"Date: {report['created']}; run time {report['seconds']:.0f} s; data `{report['data']['spec']}` "
             f"(val {report['data']['n_val']} for parity, test {report['data']['n_test']} for accuracy, "
             f"train {report['calibration_size']} for calibration); onnxruntime CPU provider, default threads", ""]
    if report.get("note"):
        lines += [f"Note: {report['note']}", ""]
    if report.get("smoke"):
        lines += ["**Smoke run**: untrained tiny models; the figures only show that the machinery works.", ""]
    lines += ["Parity: largest |logit difference| from PyTorch on the val split over batch 1 and batch 64; "
              "accuracy on the test split; drop in points against the fp32 export "
              f"(the default gate allows {DEFAULT_GATE_POINTS:g}); time: the dynamo export alone, and export_onnx end to "
              "end (export, checks, quantization, verification, test accuracy). Size / fp32 compares files that both "
              "carry edgekd's metadata (a few kB).", "",
              "| model | export | size (bytes) | size / fp32 | max abs diff | mean abs diff | top-1 agreement | "
              "test accuracy (fp32 -> export) | drop (points) | torch.onnx.export (s) | total (s) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['variant']} | failed: {row['error']} | | | | | | | | |")
            continue
        drop = "-" if row["accuracy_drop_points"] is None else (
            f"{row['accuracy_drop_points']:.2f}" + ("" if row.get("passes_default_gate", True) else " (fails gate)"))
        lines.append(f"| {row['model']} | {row['variant']} | {row['size_bytes']:,} | {row['size_ratio_to_fp32']:.3f} | "
                     f"{row['max_abs_diff']:.2e} | {row['mean_abs_diff']:.2e} | {100 * row['top1_agreement']:.2f}% | "
                     f"{row['reference_test_accuracy']:.4f} -> {row['test_accuracy']:.4f} | {drop} | "
                     f"{row['seconds_by_stage']['export']:.1f} | {row['seconds']:.1f} |")
    lines += ["", "Models: " + "; ".join(f"{m['label']}: {m['description']}, {m['weights_bytes']:,} bytes of safetensors"
                                         for m in report["models"]), ""]
    return "\n".join(lines)


def run(args) -> dict:
    from edgekd.artifacts import library_versions, now_iso, write_json_atomic
    from edgekd.data import load_dataset
    from edgekd.teacher_training import save_untrained

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekd-export-report-") as tmp:
        tmp = Path(tmp)
        data = load_dataset(args.data)
        if args.smoke:
            student = Path(args.student) if args.student else save_untrained(tmp / "student", "mlp:hidden=16", data)
            teacher = Path(args.teacher) if args.teacher else save_untrained(
                tmp / "teacher", "cnn:width=4,fc=16", data, members=2)
        else:
            student, teacher = Path(args.student), Path(args.teacher)
        chosen = args.variants or (SMOKE_VARIANTS if args.smoke else None)
        models = {"student": (student, chosen), "teacher ensemble": (teacher, chosen or TEACHER_VARIANTS)}
        rows = measure(models, data, calibration_size=args.calibration_size, workdir=tmp / "exports")
        described = []
        for label, (path, _) in models.items():
            first = next((r for r in rows if r["model"] == label and "source_description" in r), None)
            described.append({"label": label, "path": str(path),
                              "description": first["source_description"] if first else str(path),
                              "weights_bytes": first["source_weights_bytes"] if first else 0})
    out = Path(args.out)
    report = {"format": "edgekd.export-report", "name": args.name or out.stem, "smoke": bool(args.smoke), "note": args.note,
              "command": "python -m benchmarks.export_report " + " ".join(shlex.quote(a) for a in args.argv),
              "machine": machine(), "versions": library_versions(), "created": now_iso(),
              "data": data.describe(), "calibration_size": args.calibration_size, "models": described, "rows": rows,
              "seconds": time.perf_counter() - started}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), report)
    out.with_suffix(".md").write_text(render_markdown(report))
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", help="Student artifact folder.")
    parser.add_argument("--teacher", help="Teacher (ensemble) artifact folder.")
    parser.add_argument("--data", default="digits", help="Dataset spec (val: parity, test: accuracy, train: calibration).")
    parser.add_argument("--out", required=True, help="Markdown file to write; the JSON goes beside it (.json).")
    parser.add_argument("--name", default=None, help="Title of the report (default: the --out file's stem).")
    parser.add_argument("--calibration-size", type=int, default=512)
    parser.add_argument("--note", default=None, help="Free text for the report (e.g. how the artifacts were trained).")
    parser.add_argument("--variants", default=None,
                        help=f"Comma-separated subset of {', '.join(v[0] for v in VARIANTS)} (default: all for the student, "
                             f"{','.join(TEACHER_VARIANTS)} for the teacher; smoke: {','.join(SMOKE_VARIANTS)}).")
    parser.add_argument("--smoke", action="store_true", help="Untrained tiny digits models unless --student/--teacher given.")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not args.smoke and not (args.student and args.teacher):
        parser.error("--student and --teacher are required (or pass --smoke)")
    if args.variants is not None:
        args.variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
        unknown = sorted(set(args.variants) - {v[0] for v in VARIANTS})
        if unknown:
            parser.error(f"unknown --variants {unknown}; choose from {', '.join(v[0] for v in VARIANTS)}")
    args.argv = argv
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args)
    failed = [r for r in report["rows"] if "error" in r]
    print(f"wrote {Path(args.out).with_suffix('.md')} and .json: {len(report['rows']) - len(failed)} exports, "
          f"{len(failed)} failed, {report['seconds']:.0f} s")
    print(json.dumps([{k: r.get(k) for k in ("model", "variant", "size_bytes", "max_abs_diff", "accuracy_drop_points",
                                             "seconds", "error") if k in r} for r in report["rows"]], indent=1))
    return 0


if __name__ == "__main__":
    run_script(main)
