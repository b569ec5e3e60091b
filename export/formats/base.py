"""The export-format interface and its registry (one small file per format, like the backends).

A format turns the loaded, wrapped model into one artifact file and its sidecar, and returns what
it made (a ``StepResult``); it never writes into the caller's records. Formats chain: ``needs``
names the formats built before it in the same call (an engine is built from the ONNX graph the
``onnx`` format wrote), and the API hands each the products of the ones before it in
``ctx.produced``.

What a format supports is declared on its class, so the API and the CLI ask instead of keeping lists:

* ``precisions``  names from ``base/precision.py``; anything else is refused before any work, naming
  these. A quantised precision (int8) is made by the INT8 step (``export/quant_step.py``) from the
  ``onnx`` product, so only formats built on the ONNX graph declare it.
* ``Options``     a frozen dataclass of the format's own options (``base/options.py``: each field may
  declare its ``wherevit export`` option, which the CLI generates); read with ``ctx.options(self)``.
* ``suffixes``    file suffixes ``-o file.ext`` selects the format by (none: ``-o`` is a folder).
* ``needs``       formats built first, in this order.

Register with ``@register_format``; a third-party package adds one through the entry-point group
``wherevit.export_formats`` (``name = "pkg.module:FormatClass"``) without editing wherevit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from torch import nn

from wherevit.base.errors import InvalidRequest
from wherevit.base.image import Preprocess
from wherevit.base.precision import precision_label, precision_names
from wherevit.base.registry import Registry
from wherevit.base.sidecar import HeadSection, Sidecar
from wherevit.export.request import ExportRequest, StepResult

__all__ = ["ExportFormat", "ExportContext", "NoOptions", "FORMATS", "register_format", "registered_formats", "get_format",
           "format_chain", "file_label", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "wherevit.export_formats"


def file_label(precision: str, quant_mode: str | None = None) -> str:
    """The precision part of a file name: ``fp16``, ``int8``, ``int8_dynamic`` (a dynamically quantised graph)."""
    return precision_label(precision, quant_mode).replace("-", "_")


@dataclass(frozen=True)
class NoOptions:
    """The options of a format that has none."""


@dataclass
class ExportContext:
    """What every format of one export call shares: the model, its preprocessing and the bookkeeping."""

    req: ExportRequest
    out_dir: Path
    stem: str  # file stem: "model", or the head's task ("depth", "seg", "pose")
    backbone: nn.Module  # the loaded backbone (trained weights), not yet wrapped
    info: dict[str, Any]  # the checkpoint's record (model name, timm kwargs, source, step, ...)
    wrap: Callable[[nn.Module, str], nn.Module]  # (backbone, precision) -> graph to export (FeatureModel / HeadModel)
    reference: nn.Module  # the fp32 wrapped model every parity check compares against
    preprocess: Preprocess
    batch: tuple[int, int, int]
    sidecar: Sidecar  # the fields every artifact of this call shares; formats fill in their own
    head: HeadSection | None = None
    quant_source: str | None = None  # the format whose float product the INT8 step quantises ("onnx"), when it runs
    produced: dict[str, Path] = field(default_factory=dict)  # format name -> product of this call (set by the API)
    written: list[Path] = field(default_factory=list)  # every file written, removed if a later step fails

    @property
    def input_names(self) -> list[str]:
        return list(self.reference.input_names)

    def options(self, fmt: "ExportFormat") -> Any:
        """``fmt``'s typed options for this call (its ``Options`` defaults where none were given)."""
        return self.req.options(fmt.name, fmt.Options)

    def artifact_path(self, name: str, label: str, suffix: str, final: bool | None = None) -> Path:
        """Where the product of format ``name`` at precision ``label`` goes.

        With ``-o FILE``: the requested format's product is exactly FILE, other formats' products sit
        beside it with the same stem and their own suffix (the engine's ONNX: ``art/qs.onnx``), and the
        float graph the INT8 step quantises keeps its precision in the name (``art/qs_fp32.onnx``).
        Without: ``<out_dir>/<stem>_<label><suffix>``. ``final`` False marks the INT8 step's source
        (default: ``name`` is that source)."""
        out_file = self.req.out_file
        if out_file is None:
            return self.out_dir / f"{self.stem}_{label}{suffix}"
        source = (name == self.quant_source) if final is None else not final
        if source:
            return out_file.with_name(f"{out_file.stem}_{label}{suffix}")
        return out_file if name == self.req.format else out_file.with_suffix(suffix)

    def track(self, path: Path) -> Path:
        """Record a file this call is about to write, so a failure removes it."""
        self.written.append(path)
        return path


class ExportFormat(ABC):
    """One artifact kind. Subclasses set ``name`` (and the declarations above) and implement ``build``."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = ()  # `-o file.ext` picks this format's file name
    needs: ClassVar[tuple[str, ...]] = ()  # formats built first, in this order
    precisions: ClassVar[tuple[str, ...]] = precision_names(quantized=False)  # base/precision.py names it can write
    Options: ClassVar[type] = NoOptions  # its options dataclass (base/options.py declares their CLI)
    help: ClassVar[str] = ""  # one sentence for `wherevit export --help`

    def check(self, req: ExportRequest) -> None:
        """Fail before the slow steps (a missing library, an option this format cannot honour)."""

    def source_precision(self, req: ExportRequest) -> str | None:
        """The precision the float ONNX graph it builds from must have, where it decides (engines); None: no say."""
        return None

    def quant_requirements(self, req: ExportRequest) -> dict[str, Any]:
        """``QuantOptions`` fields the INT8 graph it consumes must have (TensorRT: symmetric activations)."""
        return {}

    @abstractmethod
    def build(self, ctx: ExportContext) -> StepResult:
        """Write the artifact and its sidecar (tracked with ``ctx.track``) and return what was made."""


FORMATS: Registry = Registry("export format", ENTRY_POINT_GROUP, error=InvalidRequest)
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
