"""The INT8 step: the call's float ONNX -> an INT8 ONNX (ONNX Runtime static Q/DQ or dynamic) + cosine parity + sidecar.

INT8 is not a format: it is a step between the ``onnx`` format and whatever consumes the ONNX
product. With ``--precision int8`` the API runs it right after the ``onnx`` format, and the INT8
graph becomes the call's ONNX product: ``--format onnx`` returns it, ``engine`` builds from it
(explicit quantisation), ``triton`` packages it. Formats that declare ``int8`` in their
``precisions`` are exactly those built on the ONNX product; others (``pt2``) are refused up front.

Options: ``ExportRequest.format_options["int8"]``, a ``QuantOptions`` (``wherevit export --quant
--calib ...``); a consuming format may require fields (``ExportFormat.quant_requirements``:
TensorRT needs symmetric activations and float biases). Quantisation itself is
``export/quantize.py``; parity (per-sample cosine against PyTorch fp32 on calibration-disjoint
images, and a head's own metric) is ``export/quant_parity.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

from wherevit.base.sidecar import QuantizationSection, SourceRecord, artifact_record, read_sidecar, sidecar_path, write_sidecar
from wherevit.export.formats.base import ExportContext, file_label
from wherevit.export.parity import ParityError
from wherevit.export.quant_parity import comparison_report, cosine_parity, head_metric_change, quant_parity_inputs
from wherevit.export.quantize import QuantOptions, calibration_set, check_calibration_folder, quantize_onnx
from wherevit.export.request import ExportRequest, StepResult

__all__ = ["QuantizeStep"]


class QuantizeStep:
    """Quantise the float ONNX product of ``source`` into the call's INT8 ONNX."""

    name = "int8"  # its key in format_options and in ExportResult.artifacts
    source = "onnx"  # the format whose product it quantises (and then stands in for)

    def __init__(self, req: ExportRequest, consumers: Iterable[Any]) -> None:
        quant = req.options(self.name, QuantOptions)
        required: dict[str, Any] = {}
        for fmt in consumers:
            required |= fmt.quant_requirements(req)
        self.quant = dataclasses.replace(quant, **required) if required else quant

    def check(self) -> None:
        """Fail fast (before any export step) on calibration input that cannot calibrate."""
        check_calibration_folder(self.quant)

    def run(self, ctx: ExportContext, src: Path) -> StepResult:
        quant = self.quant
        src_meta = read_sidecar(src, verify_hash=False)
        calib = calibration_set(ctx.preprocess, ctx.input_names, quant) if quant.mode == "static" else None
        # static and dynamic artifacts can sit side by side: model_int8.onnx, model_int8_dynamic.onnx
        label = file_label(ctx.req.precision, quant.mode)
        out = ctx.track(ctx.artifact_path(self.source, label, ".onnx", final=True))
        facts = quantize_onnx(src, out, quant, calib)
        feeds, described = quant_parity_inputs(ctx.preprocess, ctx.input_names, quant, calib.held_out if calib else [])
        cmp = cosine_parity(ctx.reference, out, feeds, quant.min_cosine)
        parity = {"backend": "onnxruntime CPUExecutionProvider", "reference": "PyTorch fp32",
                  "criterion": f"per-sample cosine similarity >= {quant.min_cosine:g} for every float output "
                               "(mean and minimum over samples)", "images": described, **comparison_report(cmp)}
        if ctx.head is not None:
            parity["head_metric"] = head_metric_change(ctx.reference, out, ctx.preprocess, ctx.head.task)
        if not cmp:
            raise ParityError(f"INT8 parity failed for {out.name} (minimum per-sample cosine >= {quant.min_cosine:g} required; "
                              f"calibration: {facts.get('calibration', 'none (dynamic)')}):\n{cmp.summary()}")
        record = artifact_record(out)
        facts["source_onnx"] = SourceRecord(src.name, src_meta.artifact.sha256 if src_meta.artifact else None)
        section = QuantizationSection(**facts)
        meta = dataclasses.replace(src_meta, kind="onnx", precision=ctx.req.precision, parity=parity, quantization=section,
                                   onnx=dataclasses.replace(src_meta.onnx, sha256=record.sha256) if src_meta.onnx else None,
                                   artifact=None)
        ctx.track(sidecar_path(out))
        return StepResult(out, write_sidecar(out, meta, record=record), cmp)

