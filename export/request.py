"""What an export call is asked (``ExportRequest``) and what each of its steps returns (``StepResult``).

Kept apart from ``export/api.py`` so the formats can read a request without importing the API that
runs them (the API imports the formats; nothing imports the API back).

Options that belong to one format live in that format's ``Options`` dataclass and travel in
``format_options`` keyed by format name (``{"engine": EngineOptions(trt_lib="tensorrt_rtx")}``);
the INT8 step's ``QuantOptions`` travel under ``"int8"``. A mapping of fields is accepted in place
of the dataclass (validated against it). Everything else -- the graph, its size and batch range,
where it goes -- is the request's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from wherevit.base.options import coerce_options
from wherevit.runtime.compare import Comparison

__all__ = ["ExportRequest", "StepResult"]

T = TypeVar("T")


@dataclass
class ExportRequest:
    checkpoint: str
    out_dir: Path
    format: str = "onnx"  # a registered export format (`wherevit export --help` lists them)
    precision: str = "fp32"  # a name in base/precision.py the format supports
    batch: tuple[int, int, int] = (1, 8, 64)
    imgsz: int | None = None  # None: the backbone's training size
    which: str = "teacher"
    dynamic_hw: bool = False  # dynamic height/width: formats that compile for one size refuse it
    pooled: bool = True
    rtol: float | None = None  # parity bound on relative L2 error; None: the precision's (base/precision.py)
    expect_model: str | None = None
    head: str | None = None  # head_<task>.safetensors from `wherevit train-head`: export backbone + head as one graph
    # The requested format's file (`-o art/qs.onnx`); None: `out_dir/<stem>_<precision>.<ext>`. A path
    # with a format's suffix given as out_dir is taken as this (see ``resolve_output``).
    out_file: Path | None = None
    # format name (or "int8", the quantisation step) -> that format's Options dataclass, or a mapping of its fields
    format_options: dict[str, Any] = field(default_factory=dict)
    # A weights file (train/weights.py layouts) for the timm model named by ``checkpoint``, or timm's
    # own download (``pretrained``); the sidecar's ``model.weights`` records where they came from.
    weights: str | None = None
    pretrained: bool = False

    def options(self, key: str, cls: type[T]) -> T:
        """The typed options stored under ``key`` (a format name or ``int8``); defaults when none were given."""
        return coerce_options(cls, self.format_options.get(key), where=f"format_options[{key!r}]")


@dataclass
class StepResult:
    """What one format (or the INT8 step) made: returned to the API, which keeps the call's records.

    ``artifact`` is None only when a format records why it made nothing (a TensorRT refusal of an
    INT8 graph, kept as a result rather than an error); ``moved`` maps files of earlier steps this
    step moved (a Triton repository takes the model file in)."""

    artifact: Path | None
    sidecar: Path | None = None
    comparison: Comparison | None = None  # its parity against PyTorch fp32 (None when not checked here)
    notes: list[str] = field(default_factory=list)
    moved: dict[Path, Path] = field(default_factory=dict)
