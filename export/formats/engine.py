"""``engine``: the ONNX graph this call wrote -> a TensorRT or TensorRT-RTX engine + sidecar."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from wherevit.base.sidecar import read_sidecar, sidecar_path, write_sidecar
from wherevit.export.formats.base import ExportContext, ExportFormat, register_format
from wherevit.export.trt_builder import BuildPlan, build_engine, detect_flavour, plan_build

__all__ = ["EngineFormat"]


@register_format
class EngineFormat(ExportFormat):
    name = "engine"
    suffixes = (".engine", ".plan")
    needs = ("onnx",)

    def __init__(self) -> None:
        self.plan: BuildPlan | None = None

    def check(self, req) -> None:
        # a missing library or an impossible target fails before the slow steps
        self.plan = plan_build(detect_flavour(req.trt_lib), req.precision, tuple(req.compute_capabilities), req.strongly_typed)

    def graph_precision(self, req) -> str:
        """The ONNX graph's precision for this plan (weakly typed TensorRT 10 builds from an fp32 graph)."""
        assert self.plan is not None, "check() runs first"
        return self.plan.onnx_precision

    def build(self, ctx: ExportContext) -> Path:
        assert self.plan is not None, "check() runs first"
        req, onnx_path = ctx.req, ctx.produced["onnx"]
        out = ctx.track(ctx.artifact_path(self, req.precision))
        facts = build_engine(onnx_path, out, self.plan, ctx.input_names, (3, *ctx.preprocess.size), ctx.batch,
                             req.workspace_mb, timing_cache=ctx.out_dir / f".timing_cache.{self.plan.flavour.module}.bin")
        onnx_meta = read_sidecar(onnx_path, verify_hash=False)
        meta = dataclasses.replace(
            onnx_meta, kind="engine", precision=req.precision, engine=facts,
            parity={"onnx": onnx_meta.parity,
                    "engine": {"passed": None, "skipped": "engine parity runs where the engine runs (wherevit bench on its GPU)"}},
            artifact=None)
        ctx.track(sidecar_path(out))
        write_sidecar(out, meta)
        ctx.produced[self.name] = out
        return out
