"""Export: an edgekd artifact -> a verified ONNX file (fp32 or int8) or an ORT-format file for mobile.

``export_onnx(model, out, ExportConfig(...)) -> ExportResult`` does one export; ``read_metadata``
reads back what it stored in the file; ``export_for_pipeline`` exports a student (fp32 and int8)
and its teacher ensemble for ``edgekd pipeline``.
"""

from export.onnx_export import (DEFAULT_OPSET, ExportConfig, ExportResult, export_onnx, load_source, max_opset,
                                read_metadata)
from export.pipeline import export_for_pipeline
from export.verify import Parity

__all__ = ["DEFAULT_OPSET", "ExportConfig", "ExportResult", "Parity", "export_for_pipeline", "export_onnx",
           "load_source", "max_opset", "read_metadata"]
