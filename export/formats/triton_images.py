"""The encoded-image models of a Triton repository: clients send image files' bytes, not float tensors.

Beside the graph ``REPO/<name>`` (``triton.py``), ``--triton-images`` writes two more models::

    REPO/<name>_preprocess/config.pbtxt     backend "python": BYTES image_bytes [B, 1] -> FP32 images [B, 3, H, W]
    REPO/<name>_preprocess/<v>/model.py     wherevit/runtime/triton_python_model.py, verbatim
    REPO/<name>_preprocess/<v>/wherevit/... the torch-free modules it imports (base/image.py, base/errors.py)
    REPO/<name>_images/config.pbtxt         platform "ensemble": <name>_preprocess -> <name>
    REPO/<name>_images/1/                   (empty: Triton wants a version directory for an ensemble)

Why an ensemble and not BLS: the pipeline is a fixed two-step graph, which is what Triton's
ensemble scheduler is for. The graph step keeps its own dynamic batcher, so images preprocessed for
different requests are batched together on the GPU, tensors pass between the steps inside the server
(no Python in the data path after decoding), and each step shows up on its own in Triton's
statistics. BLS would add a Python round trip per request for nothing conditional.

Why the modules are copied rather than imported from an installed wherevit: a model version must
preprocess exactly as the sidecar of the graph it feeds says, so the code travels with the version
(``model.py`` puts its own directory first on ``sys.path``); Triton's Python environment then needs
only numpy and opencv-python-headless, never torch. Versions: the preprocessing model gets the
graph's version number; the ensemble runs the newest version of both (``model_version: -1``).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from wherevit import __version__
from wherevit.base.errors import WherevitError
from wherevit.base.io import atomic_write_text, check_writable_dir
from wherevit.base.options import option
from wherevit.base.sidecar import TRITON_TYPES, Sidecar
from wherevit.runtime import triton_python_model as _model

__all__ = ["ImagesOptions", "TritonImageModels", "images_model_names", "preprocess_config_text", "ensemble_config_text",
           "check_images_models", "write_images_models", "vendored_sources"]

_TRITON_TYPES = TRITON_TYPES  # sidecar dtype -> Triton data type: one table, in base/sidecar.py
_MARK = "wherevit.images_of"  # a config with this parameter (the graph's name) was written here and may be replaced


class TritonImagesError(WherevitError, ValueError):
    """The encoded-image models cannot be written for this artifact or repository."""


@dataclass(frozen=True)
class ImagesOptions:
    """The encoded-image models' settings (``TritonOptions.images``); every bound lands in config.pbtxt."""

    # preprocessing processes (KIND_CPU); decoding is CPU work, one process per core helps
    instance_count: int = option(2, cli="--triton-images-instances", help="--triton-images: preprocessing model instances (processes; default 2).")
    max_request_mb: float = option(64.0, help="--triton-images: encoded MB per request (default 64, as `wherevit serve`).")
    # largest width x height an image header may declare (64 Mpx: a 45 Mpx photo passes)
    max_image_pixels: int = option(1 << 26, help="--triton-images: largest width x height an image header may declare "
                                                 "(default 64 Mpx; refused before decoding).")

    def __post_init__(self) -> None:
        if self.instance_count < 1 or self.max_request_mb <= 0 or self.max_image_pixels < 4:
            raise TritonImagesError(f"invalid image-model options {self}: instance_count >= 1, max_request_mb > 0, "
                                    "max_image_pixels >= 4")


@dataclass
class TritonImageModels:
    """What was written: the preprocessing model's version directory and the ensemble's config."""

    preprocess_dir: Path
    preprocess_version_dir: Path
    ensemble_dir: Path
    ensemble_config: Path

    @property
    def ensemble_name(self) -> str:
        return self.ensemble_dir.name


def images_model_names(name: str) -> tuple[str, str]:
    """(preprocessing model, ensemble) for the graph ``name``: the ensemble is ``<name>_images``, the
    model ``wherevit serve`` serves for encoded images, so a client works against either server."""
    return f"{name}_preprocess", f"{name}_images"


def _q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string (no \\u escapes) is a valid protobuf text-format string


