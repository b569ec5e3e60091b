"""``export_artifacts``: checkpoint (or timm name) -> ONNX (+ engine), each with its sidecar.

Reads as a chain of small steps: BackboneFromCheckpoint -> FeatureModel -> OnnxFromModel ->
parity (ONNX Runtime vs PyTorch) -> EngineFromOnnx. A step that fails removes what this call
wrote, so no half-made artifact is left behind.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wherevit.base.errors import WherevitError
from wherevit.export.onnx_export import (
    FeatureModel,
    OnnxExportOptions,
    export_onnx,
    torch_reference,
)
from wherevit.export.trt_builder import build_engine, detect_flavour, plan_build
from wherevit.base.io import check_writable_dir
from wherevit.runtime.backends.onnxruntime import OrtCpu
from wherevit.runtime.compare import DEFAULT_RTOL, Comparison, compare
from wherevit.base.image import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from wherevit.base.sidecar import artifact_record, sidecar_path, write_sidecar
from wherevit.train.checkpoint import CheckpointError, load_backbone

__all__ = ["ExportRequest", "ExportResult", "ParityError", "parse_batch", "export_artifacts", "parity_inputs"]

log = logging.getLogger("wherevit.export")


class ParityError(WherevitError, RuntimeError):
    """The exported graph's outputs differ from PyTorch's beyond the tolerance."""


def parse_batch(spec: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """"1:8:64" -> (1, 8, 64); a single number N means N:N:N. Requires 1 <= min <= opt <= max."""
    if isinstance(spec, tuple):
        vals = spec
    else:
        try:
            vals = tuple(int(v) for v in str(spec).split(":"))
        except ValueError:
            raise ValueError(f"batch range {spec!r} must be integers like 1:8:64") from None
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise ValueError(f"batch range {spec!r} must be min:opt:max, e.g. 1:8:64")
    lo, opt, hi = vals
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"batch range {spec!r} must satisfy 1 <= min <= opt <= max (opt is the typical batch, not the max)")
    return lo, opt, hi


@dataclass
class ExportRequest:
    checkpoint: str
    out_dir: Path
    format: str = "onnx"  # "onnx" or "engine" (an engine always comes with its ONNX)
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


@dataclass
class ExportResult:
    onnx: Path
    engine: Path | None = None
    parity: Comparison | None = None
    sidecars: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parity_inputs(preprocess: Preprocess, input_names: list[str], batch: int = 3, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Fresh random images and generated scenes per input, preprocessed exactly as the runtime does."""
    from wherevit.train.data.synthetic import render_scene

    rng = np.random.default_rng(seed)
    h, w = preprocess.size
    random = {n: rng.standard_normal((batch, 3, h, w)).astype(np.float32) for n in input_names}
    scenes = {n: preprocess([render_scene(10_000 + seed * 97 + 13 * k + i, (h, w)) for i in range(batch)])
              for k, n in enumerate(input_names)}
    return {"random": random, "scenes": scenes}


