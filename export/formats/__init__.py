"""Export formats behind one registry; importing this package registers the built-in ones."""

from wherevit.export.formats import engine as _engine  # noqa: F401
from wherevit.export.formats import int8 as _int8  # noqa: F401
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
