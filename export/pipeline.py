"""The export stage of ``edgekd pipeline``: the student in fp32 and int8, and the teacher ensemble."""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import EdgekdError
from export.onnx_export import DEFAULT_OPSET, ExportConfig, ExportResult, export_onnx


def export_for_pipeline(student_dir: str | Path, teacher_dir: str | Path, data, out_dir: str | Path, *,
                        opset: int = DEFAULT_OPSET, calibration_size: int = 512, max_accuracy_drop: float = 1.0,
                        overwrite: bool = True) -> dict:
    """Export ``student.onnx``, ``student.int8.onnx`` (static QDQ) and ``teacher.onnx`` into ``out_dir``.

    ``data`` is a loaded ``Dataset`` or a spec string: its val split verifies, its test split measures
    accuracy and its train split calibrates the int8 model. A gate that fails does not stop the
    others: its entry holds ``{"error": message}`` instead of figures. Returns
    ``{"student_fp32": row, "student_int8": row, "teacher": row}``; ``render_export_table`` turns it
    into Markdown.
    """
    from edgekd.data import load_dataset

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = load_dataset(data)
    jobs = {
        "student_fp32": (student_dir, "student.onnx", ExportConfig(opset=opset)),
        "student_int8": (student_dir, "student.int8.onnx",
                         ExportConfig(opset=opset, quantize="int8", calibration_data=data.spec,
                                      calibration_size=calibration_size, max_accuracy_drop=max_accuracy_drop)),
        "teacher": (teacher_dir, "teacher.onnx", ExportConfig(opset=opset)),
    }
    rows = {}
    for name, (model, filename, config) in jobs.items():
        try:
            result = export_onnx(model, out_dir / filename, config, overwrite=overwrite, data=data,
                                 calibration=data if config.quantize == "int8" else None)
        except EdgekdError as exc:
            rows[name] = {"path": str(out_dir / filename), "error": str(exc)}
            continue
        rows[name] = result_row(result)
    return rows


def result_row(result: ExportResult) -> dict:
    """The figures of one export that a report table needs."""
    summary = result.summary
    return {
        "path": str(result.path), "summary": str(result.summary_path), "format": result.format,
        "precision": result.precision, "opset": result.opset, "size_bytes": result.size_bytes,
        "fp32_size_bytes": summary["sizes_bytes"]["fp32_onnx"],
        "max_abs_diff": max(p.max_abs_diff for p in result.parity),
        "mean_abs_diff": max(p.mean_abs_diff for p in result.parity),
        "top1_agreement": min(p.top1_agreement for p in result.parity),
        "test_accuracy": result.test_accuracy, "reference_test_accuracy": result.reference_test_accuracy,
        "accuracy_drop_points": result.accuracy_drop, "seconds": round(result.seconds, 2),
    }


def render_export_table(rows: dict) -> str:
    """A Markdown table of ``export_for_pipeline``'s rows."""
    lines = ["| export | file | size (bytes) | max abs logit diff vs PyTorch (val) | top-1 agreement | test accuracy | "
             "drop (points) | time (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | failed | | | | | | {row['error']} |")
            continue
        drop = f"{row['accuracy_drop_points']:.2f}" if row["accuracy_drop_points"] is not None else "-"
        lines.append(f"| {name} | `{Path(row['path']).name}` | {row['size_bytes']:,} | {row['max_abs_diff']:.2e} | "
                     f"{100 * row['top1_agreement']:.2f}% | {row['test_accuracy']:.4f} | {drop} | {row['seconds']} |")
    return "\n".join(lines) + "\n"
