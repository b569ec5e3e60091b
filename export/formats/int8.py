"""``int8``: the fp32 ONNX this call wrote -> an INT8 ONNX (ONNX Runtime static Q/DQ or dynamic, or NNCF) + cosine parity + sidecar.

Options: ``ExportRequest.format_options["int8"]``, a ``QuantOptions``. Quantisation itself is ``export/quantize.py``; parity (per-sample cosine against PyTorch fp32 on
calibration-disjoint images, and a head's own metric) is ``export/quant_parity.py``. With
``--format engine`` the Q/DQ graph also goes to TensorRT(-RTX) -- explicit quantisation -- and what
the builder did, or its refusal verbatim, is recorded in the INT8 sidecar's ``quantization``
section; a refusal is a result here, not a failed export.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from wherevit.base.errors import InvalidRequest
from wherevit.base.sidecar import artifact_record, read_sidecar, sidecar_path, write_sidecar
from wherevit.export.formats.base import ExportContext, ExportFormat, register_format
from wherevit.export.parity import ParityError
from wherevit.export.quant_parity import comparison_report, cosine_parity, head_metric_change, quant_parity_inputs
from wherevit.export.quantize import QuantOptions, calibration_set, check_calibration_folder, quantize_onnx
from wherevit.export.trt_builder import BuildPlan, EngineBuildError, build_engine, detect_flavour, plan_build

__all__ = ["Int8Format"]


@register_format
class Int8Format(ExportFormat):
    name = "int8"
    suffixes = (".int8.onnx",)
    needs = ("onnx",)

    def __init__(self) -> None:
        self.plan: BuildPlan | None = None
        self.quant: QuantOptions | None = None

    def check(self, req) -> None:
        quant = req.format_options.get(self.name) or QuantOptions()  # `wherevit export --quant/--calib...`
        if not isinstance(quant, QuantOptions):
            raise InvalidRequest(f"format_options['int8'] must be a QuantOptions, got {type(quant).__name__}")
        if quant.mode == "nncf":
            from wherevit.export.nncf_quant import check_nncf

            check_nncf(req.format)
        if req.format == "engine":  # a missing TensorRT library fails here, before the slow steps
            self.plan = plan_build(detect_flavour(req.trt_lib), "int8", tuple(req.compute_capabilities), req.strongly_typed)
            # TensorRT's explicit quantisation takes int8 activations with zero point 0 and 8-bit DQ inputs only.
            quant = dataclasses.replace(quant, symmetric_activations=True, quantize_bias=False)
        check_calibration_folder(quant)
        self.quant = quant

    def graph_precision(self, req) -> str:
        return "fp32"  # quantised from the fp32 graph

    def build(self, ctx: ExportContext) -> Path:
        assert self.quant is not None, "check() runs first"
        quant, src = self.quant, ctx.produced["onnx"]
        src_meta = read_sidecar(src, verify_hash=False)
        calib = calibration_set(ctx.preprocess, ctx.input_names, quant) if quant.calibrated else None
        suffix = "" if quant.mode == "static" else f"_{quant.mode}"  # static, dynamic and nncf artifacts can sit side by side
        stem = ctx.req.out_file.stem if ctx.req.out_file is not None else ctx.stem  # `-o art/qs.onnx` -> art/qs_int8.onnx
        out = ctx.track(ctx.out_dir / f"{stem}_int8{suffix}.onnx")
        facts = quantize_onnx(src, out, quant, calib)
        feeds, described = quant_parity_inputs(ctx.preprocess, ctx.input_names, quant, calib.held_out if calib else [])
        cmp = cosine_parity(ctx.reference, out, feeds, quant.min_cosine)
        if ctx.result is not None:
            ctx.result.int8_parity = cmp
        parity = {"backend": "onnxruntime CPUExecutionProvider", "reference": "PyTorch fp32",
                  "criterion": f"per-sample cosine similarity >= {quant.min_cosine:g} for every float output "
                               "(mean and minimum over samples)", "images": described, **comparison_report(cmp)}
        if ctx.head_meta:
            parity["head_metric"] = head_metric_change(ctx.reference, out, ctx.preprocess, ctx.head_meta["task"])
        if not cmp:
            raise ParityError(f"INT8 parity failed for {out.name} (minimum per-sample cosine >= {quant.min_cosine:g} required; "
                              f"calibration: {facts.get('calibration', 'none (dynamic)')}):\n{cmp.summary()}")
        record = artifact_record(out)
        facts["source_onnx"] = {"file": src.name, "sha256": src_meta.artifact.sha256 if src_meta.artifact else None}
        meta = dataclasses.replace(src_meta, kind="onnx", precision="int8", parity=parity, quantization=facts,
                                   onnx={**(src_meta.onnx or {}), "sha256": record.sha256}, artifact=None)
        if self.plan is not None:
            facts["tensorrt_build"] = self._engine(ctx, out, meta)
        ctx.track(sidecar_path(out))
        write_sidecar(out, meta, record=record)
        ctx.produced[self.name] = out
        return out

    def _engine(self, ctx: ExportContext, onnx_path: Path, meta) -> dict:
        """Build the engine from the Q/DQ graph; the facts, or the builder's refusal verbatim."""
        plan, req = self.plan, ctx.req
        engine = ctx.track(onnx_path.with_suffix(".engine"))
        try:
            facts = build_engine(onnx_path, engine, plan, ctx.input_names, (3, *ctx.preprocess.size), ctx.batch, req.workspace_mb,
                                 timing_cache=ctx.out_dir / f".timing_cache.{plan.flavour.module}.bin")
        except EngineBuildError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            if ctx.result is not None:
                ctx.result.notes.append(f"{plan.flavour.module} {plan.flavour.version} did not build the INT8 engine "
                                        f"(recorded verbatim in the sidecar): {' | '.join(lines[:2])[:400]}")
            return {"built": False, "plan": plan.to_dict(), "refusal": str(e)}
        emeta = dataclasses.replace(meta, kind="engine", engine=facts,
                                    parity={"onnx": meta.parity, "engine": {"passed": None, "skipped":
                                            "engine parity runs where the engine runs (wherevit bench on its GPU)"}})
        ctx.track(sidecar_path(engine))
        write_sidecar(engine, emeta)
        ctx.produced["engine"] = engine
        if ctx.result is not None:
            ctx.result.artifacts["engine"] = engine
            ctx.result.sidecars.append(sidecar_path(engine))
        return {"built": True, "engine": engine.name, **facts}
