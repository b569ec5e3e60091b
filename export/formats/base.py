"""The export-format interface and its registry (one small file per format, like the backends).

A format turns the loaded, wrapped model into one artifact file and its sidecar. Formats chain:
``needs`` names the formats built before it in the same call (an engine is built from the ONNX
graph the ``onnx`` format wrote), and what each wrote is in ``ctx.produced`` for the next.

Register with ``@register_format``; a third-party package adds one through the entry-point group
``wherevit.export_formats`` (``name = "pkg.module:FormatClass"``) without editing wherevit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from torch import nn

from wherevit.base.errors import InvalidRequest
from wherevit.base.image import Preprocess
from wherevit.base.registry import Registry
from wherevit.base.sidecar import Sidecar

if TYPE_CHECKING:
    from wherevit.export.api import ExportRequest, ExportResult

__all__ = ["ExportFormat", "ExportContext", "FORMATS", "register_format", "registered_formats", "get_format", "format_chain",
           "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "wherevit.export_formats"


@dataclass
class ExportContext:
    """What every format of one export call shares: the model, its preprocessing and the bookkeeping."""

    req: "ExportRequest"
    out_dir: Path
    stem: str  # file stem: "model", or the head's task ("depth", "seg", "pose")
    backbone: nn.Module  # the loaded backbone (trained weights), not yet wrapped
    info: dict[str, Any]  # the checkpoint's record (model name, timm kwargs, source, step, ...)
    wrap: Callable[[nn.Module, str], nn.Module]  # (backbone, precision) -> graph to export (FeatureModel / HeadModel)
    reference: nn.Module  # the fp32 wrapped model every parity check compares against
    preprocess: Preprocess
    batch: tuple[int, int, int]
    sidecar: Sidecar  # the fields every artifact of this call shares; formats fill in their own
    head_meta: dict[str, Any] | None = None
    produced: dict[str, Path] = field(default_factory=dict)  # format name -> artifact written in this call
    written: list[Path] = field(default_factory=list)  # every file written, removed if a later step fails
    result: "ExportResult | None" = None

    @property
    def input_names(self) -> list[str]:
        return list(self.reference.input_names)

    def artifact_path(self, fmt: "ExportFormat", precision: str) -> Path:
        """Where ``fmt`` writes: ``-o``'s file for the requested format (and that stem with ``fmt``'s own
        suffix for the formats before it), else ``<out_dir>/<stem>_<precision><suffix>``."""
        out_file = self.req.out_file
        if out_file is not None:
            return out_file if fmt.name == self.req.format else out_file.with_suffix(fmt.suffixes[0])
        return self.out_dir / f"{self.stem}_{precision}{fmt.suffixes[0]}"

    def track(self, path: Path) -> Path:
        """Record a file this call is about to write, so a failure removes it."""
        self.written.append(path)
        return path


class ExportFormat(ABC):
    """One artifact kind. Subclasses set ``name``/``suffixes``/``needs`` and implement ``build``."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = ()  # `-o file.ext` picks this format's file name
    needs: ClassVar[tuple[str, ...]] = ()  # formats built first, in this order

    def check(self, req: "ExportRequest") -> None:
        """Fail before the slow steps (a missing library, an option this format cannot honour)."""

    def graph_precision(self, req: "ExportRequest") -> str:
        """The precision of the graph the formats before it must produce (default: the requested one)."""
        return req.precision

    @abstractmethod
    def build(self, ctx: ExportContext) -> Path:
        """Write the artifact and its sidecar (tracked in ``ctx.written``) and return the artifact's path."""


FORMATS: Registry = Registry("export format", ENTRY_POINT_GROUP)
FORMATS.base = ExportFormat
register_format = FORMATS.register  # class decorator; a duplicate name is refused
registered_formats = FORMATS.items


def get_format(name: str) -> ExportFormat:
    """A fresh instance of the format registered as ``name`` (formats keep per-call state, e.g. a build plan)."""
    return FORMATS.get(name)()


def format_chain(name: str) -> list[ExportFormat]:
    """``name`` and everything it needs, dependencies first (each once)."""
    order: list[ExportFormat] = []
    seen: set[str] = set()

    def visit(n: str, stack: tuple[str, ...]) -> None:
        if n in stack:
            raise InvalidRequest(f"export formats need each other in a cycle: {' -> '.join(stack + (n,))}")
        if n in seen:
            return
        fmt = get_format(n)
        for dep in fmt.needs:
            visit(dep, stack + (n,))
        seen.add(n)
        order.append(fmt)

    visit(name, ())
    return order
