"""Export figures for reports: one row per export (``result_row``) and a Markdown table of rows."""

from __future__ import annotations

from pathlib import Path

from export.onnx_export import ExportResult


def result_row(result: ExportResult) -> dict:
    """The figures of one export that a report table needs."""
    summary = result.summary
    return {
        "path": str(result.path), "summary": str(result.summary_path), "format": result.format,
        "precision": result.precision, "opset": result.opset, "size_bytes": result.size_bytes,
        # the fp32 graph the file was made from: an .onnx/.ort export's or an ExecuTorch program's
        "fp32_size_bytes": summary["sizes_bytes"].get("fp32_onnx", summary["sizes_bytes"].get("fp32_pte")),
        "max_abs_diff": max(p.max_abs_diff for p in result.parity),
        "mean_abs_diff": max(p.mean_abs_diff for p in result.parity),
        "top1_agreement": min(p.top1_agreement for p in result.parity),
        "test_accuracy": result.test_accuracy, "reference_test_accuracy": result.reference_test_accuracy,
        "accuracy_drop_points": result.accuracy_drop, "seconds": round(result.seconds, 2),
    }


def render_export_table(rows: dict) -> str:
    """A Markdown table of export rows (name -> ``result_row`` or ``{"path", "error", "refused"}``: refused
    by the accuracy gate, or failed)."""
    lines = ["| export | file | size (bytes) | max abs logit diff vs PyTorch (val) | top-1 agreement | test accuracy | "
             "drop (points) | time (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | {'refused' if row.get('refused') else 'failed'} | | | | | | {row['error']} |")
            continue
        drop = f"{row['accuracy_drop_points']:.2f}" if row["accuracy_drop_points"] is not None else "-"
        lines.append(f"| {name} | `{Path(row['path']).name}` | {row['size_bytes']:,} | {row['max_abs_diff']:.2e} | "
                     f"{100 * row['top1_agreement']:.2f}% | {row['test_accuracy']:.4f} | {drop} | {row['seconds']} |")
    return "\n".join(lines) + "\n"
