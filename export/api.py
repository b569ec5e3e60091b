"""``export_artifacts``: a checkpoint (or timm name) -> one artifact per format in a chain, each with its sidecar.

The steps: load the backbone (``load_backbone``) -> wrap it for export (``FeatureModel``, or
``HeadModel`` with a trained head) -> the base sidecar every artifact shares -> each format of
the chain (``format_chain``: ``engine`` needs ``onnx``, ...) writes its artifact, checks it
against the PyTorch fp32 reference and writes its sidecar. A step that fails removes what this
call wrote, so no half-made artifact is left behind. ``--precision int8`` is the ``int8`` format
(``export/formats/int8.py``): the fp32 ONNX, quantised, cosine-checked, and handed to TensorRT
when an engine is asked for.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from wherevit.base.errors import InvalidRequest
from wherevit.base.image import Preprocess
from wherevit.base.io import check_writable_dir
from wherevit.base.sidecar import BatchRange, Sidecar, TensorSpec
from wherevit.export.formats import ExportContext, format_chain, registered_formats
from wherevit.export.onnx_export import FeatureModel
from wherevit.export.parity import ParityError
from wherevit.runtime.compare import DEFAULT_RTOL, Comparison
from wherevit.train.checkpoint import CheckpointError, load_backbone

__all__ = ["ExportRequest", "ExportResult", "ParityError", "parse_batch", "export_artifacts", "output_format", "resolve_output"]

log = logging.getLogger("wherevit.export")


def parse_batch(spec: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """"1:8:64" -> (1, 8, 64); a single number N means N:N:N. Requires 1 <= min <= opt <= max."""
    if isinstance(spec, tuple):
        vals = spec
    else:
        try:
            vals = tuple(int(v) for v in str(spec).split(":"))
        except ValueError:
            raise InvalidRequest(f"batch range {spec!r} must be integers like 1:8:64") from None
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise InvalidRequest(f"batch range {spec!r} must be min:opt:max, e.g. 1:8:64")
    lo, opt, hi = vals
    if not 1 <= lo <= opt <= hi:
        raise InvalidRequest(f"batch range {spec!r} must satisfy 1 <= min <= opt <= max (opt is the typical batch, not the max)")
    return lo, opt, hi


@dataclass
class ExportRequest:
    checkpoint: str
    out_dir: Path
    format: str = "onnx"  # a registered export format (`wherevit export --help` lists them)
    precision: str = "fp32"
    batch: tuple[int, int, int] = (1, 8, 64)
    imgsz: int | None = None  # None: the backbone's training size
    which: str = "teacher"
    dynamic_hw: bool = False
    pooled: bool = True
    trt_lib: str = "auto"
    compute_capabilities: tuple[str, ...] = ()
    strongly_typed: bool | None = None
    workspace_mb: int = 4096
    rtol: float | None = None
    expect_model: str | None = None
    opset: int = 18
    head: str | None = None  # head_<task>.safetensors from `wherevit train-head`: export backbone + head as one graph
    device: str = "cpu"  # pt2: the device the package is compiled for ("cpu" or "cuda")
    # The requested format's file (`-o art/qs.onnx`); None: `out_dir/<stem>_<precision>.<ext>`. A path
    # with a format's suffix given as out_dir is taken as this (see ``resolve_output``).
    out_file: Path | None = None
    format_options: dict[str, Any] = field(default_factory=dict)  # per-format options by format name (e.g. "triton")
    # A weights file (train/weights.py layouts) for the timm model named by ``checkpoint``, or timm's
    # own download (``pretrained``); the sidecar's ``model.weights`` records where they came from.
    weights: str | None = None
    pretrained: bool = False


@dataclass
class ExportResult:
    artifacts: dict[str, Path] = field(default_factory=dict)  # format name -> file, in build order
    parity: Comparison | None = None
    int8_parity: Comparison | None = None  # the quantised graph's cosine parity (precision "int8")
    sidecars: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def onnx(self) -> Path | None:
        return self.artifacts.get("onnx")

    @property
    def engine(self) -> Path | None:
        return self.artifacts.get("engine")

    @property
    def int8(self) -> Path | None:
        return self.artifacts.get("int8")

    @property
    def pt2(self) -> Path | None:
        return self.artifacts.get("pt2")

    @property
    def primary(self) -> Path:
        """The artifact of the requested format (the last one built)."""
        return list(self.artifacts.values())[-1]


def export_artifacts(req: ExportRequest) -> ExportResult:
    """Export per ``req``; see the module docstring. Raises ``ParityError`` when parity fails."""
    chain = _check_request(req)
    ctx = _context(req, graph_precision=chain[-1].graph_precision(req))
    ctx.result = result = ExportResult()
    try:
        for fmt in chain:
            path = fmt.build(ctx)
            result.artifacts[fmt.name] = path
            result.sidecars.append(Path(str(path) + ".json"))
    except BaseException:
        for p in ctx.written:
            p.unlink(missing_ok=True)
        raise
    return result


def _check_request(req: ExportRequest) -> list:
    """The format chain, with every cheap check done before the slow steps."""
    formats = registered_formats()
    if req.format not in formats:
        raise InvalidRequest(f"--format must be one of {', '.join(sorted(formats))}, got {req.format!r}")
    if req.precision not in (*DEFAULT_RTOL, "int8"):
        raise InvalidRequest(f"--precision must be one of {', '.join(DEFAULT_RTOL)}, int8; got {req.precision!r}")
    req.batch = parse_batch(req.batch)
    if req.out_file is None:
        req.out_dir, _, req.out_file = resolve_output(req.out_dir, req.format)
    # INT8 is one format whatever the container: it quantises the fp32 ONNX and, for --format engine,
    # hands the Q/DQ graph to TensorRT itself (a refusal is recorded, not fatal).
    chain = format_chain("int8" if req.precision == "int8" and req.format in ("onnx", "engine") else req.format)
    for fmt in chain:
        fmt.check(req)
    return chain


def output_format(out: str | Path) -> str | None:
    """The registered format whose file suffix ``out`` ends with (``.onnx``, ``.engine``/``.plan``, ``.pt2``), else None."""
    suffix = Path(out).suffix.lower()
    return next((name for name, cls in registered_formats().items() if suffix and suffix in cls.suffixes), None)


def resolve_output(out: str | Path, fmt: str | None) -> tuple[Path, str, Path | None]:
    """``-o``: a folder, or a file of the requested format. Returns (folder, format, file or None).

    A path ending in a format's suffix is that format's file (``-o art/qs.onnx``, ``-o m.plan``): the
    format follows from it when ``fmt`` is None, and must match ``fmt`` otherwise. Formats built before
    it in the same call (the engine's ONNX) go beside it with the same stem and their own suffix."""
    out = Path(out)
    owner = output_format(out)
    if owner is None:
        return out, fmt or "onnx", None
    if fmt is not None and fmt != owner:
        want = "/".join(registered_formats()[fmt].suffixes) if fmt in registered_formats() else "its suffix"
        raise InvalidRequest(f"-o {out} is a file name for the {owner} format, but the format is {fmt}: "
                             f"give a file ending in {want}, or a folder")
    return out.parent, owner, out


def _context(req: ExportRequest, graph_precision: str) -> ExportContext:
    """Load the backbone (and head), decide size and preprocessing, and fill the shared sidecar fields."""
    out_dir = check_writable_dir(req.out_dir)
    # A fixed-size graph at the training size needs no position-embedding resampling ops.
    resample = req.dynamic_hw or req.imgsz is not None
    named = req.weights is not None or req.pretrained  # built at --imgsz: timm resamples the grid once, at load
    model, info = load_backbone(req.checkpoint, which=req.which, dynamic_img_size=resample, expect_model=req.expect_model,
                                weights=req.weights, pretrained=req.pretrained, img_size=req.imgsz if named else None)
    size = (req.imgsz, req.imgsz) if req.imgsz else tuple(model.patch_embed.img_size)
    p = model.patch_embed.patch_size
    if size[0] % p[0] or size[1] % p[1]:
        raise InvalidRequest(f"image size {size} is not a multiple of the patch size {tuple(p)}")
    preprocess = Preprocess.from_dict(_known_preprocess(info.get("preprocess", {})), size=size)
    wrap, head_meta = _wrapper(req, model)
    reference = wrap(copy.deepcopy(model), "fp32")
    grid = (size[0] // p[0], size[1] // p[1])
    sidecar = _shared_sidecar(reference, info, req, preprocess, graph_precision, int(model.embed_dim), grid, head_meta)
    stem = head_meta["task"] if head_meta else "model"
    return ExportContext(req, out_dir, stem, model, info, wrap, reference, preprocess, req.batch, sidecar, head_meta)


def _known_preprocess(record: dict) -> dict:
    """A checkpoint's preprocessing record, minus training-only notes older checkpoints carry."""
    return {k: v for k, v in record.items() if k in ("size", "mean", "std", "resize", "interpolation", "color_order", "layout")}


def _wrapper(req: ExportRequest, model: nn.Module):
    """(backbone, precision) -> the graph to export: features, or backbone + a trained head."""
    if not req.head:
        return (lambda bb, prec: FeatureModel(bb, prec, req.pooled).eval()), None
    from wherevit.export.head_models import HeadModel, load_head

    head, head_meta = load_head(req.head)
    if head_meta["embed_dim"] != int(model.embed_dim):
        raise CheckpointError(f"{req.head} is a head for width {head_meta['embed_dim']}, the backbone is {model.embed_dim} wide")
    return (lambda bb, prec: HeadModel(bb, copy.deepcopy(head), head_meta, prec).eval()), head_meta


def _shared_sidecar(model, info: dict, req: ExportRequest, pre: Preprocess, precision: str, dim: int, grid,
                    head_meta: dict | None) -> Sidecar:
    h, w = pre.size
    hw = [-1, -1] if req.dynamic_hw else [h, w]
    inputs = [TensorSpec(n, "float32", [-1, 3, *hw], "RGB images, preprocessed as `preprocess` says", layout="NCHW")
              for n in model.input_names]
    outputs = [TensorSpec(**o) for o in model.output_meta(dim, None if req.dynamic_hw else grid)]
    return Sidecar(
        kind="", inputs=inputs, outputs=outputs, preprocess=pre.to_dict(), batch=BatchRange(*req.batch), precision=precision,
        task=head_meta["task"] if head_meta else "features",
        model={k: info.get(k) for k in ("model", "timm_kwargs", "arch", "source", "step")} | {"checkpoint": str(req.checkpoint)}
        # how positions were made when training replaced timm's embedding (the posfield, baked into pos_embed)
        | ({"positional": info["positional"]} if "positional" in info else {})
        # where the weights came from (file, SHA-256, layout) and, for a run, what it started from
        | {k: info[k] for k in ("weights", "initialised_from") if k in info},
        dynamic_hw=req.dynamic_hw, head={**head_meta, "file": str(req.head)} if head_meta else None,
    )

