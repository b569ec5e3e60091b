"""The sidecar: a JSON file next to every artifact that makes it self-describing (torch-free).

``model.onnx`` -> ``model.onnx.json``; ``model.engine`` -> ``model.engine.json``. The artifact itself
stays a plain ONNX file, serialized TensorRT plan or AOTInductor package, loadable with no wherevit
code; everything else -- inputs, outputs and their meaning, preprocessing, batch profile, precision,
library and GPU targets, hashes, export parity -- lives here.

The schema is the ``Sidecar`` dataclass: export writes one, ``read_sidecar`` validates the file
against it (an unknown, missing or mistyped field is an error naming the field), and every reader
(runtime, server, bench) uses its typed fields instead of indexing a dict. Each format's facts are a
typed section (``base/sidecar_sections.py``; a format from another package writes under
``extensions``).

Two serving facts are decided here, once, for every server and repository writer:
``default_model_name`` (the timm model name, plus the head's task) and ``triton_platform`` (the
Triton platform of an artifact kind, None where Triton has none).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wherevit import __version__
from wherevit.base.config import ConfigError, from_dict, to_dict
from wherevit.base.errors import WherevitError
from wherevit.base.image import Preprocess
from wherevit.base.io import atomic_write_text, sha256_file
from wherevit.base.sidecar_sections import (
    EngineProfile,
    EngineSection,
    HeadSection,
    ModelSection,
    OnnxSection,
    Pt2Section,
    QuantizationSection,
    SourceRecord,
)

__all__ = ["SIDECAR_FORMAT", "SidecarError", "Sidecar", "TensorSpec", "BatchRange", "ArtifactRecord",
           "sidecar_path", "write_sidecar", "read_sidecar", "artifact_record", "TENSOR_DTYPES",
           "default_model_name", "triton_platform", "TRITON_PLATFORMS", "TRITON_TYPES",
           # the typed sections (base/sidecar_sections.py)
           "ModelSection", "HeadSection", "OnnxSection", "EngineSection", "EngineProfile", "Pt2Section", "QuantizationSection",
           "SourceRecord"]

SIDECAR_FORMAT = "wherevit.artifact/1"

# Tensor dtypes a sidecar may name: NumPy's own names, so np.dtype(spec.dtype) is the one conversion.
TENSOR_DTYPES = ("float32", "float16", "uint8", "int8", "int32", "int64", "bool")

# Artifact kind -> the Triton platform that runs it, and the model file name Triton expects. A kind
# missing here (pt2: Triton's PyTorch backend runs TorchScript, not AOTInductor packages) has none.
TRITON_PLATFORMS: dict[str, tuple[str, str]] = {"onnx": ("onnxruntime_onnx", "model.onnx"), "engine": ("tensorrt_plan", "model.plan")}
# sidecar dtype -> Triton model-config data type (the graph's config and the encoded-image models' configs)
TRITON_TYPES: dict[str, str] = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int64": "TYPE_INT64",
                                "int32": "TYPE_INT32", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "bool": "TYPE_BOOL"}


class SidecarError(WherevitError, ValueError):
    """A missing, malformed or mismatching sidecar."""


@dataclass
class ArtifactRecord:
    """The artifact file the sidecar describes: name, size and hash (checked on load)."""

    file: str
    bytes: int
    sha256: str


@dataclass
class TensorSpec:
    """One graph input or output. ``shape`` uses -1 for a dynamic axis (the batch is always axis 0)."""

    name: str
    dtype: str
    shape: list[int]
    meaning: str = ""
    layout: str | None = None
    grid: list[int] | None = None  # patch_tokens: (grid_h, grid_w), None when the input size is dynamic
    classes: list[str] | None = None  # segmentation outputs: class names by index

    def validate(self) -> None:
        if self.dtype not in TENSOR_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {list(TENSOR_DTYPES)}")
        if not self.shape or any(d == 0 or d < -1 for d in self.shape):
            raise ValueError(f"shape {self.shape} must be non-empty with sizes >= 1 or -1 (dynamic)")


@dataclass
class BatchRange:
    """The batch sizes the artifact accepts (TensorRT's optimisation profile; opt = the typical one)."""

    min: int = 1
    opt: int = 1
    max: int = 1

    def validate(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch range must satisfy 1 <= min <= opt <= max, got {self.min}:{self.opt}:{self.max}")

    def __contains__(self, batch: int) -> bool:
        return self.min <= batch <= self.max


@dataclass
class Sidecar:
    """Everything a runtime needs to run an artifact and a user needs to trust it.

    Per-format sections (``onnx``, ``engine``, ``pt2``, and ``quantization`` from the INT8 step) are
    typed (``base/sidecar_sections.py``); ``parity`` is the export's parity report (for people)."""

    kind: str  # the artifact kind: "onnx", "engine", "pt2", ... (the format that made the file)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocess: dict[str, Any]
    batch: BatchRange
    precision: str  # a name in base/precision.py
    task: str = "features"  # "features", or the head's task: "depth", "seg", "pose", ...
    model: ModelSection = field(default_factory=ModelSection)
    dynamic_hw: bool = False
    parity: dict[str, Any] = field(default_factory=dict)
    head: HeadSection | None = None
    onnx: OnnxSection | None = None
    engine: EngineSection | None = None
    # INT8 artifacts: mode (static / dynamic), batch_dependent, calibration, reduce_range, the TensorRT build
    quantization: QuantizationSection | None = None
    pt2: Pt2Section | None = None  # AOTInductor package: device, torch version, compile facts
    extensions: dict[str, dict[str, Any]] = field(default_factory=dict)  # formats from other packages, by format name
    # written by write_sidecar
    format: str = SIDECAR_FORMAT
    artifact: ArtifactRecord | None = None
    created: str | None = None
    wherevit_version: str | None = None

    def validate(self) -> None:
        if not self.inputs or not self.outputs:
            raise ValueError("inputs and outputs must each list at least one tensor")
        Preprocess.from_dict(self.preprocess)  # raises naming the bad preprocessing field

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    @property
    def grid(self) -> tuple[int, int] | None:
        """The patch grid of ``patch_tokens`` (None for dynamic sizes or head graphs)."""
        spec = self.output("patch_tokens")
        return tuple(spec.grid) if spec is not None and spec.grid else None

    def input_preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.preprocess)

    @property
    def batch_dependent(self) -> bool:
        """True when an image's outputs depend on its batch-mates (dynamic INT8: activation scales span the batch)."""
        return self.quantization is not None and self.quantization.batch_dependent

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in to_dict(self).items() if v is not None and not (k == "extensions" and not v)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "sidecar") -> "Sidecar":
        """Validate plain data against the schema; errors name the field (``sidecar.inputs[0].dtype``)."""
        try:
            return from_dict(cls, data, _path=where)
        except ConfigError as e:
            raise SidecarError(str(e).replace("config key", "field")) from e