def _bytes_inputs(meta: Sidecar) -> dict[str, tuple[str, str]]:
    """``{bytes input: (graph input, dtype)}``, named as ``wherevit serve`` names them (images_a -> image_bytes_a)."""
    out = {}
    for t in meta.inputs:
        if t.layout != "NCHW" or len(t.shape) != 4 or t.shape[1] != 3 or t.dtype not in _TRITON_TYPES:
            raise TritonImagesError(f"input {t.name!r} ({t.dtype} {t.shape}, layout {t.layout}) is not an NCHW image batch: "
                                    "the encoded-image model preprocesses images only")
        out[t.name.replace("images", "image_bytes", 1) if "images" in t.name else f"{t.name}_bytes"] = (t.name, t.dtype)
    return out


def _dims(shape: list[int]) -> str:
    return "[ " + ", ".join(str(int(d)) for d in shape) + " ]"


def preprocess_config_text(meta: Sidecar, name: str, options: ImagesOptions = ImagesOptions()) -> str:
    """``config.pbtxt`` of ``<name>_preprocess`` (Python backend) for the graph described by ``meta``."""
    pre_name, _ = images_model_names(name)
    h, w = (int(v) for v in meta.preprocess["size"])
    inputs = _bytes_inputs(meta)
    params = {
        _MARK: name,
        _model.PARAM_PREPROCESS: json.dumps(meta.preprocess, sort_keys=True),
        _model.PARAM_INPUTS: json.dumps({k: list(v) for k, v in inputs.items()}),
        _model.PARAM_MAX_REQUEST_BYTES: str(int(options.max_request_mb * (1 << 20))),
        _model.PARAM_MAX_IMAGE_PIXELS: str(options.max_image_pixels),
    }
    lines = [
        f"# Written by wherevit {__version__}: encoded images -> {name}'s inputs, preprocessed as the sidecar says.",
        f"# Needs numpy and opencv-python-headless in the Python backend's environment (not torch, not wherevit).",
        f"name: {_q(pre_name)}",
        'backend: "python"',
        f"max_batch_size: {meta.batch.max}",
        "input [\n" + ",\n".join(f"  {{ name: {_q(k)} data_type: TYPE_STRING dims: [ 1 ] }}" for k in inputs) + "\n]",
        "output [\n" + ",\n".join(f"  {{ name: {_q(g)} data_type: {_TRITON_TYPES[dt]} dims: [ 3, {h}, {w} ] }}"
                                  for g, dt in inputs.values()) + "\n]",
        f"instance_group [ {{ count: {options.instance_count} kind: KIND_CPU }} ]",
        *(f"parameters {{ key: {_q(k)} value: {{ string_value: {_q(v)} }} }}" for k, v in params.items()),
    ]
    return "\n".join(lines) + "\n"


def ensemble_config_text(meta: Sidecar, name: str) -> str:
    """``config.pbtxt`` of the ensemble ``<name>_images``: BYTES in, the graph's outputs out."""
    pre_name, ens_name = images_model_names(name)
    inputs = _bytes_inputs(meta)
    for o in meta.outputs:
        if o.dtype not in _TRITON_TYPES:
            raise TritonImagesError(f"output {o.name!r}: dtype {o.dtype!r} has no Triton type")
    mapping = lambda pairs: " ".join(f"{kind} {{ key: {_q(k)} value: {_q(v)} }}" for kind, k, v in pairs)
    pre_step = mapping([("input_map", k, k) for k in inputs] + [("output_map", g, g) for g, _ in inputs.values()])
    graph_step = mapping([("input_map", g, g) for g, _ in inputs.values()] + [("output_map", o.name, o.name) for o in meta.outputs])
    lines = [
        f"# Written by wherevit {__version__}: send image files' bytes (BYTES, shape [B, 1]); {pre_name} decodes and "
        f"preprocesses them, {name} runs.",
        f"name: {_q(ens_name)}",
        'platform: "ensemble"',
        f"max_batch_size: {meta.batch.max}",
        "input [\n" + ",\n".join(f"  {{ name: {_q(k)} data_type: TYPE_STRING dims: [ 1 ] }}" for k in inputs) + "\n]",
        "output [\n" + ",\n".join(f"  {{ name: {_q(o.name)} data_type: {_TRITON_TYPES[o.dtype]} dims: {_dims(o.shape[1:])} }}"
                                  for o in meta.outputs) + "\n]",
        "ensemble_scheduling {\n  step [\n"
        f"    {{ model_name: {_q(pre_name)} model_version: -1 {pre_step} }},\n"
        f"    {{ model_name: {_q(name)} model_version: -1 {graph_step} }}\n"
        "  ]\n}",
        f"parameters {{ key: {_q(_MARK)} value: {{ string_value: {_q(name)} }} }}",
    ]
    return "\n".join(lines) + "\n"


