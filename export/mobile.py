"""The ORT format (``.ort``) for onnxruntime mobile and minimal builds.

The file is written by an onnxruntime session with ``session.save_model_format = ORT`` after the
*basic* graph optimizations only (constant folding, redundant node elimination, ...), which are
portable. Extended and layout optimizations (``ORT_ENABLE_ALL``) insert operators specific to the
machine doing the conversion (NCHWc kernels on x86, for one), so a file saved after them may not run
on the target device; edgekd never ships one. The model's ``metadata_props`` are kept.
"""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import ExportError


def to_ort_format(src: str | Path, dst: str | Path) -> None:
    """Convert the ONNX model ``src`` into the ORT-format file ``dst``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.add_session_config_entry("session.save_model_format", "ORT")
    try:
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else exc.__class__.__name__
        raise ExportError(f"Converting to the ORT format failed ({first}); export plain ONNX (without --ort).") from None
    if not Path(dst).is_file():
        raise ExportError(f"onnxruntime {ort.__version__} did not write the ORT-format file; export plain ONNX (without --ort).")
