"""The ORT format (``.ort``) for onnxruntime mobile and minimal builds.

The file is written by an onnxruntime session with ``session.save_model_format = ORT`` after the
graph optimizations of one level (``ORT_OPTIMIZATION_LEVELS``):

- ``extended`` (the default): basic, plus the fusions that assign nodes to the CPU execution provider:
  an int8 QDQ graph's QuantizeLinear/DequantizeLinear pairs around Conv, MatMul and Gemm become
  QLinearConv / MatMulIntegerToFloat / fused kernels, so the ``.ort`` runs as fast as the ``.onnx``
  does in an ``ORT_ENABLE_ALL`` session (``benchmarks/latency_report.py``; measured 14x slower at basic
  before). Such a file runs on the CPU execution provider only, which is what onnxruntime mobile uses
  unless an NNAPI / CoreML / XNNPACK provider is registered.
- ``basic``: constant folding and redundant-node elimination only; the QDQ pairs stay, so a
  hardware execution provider on the phone (NNAPI, CoreML, XNNPACK) can still claim the nodes. Slower
  on the CPU provider.

The ``all`` level is never used: its layout transformations insert operators specific to the machine
doing the conversion (NCHWc kernels on x86), so the file may not run on the target device. The model's
``metadata_props`` are kept.
"""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import ExportError
from export.config import ORT_OPTIMIZATION_LEVELS  # noqa: F401  (where they live; read here too)

DEFAULT_ORT_OPTIMIZATION = "extended"


def to_ort_format(src: str | Path, dst: str | Path, optimization: str = DEFAULT_ORT_OPTIMIZATION) -> None:
    """Convert the ONNX model ``src`` into the ORT-format file ``dst`` at the given optimization level."""
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = levels[optimization]
    options.optimized_model_filepath = str(dst)
    options.add_session_config_entry("session.save_model_format", "ORT")
    try:
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else exc.__class__.__name__
        raise ExportError(f"Converting to the ORT format failed ({first}); export plain ONNX (without --ort).") from None
    if not Path(dst).is_file():
        raise ExportError(f"onnxruntime {ort.__version__} did not write the ORT-format file; export plain ONNX (without --ort).")
