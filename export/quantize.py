"""INT8 quantization with onnxruntime's quantizer.

- ``int8`` (the default for edge devices): static quantization in the QDQ format, per-channel int8
  weights and int8 activations (onnxruntime's recommended S8S8 QDQ setting), activation ranges from
  MinMax calibration on N inputs of the train split, after onnxruntime's ``quant_pre_process``
  (shape inference and basic graph optimizations).
  ``quant_format="qoperator"`` writes the same quantization as QLinearConv / QLinearMatMul / QGemm
  operators instead of QuantizeLinear/DequantizeLinear pairs around float ones: OpenCV DNN (5.0)
  cannot load the QDQ form (``bufidx >= 0 in function 'argTensor'``) and runs the QOperator one.
- ``dynamic``: int8 weights, activations quantized at run time; needs no calibration data. It turns
  convolutions into ConvInteger, which runs several times slower than fp32 on the CPU, so it suits
  fully connected models best.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgekd.errors import ExportError
from export.config import QUANT_FORMATS, QUANTIZE_MODES  # noqa: F401  (where they live; read here too)

PRECISION = {None: "fp32", "int8": "int8-static-qdq", "dynamic": "int8-dynamic"}


def precision_name(mode: str | None, quant_format: str = "qdq") -> str:
    """The precision label of an export: ``int8-static-qdq``, ``int8-static-qoperator``, ``fp32``, ..."""
    return "int8-static-qoperator" if mode == "int8" and quant_format == "qoperator" else PRECISION[mode]


class ArrayCalibrationReader:
    """Feeds calibration inputs to onnxruntime's calibrator in batches (a ``CalibrationDataReader``)."""

    def __init__(self, x: np.ndarray, input_name: str, batch_size: int = 64):
        self._batches = [{input_name: x[i:i + batch_size]} for i in range(0, len(x), batch_size)]
        self._next = 0

    def get_next(self):
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return self._batches[self._next - 1]

    def rewind(self):
        self._next = 0


def quantize_model(src: Path, dst: Path, mode: str, *, calibration: np.ndarray | None, workdir: Path,
                   quant_format: str = "qdq") -> dict:
    """Quantize ``src`` into ``dst``; returns the settings used (recorded in the summary)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in QUANTIZE_MODES:
        raise ExportError(f"The 'quantize' parameter must be one of {', '.join(map(repr, QUANTIZE_MODES))}. Got {mode!r} instead.")
    src, dst, workdir = (Path(p).absolute() for p in (src, dst, workdir))   # (the quantizer runs in workdir)
    prepared = workdir / "prepared.onnx"
    with _quiet_quantizer(), _temporaries_in(workdir):
        symbolic = _pre_process(quant_pre_process, src, prepared)
        if mode == "dynamic":
            try:
                quantize_dynamic(str(prepared), str(dst), per_channel=True, weight_type=QuantType.QInt8)
            except Exception as exc:
                raise ExportError(f"Dynamic quantization failed ({_first_line(exc)}); try --quantize int8 or export fp32.") from None
            _check_quantized(dst, mode)
            return {"mode": "dynamic", "weights": "int8 per-channel", "activations": "int8, quantized at run time",
                    "preprocessed": True, "symbolic_shape_inference": symbolic}
        if calibration is None or len(calibration) == 0:
            raise ExportError("Static int8 quantization needs calibration inputs; pass --calibration-data SPEC "
                              "(its train split is used) or use --quantize dynamic.")

        class Reader(ArrayCalibrationReader, CalibrationDataReader):
            pass

        try:
            quantize_static(str(prepared), str(dst), Reader(calibration, _input_name(prepared)),
                            quant_format=QuantFormat.QOperator if quant_format == "qoperator" else QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        except Exception as exc:
            raise ExportError(f"Static int8 quantization failed ({_first_line(exc)}); try --quantize dynamic or export fp32.") from None
    _check_quantized(dst, mode)
    return {"mode": "static", "format": "QOperator" if quant_format == "qoperator" else "QDQ", "weights": "int8 per-channel", "activations": "int8 per-tensor",
            "calibration_method": "MinMax", "calibration_samples": int(len(calibration)), "preprocessed": True,
            "symbolic_shape_inference": symbolic}


QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                 "QLinearConv", "QLinearMatMul", "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


def _check_quantized(path: Path, mode: str) -> None:
    """Refuse a "quantized" graph the quantizer left without one integer op: onnxruntime quantizes only
    float32 MatMul/Gemm/Conv, so a model that computes in float64 came out unchanged, named and timed as int8."""
    import onnx

    ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    if not ops & QUANTIZED_OPS:
        raise ExportError(f"--quantize {mode} quantized nothing: the graph has no float32 MatMul, Gemm or Conv for "
                          f"onnxruntime's quantizer (its ops: {', '.join(sorted(ops))[:160]}; a model that computes in "
                          f"float64 has none). Make the model compute in float32, or export fp32.")


@contextmanager
def _temporaries_in(workdir: Path):
    """onnxruntime's quantizer makes its temporary folders (``ort.quant.*``, ``pre.quant.*``: copies of the model
    with its weights) in the system's temporary folder, where a killed export left them for good, and where
    its symbolic shape inference gives up it saves ``sym_shape_infer_temp.onnx`` (and a ``.data`` file) in
    the current folder, over a user's file of that name: both go in the export's own temporary folder,
    removed with it or as a dead process's leftover."""
    import os
    import tempfile

    previous, tempfile.tempdir = tempfile.tempdir, str(workdir)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        yield
    finally:
        os.chdir(cwd)
        tempfile.tempdir = previous


def _pre_process(quant_pre_process, src: Path, prepared: Path) -> bool:
    """onnxruntime's pre-processing; where its symbolic shape inference fails (it cannot follow the
    specialist ensemble's gather/scatter), again without it, ONNX's own shape inference still run.
    Returns whether the symbolic pass ran."""
    try:
        quant_pre_process(str(src), str(prepared))
        return True
    except Exception:
        pass
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        return False
    except Exception as exc:
        raise ExportError(f"onnxruntime's quantization pre-processing failed ({_first_line(exc)}); export fp32 instead.") from None


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:240] if text else exc.__class__.__name__


@contextmanager
def _quiet_quantizer():
    """onnxruntime's quantizer logs through the root logger; keep its chatter off the user's terminal."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
