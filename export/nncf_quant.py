"""``--quant nncf``: INT8 quantised the way OpenVINO expects it, with NNCF's post-training quantisation.

Same calibration sources as ``--quant static`` (generated scenes, or ``--calib`` images, preprocessed
as the runtime does), NNCF's transformer preset (``ModelType.TRANSFORMER``: SmoothQuant on the
MatMul inputs, attention's Q.K^T quantised, softmax and A.V, LayerNorm and GELU kept float,
per-channel symmetric weights), on NNCF's ONNX backend: the artifact stays an ONNX Q/DQ graph, so it keeps the
sidecar, hash and parity machinery of every ONNX artifact, and ONNX Runtime runs it too. The parity
gate is the same per-sample cosine as ``--quant static`` (the INT8 step, ``export/quant_step.py``), and the
sidecar's ``quantization`` section the same record, NNCF's own settings under ``quantization.nncf``.

Why it exists (measured, benchmarks/cpu_backends.py): on OpenVINO this graph is faster than our
ONNX Runtime Q/DQ graph at equal cosine; on ONNX Runtime it is slightly slower.

``reduce_range`` maps onto NNCF's ``overflow_fix``: on a CPU without VNNI, 7-bit weights everywhere
(``ENABLE``) so u8s8 pair sums cannot saturate; with VNNI, full 8-bit weights (``DISABLE``). A
head's layers (no LayerNormalization downstream) are left float, as with ``--quant static``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path

import onnx

from wherevit.base.cpu import CpuIsa, cpu_isa
from wherevit.base.errors import InvalidRequest
from wherevit.base.io import atomic_path
from wherevit.export.quantize import (
    STATIC_OPS,
    CalibrationError,
    CalibrationSet,
    QuantOptions,
    float_head_nodes,
    reduce_range_decision,
)

__all__ = ["quantize_nncf", "nncf_unavailable_reason", "check_nncf"]


def nncf_unavailable_reason() -> str | None:
    """None when NNCF can quantise here, else why not."""
    try:
        import nncf  # noqa: F401
    except ImportError as e:
        return f"--quant nncf needs NNCF ({e.name} is not installed): pip install 'wherevit[nncf]'"
    return None


def check_nncf(consumers: list[str]) -> None:
    """Fail before the slow steps: NNCF missing, or a consumer it does not target (``consumers``: format names)."""
    engines = [c for c in consumers if c in ("engine", "triton-engine")]
    if engines:
        raise InvalidRequest(f"--quant nncf quantises for OpenVINO and ONNX Runtime on the CPU; TensorRT engines ({', '.join(engines)}) "
                             "take the static Q/DQ graph (--quant static)")
    reason = nncf_unavailable_reason()
    if reason:
        raise InvalidRequest(reason)


def quantize_nncf(fp32_onnx: Path, out: Path, opts: QuantOptions, calib: CalibrationSet | None,
                  isa: CpuIsa | None = None) -> dict:
    """Write NNCF's INT8 Q/DQ graph of ``fp32_onnx`` to ``out`` (atomically); returns the facts for the sidecar."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    if calib is None:
        raise CalibrationError("NNCF quantisation needs calibration images")
    t0 = time.perf_counter()
    isa = isa or cpu_isa()
    reduce_range, why = reduce_range_decision(opts, isa)
    proto = onnx.load(str(fp32_onnx))
    exclude = float_head_nodes(proto, STATIC_OPS)
    total = len(next(iter(calib.feeds.values())))
    # one image per item: NNCF collects statistics per sample
    items = [{k: v[i:i + 1] for k, v in calib.feeds.items()} for i in range(total)]
    preset = nncf.QuantizationPreset.PERFORMANCE if opts.symmetric_activations else nncf.QuantizationPreset.MIXED
    overflow = OverflowFix.ENABLE if reduce_range else OverflowFix.DISABLE
    previous = nncf.get_log_level() if hasattr(nncf, "get_log_level") else None
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # progress bars
            quantized = nncf.quantize(
                proto, nncf.Dataset(items), preset=preset, target_device=nncf.TargetDevice.CPU, subset_size=total,
                model_type=nncf.ModelType.TRANSFORMER,
                ignored_scope=nncf.IgnoredScope(names=exclude, validate=False) if exclude else None,
                advanced_parameters=AdvancedQuantizationParameters(overflow_fix=overflow))
    finally:
        if previous is not None:
            nncf.set_log_level(previous)
    del proto
    with atomic_path(out) as dst:
        onnx.save(quantized, str(dst))
    counts: dict[str, int] = {}
    for node in quantized.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    quantized_inputs = sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear")
    return {
        "mode": "nncf",
        "batch_dependent": False,
        "tool": f"nncf {nncf.__version__} (quantize, ONNX backend, ModelType.TRANSFORMER, preset {preset.value}, target CPU)",
        "op_types_quantized": ["MatMul (attention's Q.K^T too; A.V reads the float softmax)", "Gemm", "Conv"],
        "kept_float": ["LayerNormalization", "Softmax", "GELU", "graph outputs"] + (["head layers"] if exclude else []),
        "nodes_excluded": exclude,
        "per_channel": True,
        "weights": "int8, symmetric, per output channel" + (" (7-bit range)" if reduce_range else ""),
        "activations": "int8, symmetric" if opts.symmetric_activations else
                       "int8, symmetric or asymmetric per tensor (NNCF's mixed preset)",
        "biases": "float",
        "reduce_range": reduce_range,
        "reduce_range_reason": why,
        "cpu": isa.to_dict(),
        "op_counts": {k: counts[k] for k in sorted(counts) if k in ("QuantizeLinear", "DequantizeLinear", "MatMul", "Conv", "Gemm")},
        "quantize_seconds": round(time.perf_counter() - t0, 2),
        "calibration": {**calib.source, "method": "minmax (NNCF's statistics)", "batch": 1, "subset_size": total},
        "nncf": {"version": nncf.__version__, "model_type": "TRANSFORMER", "preset": preset.value, "target_device": "CPU",
                 "smooth_quant": "NNCF's transformer default", "overflow_fix": overflow.value,
                 "activation_quantizers": quantized_inputs, "intended_backend": "openvino (ONNX Runtime runs it too)"},
    }