def _check_parity(ref_model, onnx_path: Path, preprocess: Preprocess, rtol: float) -> tuple[Comparison, dict]:
    """Float outputs are compared (integer outputs such as argmax labels derive from them)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])  # one session for every input set
    names = [o.name for o in sess.get_outputs()]
    report, merged = {}, Comparison()
    for kind, feeds in parity_inputs(preprocess, ref_model.input_names).items():
        ref = {k: v for k, v in torch_reference(ref_model, feeds).items() if np.issubdtype(v.dtype, np.floating)}
        got = dict(zip(names, sess.run(names, feeds)))
        cmp = compare(ref, got, rtol)
        report[kind] = cmp.to_dict()
        merged.outputs += [dataclasses.replace(o, name=f"{o.name}[{kind}]") for o in cmp.outputs]
        merged.missing += cmp.missing
    return merged, report


def export_artifacts(req: ExportRequest) -> ExportResult:
    """Export per ``req``; see the module docstring. Raises ``ParityError`` when parity fails."""
    if req.format not in ("onnx", "engine"):
        raise ValueError(f"--format must be onnx or engine, got {req.format!r}")
    if req.precision not in DEFAULT_RTOL:
        raise ValueError(f"--precision must be one of {', '.join(DEFAULT_RTOL)}, got {req.precision!r}")
    batch = parse_batch(req.batch)
    out_dir = check_writable_dir(req.out_dir)
    plan = None
    if req.format == "engine":  # fail on a missing library before the slow steps
        plan = plan_build(detect_flavour(req.trt_lib), req.precision, tuple(req.compute_capabilities), req.strongly_typed)

    # A fixed-size graph at the training size needs no position-embedding resampling ops.
    resample = req.dynamic_hw or req.imgsz is not None
    model, info = load_backbone(req.checkpoint, which=req.which, dynamic_img_size=resample, expect_model=req.expect_model)
    native = tuple(model.patch_embed.img_size)
    size = (req.imgsz, req.imgsz) if req.imgsz else native
    p = model.patch_embed.patch_size
    if size[0] % p[0] or size[1] % p[1]:
        raise ValueError(f"image size {size} is not a multiple of the patch size {tuple(p)}")
    pp_info = info.get("preprocess", {})
    preprocess = Preprocess(size=size, mean=tuple(pp_info.get("mean", IMAGENET_MEAN)), std=tuple(pp_info.get("std", IMAGENET_STD)),
                            resize=pp_info.get("resize", "stretch"))
    head = head_meta = None
    if req.head:
        from wherevit.export.head_models import HeadModel, load_head

        head, head_meta = load_head(req.head)
        if head_meta["embed_dim"] != int(model.embed_dim):
            raise CheckpointError(f"{req.head} is a head for width {head_meta['embed_dim']}, the backbone is {model.embed_dim} wide")
        make = lambda bb, prec: HeadModel(bb, copy.deepcopy(head), head_meta, prec).eval()
    else:
        make = lambda bb, prec: FeatureModel(bb, prec, req.pooled).eval()
    ref_model = make(copy.deepcopy(model), "fp32")
    onnx_precision = plan.onnx_precision if plan else req.precision
    rtol = req.rtol or DEFAULT_RTOL[onnx_precision]
    stem = head_meta["task"] if head_meta else "model"
    result = ExportResult(onnx=out_dir / f"{stem}_{onnx_precision}.onnx")
    written: list[Path] = []
    try:
        fm = make(model, onnx_precision)
        opts = OnnxExportOptions(onnx_precision, batch, size, req.dynamic_hw, req.pooled, req.opset)
        written.append(result.onnx)
        facts = export_onnx(fm, result.onnx, opts)
        onnx_record = artifact_record(result.onnx)
        facts["sha256"] = onnx_record["sha256"]
        # The runtime's CPU backend knows what it can run (no fp16/bf16 MatMul kernels in ONNX Runtime's CPU provider).
        cpu_reason = OrtCpu.unavailable_reason({"kind": "onnx", "precision": onnx_precision})
        if cpu_reason is None:
            cmp, report = _check_parity(ref_model, result.onnx, preprocess, rtol)
            result.parity = cmp
            parity = {"backend": "onnxruntime CPUExecutionProvider", "reference": "PyTorch fp32", "rtol": rtol, "passed": bool(cmp), **report}
            if not cmp:
                raise ParityError(f"ONNX parity failed for {result.onnx.name} (tolerance rel_l2 <= {rtol:g}):\n{cmp.summary()}")
        else:
            parity = {"passed": None, "skipped": f"{cpu_reason}; parity of this graph is checked on a GPU (wherevit bench)"}
            result.notes.append(parity["skipped"])
        d = int(model.embed_dim)
        gh, gw = size[0] // p[0], size[1] // p[1]
        meta = _artifact_meta(fm, info, req, preprocess, batch, onnx_precision, d, (gh, gw), parity, head_meta)
        meta["onnx"] = facts
        written.append(sidecar_path(result.onnx))
        result.sidecars.append(write_sidecar(result.onnx, {"kind": "onnx", **meta}, record=onnx_record))

        if plan is not None:
            result.engine = out_dir / f"{stem}_{req.precision}.engine"
            written.append(result.engine)
            eng = build_engine(result.onnx, result.engine, plan, fm.input_names, (3, *size), batch, req.workspace_mb,
                               timing_cache=out_dir / f".timing_cache.{plan.flavour.module}.bin")
            emeta = {**meta, "precision": req.precision, "engine": eng, "onnx": facts}
            emeta["parity"] = {"onnx": parity, "engine": {"passed": None, "skipped": "engine parity runs where the engine runs (wherevit bench on its GPU)"}}
            written.append(sidecar_path(result.engine))
            result.sidecars.append(write_sidecar(result.engine, {"kind": "engine", **emeta}))
    except BaseException:
        for pth in written:
            pth.unlink(missing_ok=True)
        raise
    return result


def _artifact_meta(model, info: dict, req: ExportRequest, pre: Preprocess, batch, precision: str, dim: int, grid, parity,
                   head_meta: dict | None) -> dict:
    h, w = pre.size
    hw = [-1, -1] if req.dynamic_hw else [h, w]
    meta = {
        "task": head_meta["task"] if head_meta else "features",
        "model": {k: info.get(k) for k in ("model", "timm_kwargs", "arch", "source", "step")} | {"checkpoint": str(req.checkpoint)}
        # how positions were made when training replaced timm's embedding (e.g. the posfield, baked)
        | ({"positional": info["positional"]} if "positional" in info else {}),
        "inputs": [{"name": n, "dtype": "float32", "shape": [-1, 3, *hw], "layout": "NCHW",
                    "meaning": "RGB images, preprocessed as `preprocess` says"} for n in model.input_names],
        "outputs": model.output_meta(dim, None if req.dynamic_hw else grid),
        "preprocess": pre.to_dict(),
        "batch": {"min": batch[0], "opt": batch[1], "max": batch[2]},
        "dynamic_hw": req.dynamic_hw,
        "precision": precision,
        "parity": parity,
    }
    if head_meta:
        meta["head"] = {**head_meta, "file": str(req.head)}
    return meta
