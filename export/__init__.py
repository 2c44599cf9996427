"""Export: an edgekd artifact -> a verified ONNX file (fp32 or int8), an ORT-format file or an
ExecuTorch program (``.pte``) for mobile.

``export_onnx(model, out, ExportConfig(...)) -> ExportResult`` does one export (``export_executorch``
the same for a ``.pte``); ``read_metadata``
reads back what it stored in the file; ``result_row`` and ``render_export_table`` turn results into
report rows and a Markdown table. ``export.config`` (the settings and their defaults) imports neither
torch nor onnx; the names below are loaded on first use, so the command line reads the defaults cheaply.
"""

import importlib

_WHERE = {"export_executorch": "export.executorch_export", "DEFAULT_OPSET": "export.config", "ExportConfig": "export.config",
          "max_opset": "export.config", "ExportResult": "export.onnx_export", "export_onnx": "export.onnx_export",
          "read_metadata": "export.onnx_export", "load_source": "export.source", "render_export_table": "export.summary",
          "result_row": "export.summary", "Parity": "export.verify"}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
