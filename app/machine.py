"""What this machine can do, for the bench's machine section: the CPU's ISA and measured peaks per dtype.

Peaks are measured with the kernels the bench rows use: fp32 and int8 GEMMs through ONNX Runtime
(a one-node MatMul / MatMulInteger graph built with ``onnx.helper``, weights as initialisers like a
model's), bf16 through PyTorch (``torch.mm`` on bf16 tensors) where the CPU has BF16 instructions.
A row's fraction of peak is its model FLOPs per second over the peak of its dtype: how much of the
machine's best matrix throughput the whole network reaches.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from wherevit.base.cpu import CpuIsa, cpu_isa

__all__ = ["GemmPeak", "ort_gemm_peak", "torch_bf16_peak", "measure_peaks", "bf16_cpu_reason", "model_gflops",
           "peak_dtype", "fraction_of_peak", "annotate_fractions", "format_machine"]


@dataclass
class GemmPeak:
    """Best-of-``repeats`` GFLOP/s of an m x k x n GEMM (2mkn operations), or why it was not measured."""

    dtype: str
    kernel: str
    gflops: float | None = None
    shape: list[int] = field(default_factory=list)
    threads: int | None = None
    skipped: str | None = None


def _best_seconds(fn, repeats: int, clock=time.perf_counter) -> float:
    fn()  # warm-up: first-call packing and allocation
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def ort_gemm_peak(dtype: str = "fp32", n: int = 1024, repeats: int = 5, threads: int | None = None,
                  clock=time.perf_counter) -> GemmPeak:
    """ONNX Runtime CPU GEMM throughput: fp32 ``MatMul`` or int8 ``MatMulInteger`` (uint8 activations x int8 weights).

    ``clock``: ``time.thread_time`` with ``threads=1`` measures the CPU time of the calling thread
    (ONNX Runtime computes there), which other processes on a shared machine do not inflate."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if dtype == "fp32":
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        ins, out = [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])], TensorProto.FLOAT
    elif dtype == "int8":
        a = rng.integers(0, 256, (n, n), dtype=np.uint8)
        b = rng.integers(-127, 128, (n, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        ins, out = [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])], TensorProto.INT32
    else:
        raise ValueError(f"ONNX Runtime peak dtype must be fp32 or int8, got {dtype!r}")
    graph = helper.make_graph([node], f"gemm_{dtype}", ins, [helper.make_tensor_value_info("Y", out, [n, n])],
                              initializer=[numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = min(model.ir_version, 10)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(),
                                so, providers=["CPUExecutionProvider"])
    secs = _best_seconds(lambda: sess.run(None, {"A": a}), repeats, clock)
    return GemmPeak(dtype, f"onnxruntime {ort.__version__} {node.op_type}", 2 * n**3 / secs / 1e9, [n, n, n],
                    so.intra_op_num_threads)


def bf16_cpu_reason(isa: CpuIsa | None = None) -> str | None:
    """None when this CPU computes bf16 natively (AVX-512 BF16 or AMX), else why a CPU bf16 row is skipped."""
    isa = isa or cpu_isa()
    if isa.bf16:
        return None
    return (f"this CPU ({isa.model}: {isa.summary}) has no BF16 instructions (AVX-512 BF16 or AMX); PyTorch would "
            "emulate bf16 matmuls through fp32, slower than fp32 itself")


def torch_bf16_peak(n: int = 1024, repeats: int = 5, isa: CpuIsa | None = None) -> GemmPeak:
    """PyTorch bf16 ``mm`` throughput on the CPU (skipped, with the reason, without BF16 instructions)."""
    reason = bf16_cpu_reason(isa)
    if reason:
        return GemmPeak("bf16", "torch.mm", skipped=reason)
    import torch

    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    with torch.inference_mode():
        secs = _best_seconds(lambda: torch.mm(a, b), repeats)
    return GemmPeak("bf16", f"torch {torch.__version__} mm", 2 * n**3 / secs / 1e9, [n, n, n], torch.get_num_threads())


def measure_peaks(n: int = 1024, repeats: int = 5, threads: int | None = None) -> dict:
    """The machine section: ISA plus fp32/int8 (ONNX Runtime) and bf16 (PyTorch) GEMM peaks."""
    isa = cpu_isa()
    peaks = {}
    for dtype in ("fp32", "int8"):
        try:
            peaks[dtype] = ort_gemm_peak(dtype, n, repeats, threads)
        except ImportError as e:
            peaks[dtype] = GemmPeak(dtype, "onnxruntime", skipped=f"onnxruntime is not installed ({e.name})")
    try:
        peaks["bf16"] = torch_bf16_peak(n, repeats, isa)
    except ImportError as e:
        peaks["bf16"] = GemmPeak("bf16", "torch.mm", skipped=f"PyTorch is not installed ({e.name})")
    from dataclasses import asdict

    return {"isa": isa.to_dict(), "peaks": {k: asdict(v) for k, v in peaks.items()}}


def model_gflops(model, input_shape: tuple[int, ...], n_inputs: int = 1) -> float:
    """GFLOPs of one forward pass of a PyTorch module (matmuls and attention, ``torch.utils.flop_counter``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(*(torch.randn(*input_shape) for _ in range(n_inputs)))
    return fc.get_total_flops() / 1e9


def peak_dtype(precision: str) -> str:
    """The peak a row (a precision label: ``int8-dynamic`` too) is measured against: its precision's ``cpu_peak``."""
    from wherevit.base.precision import get_precision, parse_precision_label

    return get_precision(parse_precision_label(precision)[0]).cpu_peak


def format_machine(machine: dict) -> str:
    """One line for the bench's machine section: CPU, ISA and GEMM peaks per dtype."""
    isa = machine.get("isa") or {}
    parts = []
    for dtype, p in (machine.get("peaks") or {}).items():
        parts.append(f"{dtype} {p['gflops']:.0f} GFLOP/s ({p['kernel']})" if p.get("gflops") else f"{dtype} skipped")
    return f"machine: {isa.get('model', '?')} [{isa.get('summary', '?')}], {machine.get('cores_available', '?')} cores; " \
           f"GEMM peaks: {'; '.join(parts) or 'not measured'}"


def annotate_fractions(rows, gflops_per_image: float, peaks: dict, cpu_rows=lambda r: True) -> None:
    """Set ``fraction_of_peak`` on every timed CPU row: batch x model GFLOPs at its p50, over its dtype's peak."""
    for r in rows:
        if r.status != "ok" or r.p50_ms is None or not cpu_rows(r):
            continue
        peak = (peaks.get(peak_dtype(r.precision)) or {}).get("gflops")
        r.fraction_of_peak = fraction_of_peak(gflops_per_image * r.batch, r.p50_ms, peak)


def fraction_of_peak(gflops: float, ms: float, peak_gflops: float | None) -> float | None:
    """Achieved model GFLOP/s at ``ms`` per call over ``peak_gflops`` (None without a peak)."""
    if not peak_gflops or not ms:
        return None
    return gflops / (ms / 1e3) / peak_gflops
