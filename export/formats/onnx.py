"""``onnx``: the wrapped model -> a checked, simplified ONNX graph (dynamic batch) + parity + sidecar.

``--precision int8``: this format writes the float graph, and the INT8 step (``export/quant_step.py``)
quantises it into the call's ONNX product.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from wherevit.base.errors import InvalidRequest
from wherevit.base.options import option
from wherevit.base.precision import get_precision, precision_names
from wherevit.base.sidecar import OnnxSection, artifact_record, sidecar_path, write_sidecar
from wherevit.export.formats.base import ExportContext, ExportFormat, register_format
from wherevit.export.onnx_export import OnnxExportOptions, export_onnx
from wherevit.export.parity import ParityError, check_parity
from wherevit.export.request import StepResult
from wherevit.runtime.backends.onnxruntime import OrtCpu

__all__ = ["OnnxFormat", "OnnxOptions"]


@dataclass(frozen=True)
class OnnxOptions:
    opset: int = option(18, cli="--opset", help="ONNX opset (>= 17 keeps LayerNorm one op).")


@register_format
class OnnxFormat(ExportFormat):
    name = "onnx"
    suffixes = (".onnx",)
    precisions = precision_names()  # int8 through the INT8 step
    Options = OnnxOptions
    help = "ONNX + sidecar, parity-checked in ONNX Runtime"

    def check(self, req) -> None:
        if req.options(self.name, OnnxOptions).opset < 17:
            raise InvalidRequest(f"--opset {req.options(self.name, OnnxOptions).opset} < 17 would split LayerNorm into "
                                 "primitive ops; use >= 17")

    def build(self, ctx: ExportContext) -> StepResult:
        req, precision = ctx.req, ctx.sidecar.precision  # the float graph's precision (what an engine or the INT8 step needs)
        out = ctx.track(ctx.artifact_path(self.name, precision, self.suffixes[0]))
        graph = ctx.wrap(ctx.backbone, precision)
        opts = OnnxExportOptions(precision, ctx.batch, ctx.preprocess.size, req.dynamic_hw, req.pooled, ctx.options(self).opset)
        facts = export_onnx(graph, out, opts)
        record = artifact_record(out)
        meta = dataclasses.replace(ctx.sidecar, kind="onnx", precision=precision, onnx=OnnxSection(**facts, sha256=record.sha256))
        meta.parity, cmp, notes = self._parity(ctx, out, meta)
        ctx.track(sidecar_path(out))
        return StepResult(out, write_sidecar(out, meta, record=record), cmp, notes)

    @staticmethod
    def _parity(ctx: ExportContext, out: Path, meta):
        """ONNX Runtime (CPU, the runtime's own backend) against PyTorch fp32; raises below tolerance."""
        rtol = ctx.req.rtol or get_precision(meta.precision).rtol
        reason = OrtCpu.unavailable_reason(meta)  # the CPU backend knows what it can run (no fp16/bf16 kernels)
        if reason is not None:
            skipped = f"{reason}; parity of this graph is checked on a GPU (wherevit bench)"
            return {"passed": None, "skipped": skipped}, None, [skipped]
        with OrtCpu(out, meta) as backend:
            batch = min(3, meta.batch.max)
            cmp, report = check_parity(ctx.reference, backend.infer, ctx.preprocess, rtol, batch=max(batch, meta.batch.min))
        if not cmp:
            raise ParityError(f"ONNX parity failed for {out.name} (tolerance rel_l2 <= {rtol:g}):\n{cmp.summary()}")
        report = {"backend": "onnxruntime CPUExecutionProvider", "reference": "PyTorch fp32", "rtol": rtol, "passed": True, **report}
        return report, cmp, []
