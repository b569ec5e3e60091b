"""``export_artifacts``: a checkpoint (or timm name) -> one artifact per format in a chain, each with its sidecar.

The steps: check the request against what the format declares (its precisions, its options, its
library) before anything slow -> load the backbone (``load_backbone``) -> wrap it for export
(``FeatureModel``, or ``HeadModel`` with a trained head) -> the base sidecar every artifact shares
-> each format of the chain (``format_chain``: ``engine`` needs ``onnx``, ...) writes its artifact,
checks it against the PyTorch fp32 reference, writes its sidecar and returns a ``StepResult``. With
a quantised precision the INT8 step (``export/quant_step.py``) runs right after the ``onnx`` format
and its graph becomes the call's ONNX product. This module keeps the call's records from what the
steps return; a step that fails removes what this call wrote, so no half-made artifact is left.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from wherevit.base.errors import InvalidRequest
from wherevit.base.image import Preprocess
from wherevit.base.io import check_writable_dir
from wherevit.base.precision import REFERENCE_PRECISION, check_supported, get_precision
from wherevit.base.sidecar import BatchRange, HeadSection, ModelSection, Sidecar, TensorSpec
from wherevit.export.formats import ExportContext, ExportFormat, format_chain, registered_formats
from wherevit.export.formats.base import FORMATS
from wherevit.export.onnx_export import FeatureModel
from wherevit.export.parity import ParityError
from wherevit.export.quant_step import QuantizeStep
from wherevit.export.request import ExportRequest, StepResult
from wherevit.runtime.compare import Comparison
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
class ExportResult:
    """The call's records, kept by ``export_artifacts`` from what each step returned."""

    artifacts: dict[str, Path] = field(default_factory=dict)  # format (or step) name -> file, in build order
    parity: Comparison | None = None  # the float graph's parity against PyTorch fp32
    int8_parity: Comparison | None = None  # the quantised graph's cosine parity (precision "int8")
    sidecars: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    primary: Path | None = None  # the requested format's product (for int8: the INT8 graph, or the engine built from it)

    @property
    def onnx(self) -> Path | None:
        """The float ONNX graph (with --precision int8, the graph the INT8 step quantised)."""
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

    def add(self, name: str, step: StepResult) -> None:
        """Record what one step returned."""
        for old, new in step.moved.items():
            self.artifacts = {k: new if v == old else v for k, v in self.artifacts.items()}
            self.sidecars = [new if p == old else p for p in self.sidecars]
        if step.artifact is not None:
            self.artifacts[name] = step.artifact
        if step.sidecar is not None and step.sidecar not in self.sidecars:
            self.sidecars.append(step.sidecar)
        if step.comparison is not None:
            if name == QuantizeStep.name:
                self.int8_parity = step.comparison
            elif self.parity is None:
                self.parity = step.comparison
        self.notes += step.notes


@dataclass
class _Plan:
    """The checked chain: formats in build order, the INT8 step (if any) and the float graph's precision."""

    formats: list[ExportFormat]
    quant: QuantizeStep | None
    graph_precision: str


def export_artifacts(req: ExportRequest) -> ExportResult:
    """Export per ``req``; see the module docstring. Raises ``ParityError`` when parity fails."""
    plan = _plan(req)
    ctx = _context(req, plan)
    result = ExportResult()
    try:
        for fmt in plan.formats:
            step = fmt.build(ctx)
            result.add(fmt.name, step)
            if step.artifact is not None:
                ctx.produced[fmt.name] = step.artifact
            if plan.quant is not None and fmt.name == plan.quant.source:
                q = plan.quant.run(ctx, ctx.produced[fmt.name])
                result.add(plan.quant.name, q)
                ctx.produced[fmt.name] = q.artifact  # the INT8 graph is the call's ONNX product from here on
    except BaseException:
        for p in ctx.written:
            p.unlink(missing_ok=True)
        raise
    result.primary = ctx.produced.get(req.format) or next(reversed(result.artifacts.values()), None)
    return result


