"""``engine``: the ONNX graph this call wrote -> a TensorRT or TensorRT-RTX engine + sidecar.

``--precision int8``: the ONNX product is the INT8 step's Q/DQ graph (quantised with int8 symmetric
activations and float biases, which TensorRT's parser requires: ``quant_requirements``), handed to
TensorRT -- explicit quantisation. What the builder did, or its refusal verbatim, is recorded in the
INT8 ONNX's sidecar (``quantization.tensorrt_build``); a refusal is a result, not a failed export.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wherevit.base.errors import InvalidRequest
from wherevit.base.options import option
from wherevit.base.precision import get_precision, precision_names
from wherevit.base.sidecar import EngineSection, Sidecar, read_sidecar, sidecar_path, write_sidecar
from wherevit.export.formats.base import ExportContext, ExportFormat, file_label, register_format
from wherevit.export.request import StepResult
from wherevit.export.trt_builder import (
    BuildPlan,
    EngineBuildError,
    build_engine,
    detect_flavour,
    parse_compute_capabilities,
    plan_build,
)

__all__ = ["EngineFormat", "EngineOptions"]

_SKIPPED = {"passed": None, "skipped": "engine parity runs where the engine runs (wherevit bench on its GPU)"}


@dataclass(frozen=True)
class EngineOptions:
    trt_lib: str = option("auto", cli="--trt-lib", choices=("auto", "tensorrt", "tensorrt_rtx"),
                          help="TensorRT library: the full builder, TensorRT-RTX, or whichever is installed (tensorrt first).")
    compute_capabilities: tuple[str, ...] = option((), cli="--cc", parse=parse_compute_capabilities, metavar="LIST",
                                                   help="TensorRT-RTX target compute capabilities, e.g. 8.6,8.9,12.0 "
                                                        "(default 8.0,8.6,8.9,12.0).")
    strongly_typed: bool | None = option(None, cli="--strongly-typed/--weakly-typed",
                                         help="TensorRT 10.x only: build from a typed ONNX instead of precision flags.")
    workspace_mb: int = option(4096, cli="--workspace-mb", help="Builder workspace limit (MiB).")


@register_format
class EngineFormat(ExportFormat):
    name = "engine"
    suffixes = (".engine", ".plan")
    needs = ("onnx",)
    precisions = precision_names()  # int8: explicit quantisation of the INT8 step's Q/DQ graph
    Options = EngineOptions
    help = "a TensorRT(-RTX) plan, with the ONNX it is built from"

    def __init__(self) -> None:
        self.plan: BuildPlan | None = None

    def check(self, req) -> None:
        if req.dynamic_hw:
            raise InvalidRequest("--dynamic-hw is for ONNX only; engines are built for one input size (use --imgsz)")
        opts = req.options(self.name, EngineOptions)
        # a missing library or an impossible target fails before the slow steps
        self.plan = plan_build(detect_flavour(opts.trt_lib), req.precision, tuple(opts.compute_capabilities), opts.strongly_typed)

    def source_precision(self, req) -> str | None:
        """The float ONNX graph's precision for this plan (weakly typed TensorRT 10 builds from an fp32 graph)."""
        assert self.plan is not None, "check() runs first"
        return None if get_precision(req.precision).quantized else self.plan.onnx_precision

    def quant_requirements(self, req) -> dict[str, Any]:
        # TensorRT's explicit quantisation takes int8 activations with zero point 0 and 8-bit DQ inputs only.
        return {"symmetric_activations": True, "quantize_bias": False}

    def build(self, ctx: ExportContext) -> StepResult:
        assert self.plan is not None, "check() runs first"
        req, onnx_path, opts = ctx.req, ctx.produced["onnx"], ctx.options(self)
        onnx_meta = read_sidecar(onnx_path, verify_hash=False)
        out = ctx.track(ctx.artifact_path(self.name, file_label(req.precision, onnx_meta.quantization.mode if onnx_meta.quantization else None), self.suffixes[0]))
        try:
            facts = build_engine(onnx_path, out, self.plan, ctx.input_names, (3, *ctx.preprocess.size), ctx.batch,
                                 opts.workspace_mb, timing_cache=ctx.out_dir / f".timing_cache.{self.plan.flavour.module}.bin")
        except EngineBuildError as e:
            if onnx_meta.quantization is None:
                raise
            return self._refused(ctx, onnx_path, onnx_meta, e)
        meta = dataclasses.replace(onnx_meta, kind="engine", precision=req.precision, engine=EngineSection(**facts),
                                   parity={"onnx": onnx_meta.parity, "engine": dict(_SKIPPED)}, artifact=None)
        ctx.track(sidecar_path(out))
        sidecar = write_sidecar(out, meta)
        if onnx_meta.quantization is not None:
            self._record(onnx_path, onnx_meta, {"built": True, "engine": out.name, **facts})
        return StepResult(out, sidecar)

    def _refused(self, ctx: ExportContext, onnx_path: Path, onnx_meta: Sidecar, e: EngineBuildError) -> StepResult:
        """TensorRT refused the INT8 graph: its words, verbatim, go into the INT8 ONNX's sidecar; the export stands."""
        plan = self.plan
        self._record(onnx_path, onnx_meta, {"built": False, "plan": plan.to_dict(), "refusal": str(e)})
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return StepResult(None, notes=[f"{plan.flavour.module} {plan.flavour.version} did not build the INT8 engine "
                                       f"(recorded verbatim in the sidecar): {' | '.join(lines[:2])[:400]}"])

    @staticmethod
    def _record(onnx_path: Path, onnx_meta: Sidecar, build: dict) -> None:
        """``quantization.tensorrt_build`` of the INT8 ONNX: what TensorRT did with this graph."""
        q = dataclasses.replace(onnx_meta.quantization, tensorrt_build=build)
        write_sidecar(onnx_path, dataclasses.replace(onnx_meta, quantization=q), record=onnx_meta.artifact)
