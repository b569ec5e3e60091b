"""Triton model repository: an exported ONNX graph or engine as ``REPO/<name>/config.pbtxt`` + ``REPO/<name>/<v>/``.

Triton Inference Server (and KServe's Triton runtime) then serves the artifact with no wherevit code:

    REPO/<name>/config.pbtxt          platform, max_batch_size, input/output dims (no batch axis),
                                      dynamic_batching, instance_group, wherevit.* parameters
    REPO/<name>/<v>/model.onnx        (or model.plan for an engine, platform tensorrt_plan)
    REPO/<name>/<v>/model.onnx.json   the sidecar, kept beside the model (``wherevit serve`` reads it)

Everything comes from the sidecar: dims, batch profile (``max_batch_size`` is the profile's max, the
preferred batch sizes are its opt and max) and the preprocessing, recorded as JSON in
``parameters`` because Triton receives already preprocessed tensors. An existing repository gains a
new version directory; a version directory appears whole (built beside, then renamed) and the
config is replaced atomically, so a polling Triton never sees half a model.

``TritonOptions(images=ImagesOptions())`` (``--triton-images``) also writes ``<name>_images``, an
ensemble that takes encoded image files (``triton_images.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from wherevit.base.errors import WherevitError
from wherevit.base.io import atomic_write_text, check_writable_dir
from wherevit.base.options import option
from wherevit.base.precision import precision_names
from wherevit.base.sidecar import TRITON_PLATFORMS, TRITON_TYPES, Sidecar, TensorSpec, default_model_name, read_sidecar, sidecar_path
from wherevit.export.formats.base import ExportContext, ExportFormat, register_format
from wherevit.export.formats.triton_images import ImagesOptions, TritonImageModels, check_images_models, write_images_models
from wherevit.export.request import StepResult

__all__ = ["TritonOptions", "TritonModel", "TritonRepositoryError", "triton_config_text", "write_triton_model",
           "TritonOnnxFormat", "TritonEngineFormat", "default_model_name"]

_TRITON_TYPES = TRITON_TYPES  # sidecar dtype -> Triton data type: one table, in base/sidecar.py
_PLATFORMS = TRITON_PLATFORMS  # artifact kind -> (platform, model file): decided once, in base/sidecar.py
TRITON_BACKENDS = ("default", "openvino")  # "default": the platform of the artifact's kind
_KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU", "model": "KIND_MODEL"}


class TritonRepositoryError(WherevitError, ValueError):
    """The artifact cannot become this Triton model (or clashes with what the repository holds)."""


@dataclass(frozen=True)
class TritonOptions:
    # model directory; default: the timm model name, plus the task for head graphs (base.sidecar.default_model_name)
    name: str | None = option(None, cli="--triton-name", help="Triton model name (default: the timm model name, plus the head's task).")
    # default: one above the highest version present (1 in a new repository)
    version: int | None = option(None, cli="--triton-version", help="Model version to write (default: the next one).")
    max_queue_delay_us: int = option(100, cli="--triton-queue-delay-us", help="Triton dynamic batching: max_queue_delay_microseconds.")
    preferred_batch_sizes: tuple[int, ...] | None = option(None, cli=False)  # default: the profile's opt and max
    instance_kind: str = option("default", cli="--triton-instance-kind", choices=("default", "auto", "gpu", "cpu", "model"),
                                help="Triton instance_group kind (default: gpu for engines, auto for ONNX).")
    instance_count: int = option(1, cli="--triton-instances", help="Triton instance_group count.")
    gpus: tuple[int, ...] = option((), cli=False)  # GPU ids for KIND_GPU instances (empty: every GPU)
    # also <name>_images: encoded images in (triton_images.py); None: the graph only
    images: ImagesOptions | None = option(None, cli="--triton-images",
                                          help="Also <name>_images: an ensemble taking encoded image files (BYTES) through a "
                                               "Python-backend preprocessing model (needs numpy and opencv-python-headless "
                                               "in Triton's Python).")
    # "openvino": Triton's OpenVINO backend on CPU instances (ONNX graphs) instead of the kind's platform
    backend: str = option("default", cli="--triton-backend", choices=TRITON_BACKENDS,
                          help="openvino: Triton's OpenVINO backend on CPU instances (ONNX) instead of the kind's platform.")

    def __post_init__(self) -> None:
        if self.instance_kind != "default" and self.instance_kind not in _KINDS:
            raise TritonRepositoryError(f"instance kind {self.instance_kind!r}: choose one of default, {', '.join(_KINDS)}")
        if self.backend not in TRITON_BACKENDS:
            raise TritonRepositoryError(f"Triton backend {self.backend!r}: choose {' or '.join(TRITON_BACKENDS)}")
        if self.instance_count < 1 or self.max_queue_delay_us < 0 or (self.version is not None and self.version < 1):
            raise TritonRepositoryError(f"invalid Triton options {self}: instance_count >= 1, max_queue_delay_us >= 0, version >= 1")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise TritonRepositoryError(f"model name {self.name!r}: use letters, digits, '_', '.', '-' (it is a directory name)")


@dataclass
class TritonModel:
    """What was written: the model directory, its config and the new version directory."""

    model_dir: Path
    config: Path
    version: int
    version_dir: Path
    model_file: Path
    notes: list[str] = field(default_factory=list)
    images: TritonImageModels | None = None  # the encoded-image models, when asked for


def _pbtxt_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dims(shape: list[int]) -> str:
    return "[ " + ", ".join(str(int(d)) for d in shape[1:]) + " ]"  # Triton's dims leave out the batch axis


def _tensor(spec: TensorSpec, is_input: bool) -> str:
    dtype = _TRITON_TYPES.get(spec.dtype)
    if dtype is None:
        raise TritonRepositoryError(f"tensor {spec.name!r}: dtype {spec.dtype!r} has no Triton type")
    if len(spec.shape) < 2:
        raise TritonRepositoryError(f"tensor {spec.name!r}: shape {spec.shape} has no dimension after the batch axis")
    fmt = " format: FORMAT_NCHW" if is_input and spec.layout == "NCHW" else ""
    return f'  {{ name: {_pbtxt_string(spec.name)} data_type: {dtype}{fmt} dims: {_dims(spec.shape)} }}'


def triton_config_text(meta: Sidecar, name: str, options: TritonOptions = TritonOptions()) -> str:
    """``config.pbtxt`` for an artifact described by ``meta`` (its sidecar)."""
    kind = meta.kind
    if kind not in _PLATFORMS:
        raise TritonRepositoryError(f"artifact kind {kind!r} has no Triton platform; Triton export takes "
                                    f"{' or '.join(_PLATFORMS)} artifacts")
    platform = _PLATFORMS[kind][0]
    lo, opt, hi = meta.batch.min, meta.batch.opt, meta.batch.max
    if any(int(t.shape[0]) != -1 for t in meta.inputs):
        raise TritonRepositoryError("the inputs have a fixed batch axis; Triton's max_batch_size needs it dynamic "
                                    "(Triton: 'first dimension must be -1'); re-export with a batch range")
    if kind == "engine" and lo > 1:
        raise TritonRepositoryError(f"the engine's profile starts at batch {lo}; Triton's batcher sends batches from 1: "
                                    "rebuild with --batch 1:OPT:MAX")
    preferred = sorted(set(options.preferred_batch_sizes or (opt, hi)))
    if not all(1 <= b <= hi for b in preferred):
        raise TritonRepositoryError(f"preferred batch sizes {preferred} must lie in 1..{hi} (the profile's max)")
    inst = options.instance_kind if options.instance_kind != "default" else ("gpu" if kind == "engine" else "auto")
    openvino = options.backend == "openvino"
    if openvino and (kind != "onnx" or inst == "gpu"):
        raise TritonRepositoryError(f"Triton's OpenVINO backend runs ONNX graphs on CPU instances (this is a {kind} "
                                    f"artifact, instance kind {inst}); use --triton-backend default")
    inst = "cpu" if openvino and inst == "auto" else inst
    gpus = f" gpus: [ {', '.join(map(str, options.gpus))} ]" if options.gpus and inst == "gpu" else ""
    params = {
        "wherevit.preprocess": json.dumps(meta.preprocess, sort_keys=True),
        "wherevit.task": meta.task,
        "wherevit.sidecar": _PLATFORMS[kind][1] + ".json",
        "wherevit.precision": meta.precision,
    }
    if openvino:  # the parameters the OpenVINO backend reads; the wherevit.* ones it ignores
        params.update({"NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"})
    lines = [
        f"# Written by wherevit from {meta.artifact.file if meta.artifact else 'an artifact'}; the sidecar beside the model has the rest.",
        f"name: {_pbtxt_string(name)}",
        *(['backend: "openvino"', f"default_model_filename: {_pbtxt_string(_PLATFORMS[kind][1])}"] if openvino else
          [f"platform: {_pbtxt_string(platform)}"]),
        f"max_batch_size: {hi}",
        "input [\n" + ",\n".join(_tensor(t, True) for t in meta.inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor(t, False) for t in meta.outputs) + "\n]",
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}\n"
        "}",
        f"instance_group [ {{ count: {options.instance_count} kind: {_KINDS[inst]}{gpus} }} ]",
        *(f"parameters {{ key: {_pbtxt_string(k)} value: {{ string_value: {_pbtxt_string(v)} }} }}" for k, v in params.items()),
    ]
    return "\n".join(lines) + "\n"


def _signature(meta: Sidecar) -> dict:
    """What must not change between versions of one Triton model (the config is per model, not per version)."""
    io = lambda ts: [(t.name, t.dtype, [int(d) for d in t.shape]) for t in ts]
    return {"kind": meta.kind, "inputs": io(meta.inputs), "outputs": io(meta.outputs), "max_batch": meta.batch.max}


def _versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()) if model_dir.is_dir() else []


def _check_compatible(model_dir: Path, versions: list[int], meta: Sidecar) -> None:
    for v in reversed(versions):
        previous = next((p for p in (model_dir / str(v)).glob("model.*.json")), None)
        if previous is None:
            continue
        old = read_sidecar(previous.with_suffix(""), verify_hash=False)
        if _signature(old) != _signature(meta):
            raise TritonRepositoryError(
                f"{model_dir} holds version {v} with another interface ({_signature(old)}) than this artifact "
                f"({_signature(meta)}); Triton keeps one config per model: choose another --name or repository")
        return


def _place(src: Path, dst: Path, move: bool) -> None:
    if move:
        try:
            os.replace(src, dst)
            return
        except OSError:  # another filesystem: copy, then remove the original below
            pass
    shutil.copyfile(src, dst)
    if move:
        src.unlink()


def write_triton_model(artifact: str | os.PathLike, repo: str | os.PathLike, options: TritonOptions = TritonOptions(),
                       move: bool = False) -> TritonModel:
    """Add ``artifact`` (ONNX or engine, sidecar beside it) to the Triton repository ``repo`` as a new version.

    ``move``: move the artifact and its sidecar into the repository instead of copying them (the
    export chain does this, so the repository root holds no stray model file)."""
    artifact = Path(artifact)
    meta = read_sidecar(artifact)
    kind = meta.kind
    if kind not in _PLATFORMS:
        raise TritonRepositoryError(f"{artifact}: kind {kind!r} has no Triton platform; Triton export takes "
                                    f"{' or '.join(_PLATFORMS)} artifacts")
    name = options.name or default_model_name(meta)
    config = triton_config_text(meta, name, options)  # every check before anything is written
    model_dir = check_writable_dir(Path(repo) / name)
    versions = _versions(model_dir)
    _check_compatible(model_dir, versions, meta)
    if options.images is not None:
        check_images_models(repo, name, meta)
    version = options.version or (versions[-1] + 1 if versions else 1)
    version_dir = model_dir / str(version)
    if version_dir.exists():
        raise TritonRepositoryError(f"{version_dir} exists; versions are never overwritten (omit the version to add the next)")
    filename = _PLATFORMS[kind][1]
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=model_dir))
    try:
        shutil.copyfile(sidecar_path(artifact), sidecar_path(staging / filename))  # sidecar first: a failure moves nothing
        _place(artifact, staging / filename, move)
        os.chmod(staging, 0o755)  # mkdtemp makes 0700; Triton may run as another user
        os.rename(staging, version_dir)  # the version appears whole, or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    images = None
    try:
        if options.images is not None:
            images = write_images_models(repo, name, version, meta, options.images)
        config_path = atomic_write_text(model_dir / "config.pbtxt", config)
    except BaseException:
        shutil.rmtree(version_dir, ignore_errors=True)
        if images is not None:
            shutil.rmtree(images.preprocess_version_dir, ignore_errors=True)
        raise
    if move:
        sidecar_path(artifact).unlink(missing_ok=True)
    notes = []
    if options.backend == "openvino":
        notes.append("Triton's OpenVINO backend uses OpenVINO's default inference precision: bf16 on CPUs with BF16 units "
                     "(AMX, AVX-512 BF16), and it has no parameter to force f32 (HINT_BF16 takes only YES); wherevit's own "
                     "openvino backend keeps f32")
    if images is not None:
        notes.append(f"Triton model {images.ensemble_name!r} takes encoded images (BYTES image_bytes, shape [B, 1]); "
                     "its Python backend needs numpy and opencv-python-headless")
    if meta.engine is not None:
        if meta.engine.library == "tensorrt_rtx":
            notes.append("this engine was built with TensorRT-RTX; Triton's tensorrt_plan backend loads engines of the full "
                         "TensorRT it was built with: for Triton, build with --trt-lib tensorrt at the server's TensorRT version")
        else:
            notes.append(f"engines load only in the TensorRT version that built them ({meta.engine.version}); "
                         "use the Triton release that ships it")
    return TritonModel(model_dir, config_path, version, version_dir, version_dir / filename, notes, images)


class _TritonFormat(ExportFormat):
    """``--format triton``: the graph this call exported, placed in a Triton model repository at ``--out``.

    Options: a ``TritonOptions``. ``--precision int8`` packages the INT8 step's graph (or its engine)."""

    source: str
    suffixes = ()  # the output is a repository directory, not a file
    precisions = precision_names()
    Options = TritonOptions

    def build(self, ctx: ExportContext) -> StepResult:
        src = ctx.produced[self.source]
        res = write_triton_model(src, ctx.out_dir, ctx.options(self), move=True)
        notes = res.notes + [f"Triton model {res.model_dir.name!r} version {res.version}: {res.config}"]
        # the artifact and its sidecar now live in the repository
        moved = {src: res.model_file, sidecar_path(src): sidecar_path(res.model_file)}
        return StepResult(res.model_file, sidecar_path(res.model_file), notes=notes, moved=moved)


@register_format
class TritonOnnxFormat(_TritonFormat):
    name = "triton"
    needs = ("onnx",)
    source = "onnx"
    help = "the ONNX graph in a Triton model repository at --out (a new version if the model is there)"


@register_format
class TritonEngineFormat(_TritonFormat):
    name = "triton-engine"
    needs = ("engine",)
    source = "engine"
    help = "the engine in a Triton model repository at --out"