def _plan(req: ExportRequest) -> _Plan:
    """The format chain, with every cheap check done before the slow steps: the format exists, supports the
    precision, its options are valid and its library is here; a calibration folder can calibrate."""
    chain = format_chain(req.format)  # an unknown format names the registered ones
    precision = get_precision(req.precision)
    requested = chain[-1]
    check_supported(f"--format {req.format}", requested.precisions, req.precision,
                    "INT8 is made from the ONNX graph: formats built on it support int8" if precision.quantized else "")
    for fmt in chain:
        check_supported(f"--format {req.format} (which builds {fmt.name})", fmt.precisions, req.precision)
    known = set(registered_formats()) | {QuantizeStep.name}
    unknown = sorted(set(req.format_options) - known)
    if unknown:
        raise InvalidRequest(f"format_options for {', '.join(map(repr, unknown))}: not a registered format or step "
                             f"({', '.join(sorted(known))})")
    req.batch = parse_batch(req.batch)
    if req.out_file is None:
        req.out_dir, _, req.out_file = resolve_output(req.out_dir, req.format)
    for fmt in chain:
        fmt.check(req)
    quant = None
    if precision.quantized:
        if not any(f.name == QuantizeStep.source for f in chain):
            raise InvalidRequest(f"--format {req.format} declares {req.precision} but builds no {QuantizeStep.source} graph "
                                 "for the INT8 step to quantise")
        quant = QuantizeStep(req, chain)
        quant.check()
        graph = precision.source
    else:
        graph = next((p for p in (f.source_precision(req) for f in chain) if p is not None), req.precision)
    return _Plan(chain, quant, graph)


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
        sfx = FORMATS.get(fmt).suffixes
        want = f"a file ending in {'/'.join(sfx)}, or a folder" if sfx else "a folder (it writes a directory)"
        raise InvalidRequest(f"-o {out} is a file name for the {owner} format, but the format is {fmt}: give {want}")
    return out.parent, owner, out


def _context(req: ExportRequest, plan: _Plan) -> ExportContext:
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
    wrap, head = _wrapper(req, model)
    reference = wrap(copy.deepcopy(model), REFERENCE_PRECISION)
    grid = (size[0] // p[0], size[1] // p[1])
    sidecar = _shared_sidecar(reference, info, req, preprocess, plan.graph_precision, int(model.embed_dim), grid, head)
    stem = head.task if head else "model"
    return ExportContext(req, out_dir, stem, model, info, wrap, reference, preprocess, req.batch, sidecar, head,
                         quant_source=plan.quant.source if plan.quant else None)


def _known_preprocess(record: dict) -> dict:
    """A checkpoint's preprocessing record, minus training-only notes older checkpoints carry."""
    return {k: v for k, v in record.items() if k in ("size", "mean", "std", "resize", "interpolation", "color_order", "layout")}


def _wrapper(req: ExportRequest, model: nn.Module):
    """(backbone, precision) -> the graph to export: features, or backbone + a trained head."""
    if not req.head:
        return (lambda bb, prec: FeatureModel(bb, prec, req.pooled).eval()), None
    from wherevit.export.head_models import HeadModel, load_head

    head, record = load_head(req.head)
    if record.embed_dim != int(model.embed_dim):
        raise CheckpointError(f"{req.head} is a head for width {record.embed_dim}, the backbone is {model.embed_dim} wide")
    record = dataclasses.replace(record, file=str(req.head))
    return (lambda bb, prec: HeadModel(bb, copy.deepcopy(head), record, prec).eval()), record


def _shared_sidecar(model, info: dict, req: ExportRequest, pre: Preprocess, precision: str, dim: int, grid,
                    head: HeadSection | None) -> Sidecar:
    h, w = pre.size
    hw = [-1, -1] if req.dynamic_hw else [h, w]
    inputs = [TensorSpec(n, "float32", [-1, 3, *hw], "RGB images, preprocessed as `preprocess` says", layout="NCHW")
              for n in model.input_names]
    outputs = [TensorSpec(**o) for o in model.output_meta(dim, None if req.dynamic_hw else grid)]
    return Sidecar(
        kind="", inputs=inputs, outputs=outputs, preprocess=pre.to_dict(), batch=BatchRange(*req.batch), precision=precision,
        task=head.task if head else "features",
        model=ModelSection(model=info.get("model"), timm_kwargs=info.get("timm_kwargs") or {}, arch=info.get("arch") or {},
                           source=info.get("source"), step=info.get("step"), checkpoint=str(req.checkpoint),
                           # how positions were made when training replaced timm's embedding (the posfield, baked into pos_embed)
                           positional=info.get("positional"),
                           # where the weights came from (file, SHA-256, layout) and, for a run, what it started from
                           weights=info.get("weights"), initialised_from=info.get("initialised_from")),
        dynamic_hw=req.dynamic_hw, head=head,
    )

