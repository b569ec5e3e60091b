"""Export formats behind one registry; importing this package registers the built-in ones.

``onnx``, ``engine``, ``pt2``, ``triton`` and ``triton-engine``; INT8 is not a format but a step the
ONNX-based ones consume (``export/quant_step.py``). The interface is ``formats/base.py``.
"""

from wherevit.export.formats import engine as _engine  # noqa: F401
from wherevit.export.formats import onnx as _onnx  # noqa: F401
from wherevit.export.formats import pt2 as _pt2  # noqa: F401
from wherevit.export.formats import triton as _triton  # noqa: F401
from wherevit.export.formats.base import (
    ExportContext,
    ExportFormat,
    format_chain,
    get_format,
    register_format,
    registered_formats,
)

__all__ = ["ExportContext", "ExportFormat", "format_chain", "get_format", "register_format", "registered_formats"]