def _module_file(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise TritonImagesError(f"cannot find the source of {module}")
    return Path(spec.origin)


def _wherevit_imports(source: str) -> set[str]:
    """The wherevit modules a source file imports (``from wherevit.base import image`` names a module too)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("wherevit."):
            if _is_package(node.module):
                found.update(f"{node.module}.{a.name}" for a in node.names if importlib.util.find_spec(f"{node.module}.{a.name}"))
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("wherevit."))
    return {m for m in found if not _is_package(m)}


def _is_package(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.submodule_search_locations is not None


def vendored_sources() -> dict[str, Path]:
    """The files the model directory holds: ``model.py`` and every wherevit module it imports, transitively
    (relative path -> source file). Only the torch-free base layer may be reached."""
    model_file = Path(_model.__file__)
    files: dict[str, Path] = {"model.py": model_file}
    todo, seen = sorted(_wherevit_imports(model_file.read_text())), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if not module.startswith("wherevit.base."):
            raise TritonImagesError(f"the Triton preprocessing model reaches {module}; only wherevit.base (torch-free) travels")
        src = _module_file(module)
        files[module.replace(".", "/") + ".py"] = src
        todo.extend(sorted(_wherevit_imports(src.read_text()) - seen))
    return files


def _init_text(package: str) -> str:
    return (f'"""{package}: a copy of the torch-free modules a Triton preprocessing model needs, written by '
            f'wherevit {__version__} export."""\n\n' + (f'__version__ = "{__version__}"\n' if package == "wherevit" else ""))


def check_images_models(repo: str | os.PathLike, name: str, meta: Sidecar) -> None:
    """Every check before anything is written: an image-input graph, and no foreign model under our names."""
    _bytes_inputs(meta)
    ensemble_config_text(meta, name)
    for model in images_model_names(name):
        config = Path(repo) / model / "config.pbtxt"
        if config.is_file() and _MARK not in config.read_text():
            raise TritonImagesError(f"{config} exists and was not written by wherevit's --triton-images; choose another "
                                    "--triton-name or repository")


def write_images_models(repo: str | os.PathLike, name: str, version: int, meta: Sidecar,
                        options: ImagesOptions = ImagesOptions()) -> TritonImageModels:
    """Write ``<name>_preprocess`` (version ``version``) and the ensemble ``<name>_images`` into ``repo``.

    The version directory appears whole (staged, then renamed) and the configs are replaced atomically.
    A failure removes what this call added."""
    check_images_models(repo, name, meta)
    pre_name, ens_name = images_model_names(name)
    pre_config, ens_config = preprocess_config_text(meta, name, options), ensemble_config_text(meta, name)
    new_dirs = [d for d in (Path(repo) / pre_name, Path(repo) / ens_name) if not d.exists()]
    pre_dir, ens_dir = check_writable_dir(Path(repo) / pre_name), check_writable_dir(Path(repo) / ens_name)
    version_dir = pre_dir / str(version)
    if version_dir.exists():
        raise TritonImagesError(f"{version_dir} exists; versions are never overwritten")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=pre_dir))
    added: list[Path] = []
    try:
        for rel, src in vendored_sources().items():
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        for pkg_dir in sorted(d for d in staging.rglob("*") if d.is_dir()):  # wherevit/, wherevit/base/
            package = ".".join(pkg_dir.relative_to(staging).parts)
            (pkg_dir / "__init__.py").write_text(_init_text(package))
        for d in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
            os.chmod(d, 0o755)  # mkdtemp makes 0700; Triton may run as another user
        os.rename(staging, version_dir)
        added.append(version_dir)
        if not any(p.is_dir() and p.name.isdigit() for p in ens_dir.iterdir()):
            (ens_dir / "1").mkdir()
            added.append(ens_dir / "1")
        atomic_write_text(pre_dir / "config.pbtxt", pre_config)
        ens_path = atomic_write_text(ens_dir / "config.pbtxt", ens_config)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for p in [*added, *new_dirs]:  # a model directory without a config would fail Triton's start-up
            shutil.rmtree(p, ignore_errors=True)
        raise
    return TritonImageModels(pre_dir, version_dir, ens_dir, ens_path)
