"""Export: an edgekd artifact -> a verified ONNX file (fp32 or int8), an ORT-format file or an
ExecuTorch program (``.pte``) for mobile.

``export_onnx(model, out, ExportConfig(...)) -> ExportResult`` does one export (``export_executorch``
the same for a ``.pte``); ``read_metadata``
reads back what it stored in the file; ``result_row`` and ``render_export_table`` turn results into
report rows and a Markdown table.
"""

from export.executorch_export import export_executorch
from export.onnx_export import DEFAULT_OPSET, ExportConfig, ExportResult, export_onnx, max_opset, read_metadata
from export.source import load_source
from export.summary import render_export_table, result_row
from export.verify import Parity

__all__ = ["DEFAULT_OPSET", "ExportConfig", "ExportResult", "Parity", "export_executorch", "export_onnx", "render_export_table", "result_row",
           "load_source", "max_opset", "read_metadata"]
