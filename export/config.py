"""``ExportConfig``: the settings of one export and where their defaults live (no torch, no onnx at
import: the command line reads the defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass

from edgekd.errors import ConfigError
from edgekd.validation import check_choice, check_int_at_least, check_positive, check_val_fraction

DEFAULT_OPSET = 18      # the dynamo exporter's own opset; newer ones go through onnxscript's version converter
MIN_OPSET = 18          # the dynamo exporter cannot write older opsets reliably
QUANTIZE_MODES = ("int8", "dynamic")
QUANT_FORMATS = ("qdq", "qoperator")
ORT_OPTIMIZATION_LEVELS = ("extended", "basic")


def max_opset() -> int:
    """The newest opset the installed onnx knows."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


@dataclass(frozen=True)
class ExportConfig:
    """Settings of one export. ``data`` (default: the artifact's) feeds verification and test accuracy;
    ``calibration_data``'s train split feeds static int8 calibration."""

    opset: int = DEFAULT_OPSET
    quantize: str | None = None                 # None (fp32), "int8" (static QDQ) or "dynamic"
    quant_format: str = "qdq"                   # int8 as QDQ pairs, or "qoperator" (QLinear* ops: OpenCV DNN reads only these)
    calibration_data: str | None = None
    calibration_size: int = 512
    ort: bool = False
    ort_optimization: str = "extended"          # export.mobile.ORT_OPTIMIZATION_LEVELS; see there for the trade-off
    executorch: bool = False                    # an ExecuTorch program (.pte) instead (export.executorch_export)
    batch_size: int = 1                         # the .pte's fixed batch
    atol: float = 1e-4
    rtol: float = 1e-5                          # the fp32 gate: |diff| <= atol + rtol * |logit| (numpy.allclose)
    max_accuracy_drop: float = 1.0
    uint8_input: bool = False
    data: str | None = None
    val_fraction: float | None = None
    verify_batch_size: int = 64
    batch1_samples: int = 256
    seed: int = 0

    def __post_init__(self):
        high = max_opset()
        if not isinstance(self.opset, int) or not MIN_OPSET <= self.opset <= high:
            raise ConfigError(f"The 'opset' parameter must be in [{MIN_OPSET}, {high}]: the dynamo exporter writes opset "
                              f"{MIN_OPSET} and newer, and the installed onnx knows up to {high}. Got {self.opset!r} instead.")
        if self.quantize is not None:
            check_choice("quantize", self.quantize, QUANTIZE_MODES)
        check_choice("ort_optimization", self.ort_optimization, ORT_OPTIMIZATION_LEVELS)
        check_choice("quant_format", self.quant_format, QUANT_FORMATS)
        check_int_at_least("calibration_size", self.calibration_size, 1)
        check_int_at_least("batch_size", self.batch_size, 1)
        if self.executorch and self.ort:
            raise ConfigError("Choose one output format: --executorch (a .pte) or --ort (a .ort), not both.")
        if self.quant_format != "qdq" and (self.executorch or self.quantize != "int8"):
            raise ConfigError(f"The 'quant_format' parameter applies to int8 ONNX exports (--quantize int8 without "
                              f"--executorch; ExecuTorch int8 uses the XNNPACK quantizer). Got {self.quant_format!r} "
                              f"with {'--executorch' if self.executorch else f'quantize={self.quantize!r}'}.")
        if self.ort_optimization != "extended" and not self.ort:
            raise ConfigError(f"The 'ort_optimization' parameter applies to .ort exports (--ort). Got "
                              f"{self.ort_optimization!r} without --ort.")
        check_positive("atol", self.atol)
        check_positive("rtol", self.rtol, strict=False)
        check_positive("max_accuracy_drop", self.max_accuracy_drop, strict=False)
        check_int_at_least("verify_batch_size", self.verify_batch_size, 2)
        check_int_at_least("batch1_samples", self.batch1_samples, 1)
        if self.val_fraction is not None:
            check_val_fraction(self.val_fraction)
