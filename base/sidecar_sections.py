"""Typed sections of the sidecar (torch-free): what the model is, and each format's own facts.

Each export format (and the INT8 step) writes its facts into its own section, and every reader
(runtime backends, server, bench, the PyTorch reference backends) reads them through these typed
fields, never by string keys. ``read_sidecar`` validates each section like the rest of the file: an
unknown or mistyped field is an error naming it (``sidecar.engine.library``).

Adding a built-in format: define its section dataclass here, add it as an optional field of
``Sidecar`` (``base/sidecar.py``) named after the format, and have the format fill it. A format from
another package writes plain JSON facts under ``Sidecar.extensions[<format name>]`` instead (no
edit here). Sidecars written by wherevit 0.1 read unchanged: every field they hold is declared
(``tests/base/test_sidecar.py`` reads a saved one of every kind).

Nested records that nothing reads back (build warnings, per-output parity reports, the CPU an INT8
graph was quantised on) stay free-form dicts: they are reports for people.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelSection", "HeadSection", "OnnxSection", "EngineProfile", "EngineSection", "Pt2Section",
           "QuantizationSection", "SourceRecord"]


@dataclass
class ModelSection:
    """The backbone an artifact was exported from (``model``)."""

    model: str | None = None  # the timm model name
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    arch: dict[str, Any] = field(default_factory=dict)  # describe_backbone(): width, depth, patch and image size
    source: str | None = None  # "teacher", "student", "random-init", "timm", ...
    step: int | None = None  # training step of the checkpoint
    checkpoint: str | None = None  # what `wherevit export` was given (run dir, file or timm name)
    positional: dict[str, Any] | None = None  # how training replaced timm's positions (posfield, baked at export)
    # Where the weights came from (train/weights.py's record: file, SHA-256, layout, how they were loaded)
    weights: dict[str, Any] | None = None
    initialised_from: dict[str, Any] | None = None  # a trained run's own starting point (model.weights), if any

    @property
    def trained_network(self) -> str:
        """The network of a training checkpoint this artifact came from (teacher unless it says student)."""
        return self.source if self.source in ("teacher", "student") else "teacher"


@dataclass
class HeadSection:
    """A downstream head exported with the backbone (``head``): the head file's record plus where it was."""

    task: str
    embed_dim: int
    format: str = "wherevit.head/1"
    classes: list[str] | None = None
    n_classes: int | None = None
    image_size: list[int] | None = None
    file: str | None = None  # the head_<task>.safetensors exported


@dataclass
class OnnxSection:
    """The ONNX graph (``onnx``): exporter, opset, simplification, the graph's hash."""

    opset: int
    exporter: str
    export_seconds: float | None = None
    simplified_with: str | None = None
    sha256: str | None = None


@dataclass
class EngineProfile:
    """The engine's one optimisation profile: the same batch range for every input ([batch, C, H, W])."""

    inputs: list[str]
    min: list[int]
    opt: list[int]
    max: list[int]


@dataclass
class EngineSection:
    """A TensorRT / TensorRT-RTX engine (``engine``): the library that built it and the GPUs it targets."""

    library: str  # "tensorrt" or "tensorrt_rtx"
    version: str
    precision: str
    onnx_precision: str
    compute_capabilities: list[str] = field(default_factory=list)  # "8.6", ...
    profile: EngineProfile | None = None
    network_flags: list[str] = field(default_factory=list)
    builder_flags: list[str] = field(default_factory=list)
    workspace_mb: int | None = None
    build_seconds: float | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class Pt2Section:
    """An AOTInductor package (``pt2``): the device it was compiled for and the torch that compiled it."""

    device: str
    torch: str
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    export_seconds: float | None = None
    compile_seconds: float | None = None
    compiler: str | None = None
    loaders: list[str] = field(default_factory=list)


@dataclass
class SourceRecord:
    """The graph a quantised graph was made from."""

    file: str
    sha256: str | None = None


@dataclass
class QuantizationSection:
    """The INT8 step's record (``quantization``): how the graph was quantised and whether outputs depend on the batch."""

    mode: str  # "static" (Q/DQ, calibrated) or "dynamic" (activation scales per call)
    batch_dependent: bool  # an image's outputs depend on its batch-mates: run one image at a time
    tool: str = ""
    op_types_quantized: list[str] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)
    nodes_excluded: list[str] = field(default_factory=list)
    per_channel: bool = True
    weights: str = ""
    activations: str = ""
    biases: str = ""
    reduce_range: bool = False
    reduce_range_reason: str = ""
    cpu: dict[str, Any] = field(default_factory=dict)  # the ISA the decision was made on (base.cpu.CpuIsa.to_dict)
    op_counts: dict[str, int] = field(default_factory=dict)
    quantize_seconds: float | None = None
    calibration: dict[str, Any] | None = None  # data, count, seed or files, method, batch (static only)
    source_onnx: SourceRecord | None = None
    tensorrt_build: dict[str, Any] | None = None  # what TensorRT did with this Q/DQ graph, or its refusal verbatim
