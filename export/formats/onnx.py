"""``onnx``: the wrapped model -> a checked, simplified ONNX graph (dynamic batch) + parity + sidecar."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from wherevit.base.sidecar import artifact_record, sidecar_path, write_sidecar
from wherevit.export.formats.base import ExportContext, ExportFormat, register_format
from wherevit.export.onnx_export import OnnxExportOptions, export_onnx
from wherevit.export.parity import ParityError, check_parity
from wherevit.runtime.backends.onnxruntime import OrtCpu
from wherevit.runtime.compare import DEFAULT_RTOL

__all__ = ["OnnxFormat", "onnx_precision"]


def onnx_precision(ctx: ExportContext) -> str:
    """The graph's own precision: what the request asks, or what a dependent format needs (engines)."""
    return ctx.sidecar.precision


@register_format
class OnnxFormat(ExportFormat):
    name = "onnx"
    suffixes = (".onnx",)

    def build(self, ctx: ExportContext) -> Path:
        req, precision = ctx.req, onnx_precision(ctx)
        out = ctx.track(ctx.artifact_path(self, precision))
        graph = ctx.wrap(ctx.backbone, precision)
        opts = OnnxExportOptions(precision, ctx.batch, ctx.preprocess.size, req.dynamic_hw, req.pooled, req.opset)
        facts = export_onnx(graph, out, opts)
        record = artifact_record(out)
        facts["sha256"] = record.sha256
        meta = dataclasses.replace(ctx.sidecar, kind="onnx", precision=precision, onnx=facts)
        meta.parity = self._parity(ctx, out, meta)
        ctx.track(sidecar_path(out))
        write_sidecar(out, meta, record=record)
        ctx.produced[self.name] = out
        return out

    @staticmethod
    def _parity(ctx: ExportContext, out: Path, meta) -> dict:
        """ONNX Runtime (CPU, the runtime's own backend) against PyTorch fp32; raises below tolerance."""
        rtol = ctx.req.rtol or DEFAULT_RTOL[meta.precision]
        reason = OrtCpu.unavailable_reason(meta)  # the CPU backend knows what it can run (no fp16/bf16 kernels)
        if reason is not None:
            skipped = f"{reason}; parity of this graph is checked on a GPU (wherevit bench)"
            if ctx.result is not None:
                ctx.result.notes.append(skipped)
            return {"passed": None, "skipped": skipped}
        with OrtCpu(out, meta) as backend:
            batch = min(3, meta.batch.max)
            cmp, report = check_parity(ctx.reference, backend.infer, ctx.preprocess, rtol, batch=max(batch, meta.batch.min))
        if ctx.result is not None:
            ctx.result.parity = cmp
        if not cmp:
            raise ParityError(f"ONNX parity failed for {out.name} (tolerance rel_l2 <= {rtol:g}):\n{cmp.summary()}")
        return {"backend": "onnxruntime CPUExecutionProvider", "reference": "PyTorch fp32", "rtol": rtol, "passed": True, **report}