def default_model_name(meta: Sidecar) -> str:
    """The name an artifact is served and stored under unless one is given: the timm model name (directory-safe),
    plus the task for head graphs (``vit_small_patch16_224_depth``). Used by ``wherevit serve`` and Triton repositories."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", str(meta.model.model or "wherevit"))
    return base if meta.task == "features" else f"{base}_{meta.task}"


def triton_platform(kind: str) -> str | None:
    """The Triton platform of an artifact kind (``onnxruntime_onnx``, ``tensorrt_plan``); None where Triton has none."""
    entry = TRITON_PLATFORMS.get(kind)
    return entry[0] if entry else None


def sidecar_path(artifact: str | os.PathLike) -> Path:
    return Path(str(artifact) + ".json")


def artifact_record(artifact: str | os.PathLike) -> ArtifactRecord:
    p = Path(artifact)
    return ArtifactRecord(p.name, p.stat().st_size, sha256_file(p))


def write_sidecar(artifact: str | os.PathLike, meta: Sidecar, record: ArtifactRecord | None = None) -> Path:
    """Write ``meta`` with format, hash, size and creation time beside ``artifact`` (atomically).

    ``record``: the artifact's :func:`artifact_record` when the caller already has it (hashing a
    large graph twice is wasted seconds)."""
    meta = dataclasses.replace(
        meta, format=SIDECAR_FORMAT, artifact=record or artifact_record(artifact),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), wherevit_version=__version__)
    Sidecar.from_dict(meta.to_dict())  # never write what read_sidecar would refuse
    return atomic_write_text(sidecar_path(artifact), json.dumps(meta.to_dict(), indent=2) + "\n")


def read_sidecar(artifact: str | os.PathLike, verify_hash: bool = True) -> Sidecar:
    """Read and validate the sidecar of ``artifact``; the artifact's SHA-256 must match the sidecar's."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise FileNotFoundError(f"artifact not found: {artifact}")
    sc = sidecar_path(artifact)
    if not sc.is_file():
        raise SidecarError(f"{artifact}: no sidecar {sc.name} beside it; re-export with `wherevit export` "
                           "(the sidecar records preprocessing, outputs and build targets)")
    try:
        data = json.loads(sc.read_text())
    except json.JSONDecodeError as e:
        raise SidecarError(f"{sc}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise SidecarError(f"{sc}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != SIDECAR_FORMAT:
        raise SidecarError(f"{sc}: format {data.get('format')!r}, expected {SIDECAR_FORMAT!r}; "
                           "re-export the artifact with this version of wherevit")
    meta = Sidecar.from_dict(data, where=sc.name)
    if verify_hash:
        want = meta.artifact.sha256 if meta.artifact else None
        have = sha256_file(artifact)
        if want != have:
            raise SidecarError(f"{artifact} does not match its sidecar {sc.name}: file SHA-256 {have[:16]}..., "
                               f"sidecar says {str(want)[:16]}...; the file was replaced or corrupted -- re-export both together")
    return meta
