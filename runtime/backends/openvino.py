"""OpenVINO on the CPU: our ONNX artifacts (fp32, bf16, INT8 Q/DQ) on Intel's runtime, beside ONNX Runtime.

Inference precision (``inference_precision``):

* ``"auto"`` (the default) keeps the artifact's precision. An fp32 graph runs in f32 -- OpenVINO's
  own default on a CPU with BF16 units would silently drop it to bf16, which is not what the sidecar's
  parity record vouches for. A bf16 graph runs in bf16 where the CPU computes bf16 natively (AMX or
  AVX-512 BF16), in f32 elsewhere. An INT8 Q/DQ graph runs its quantised MatMuls in int8 and the
  rest in f32.
* ``"bf16"``: any float graph in bf16 (an fp32 artifact included: ``wherevit bench``'s OpenVINO bf16
  row); refused on a CPU without BF16 instructions, where OpenVINO would emulate it.
* ``"fp32"``: f32 for everything that is not quantised.

``describe()`` records the choice, why, the CPU's ISA and OpenVINO's capabilities (the bench row keeps it,
and its table note reads ``computes bf16 (AVX-512 FMA VNNI BF16)``). Precisions, in the precision table's
terms (``base/precision.py``): fp32, bf16 (natively where the CPU has it, f32 elsewhere, as above) and int8
(our static Q/DQ graph, NNCF's, or a dynamic one); ``row_sources`` lets the bench's bf16 row run the fp32
graph on a BF16 CPU.
The batch axis stays dynamic, bounded by the sidecar's batch range, so one compiled model serves
every batch; ``static_shapes=True`` compiles one model per batch size on first use instead (a few
percent faster, one compile and one copy of the weights per size).

``auto_rank`` applies the documented rule by which ``runtime.load(path)`` (backend "auto") puts OpenVINO
before or after ONNX Runtime's CPU provider for an artifact on this CPU; ``auto_rule`` says why.
"""

from __future__ import annotations

import os
import threading
from typing import ClassVar, Mapping

import numpy as np

from wherevit.base.cpu import CpuIsa, cpu_isa
from wherevit.base.sidecar import Sidecar
from wherevit.runtime.backends.base import Backend, BackendUnavailable, register_backend

__all__ = ["OpenVino", "choose_inference_precision", "auto_rule", "estimated_gflops", "openvino_version", "INFERENCE_PRECISIONS"]

INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")
PRECISIONS = ("fp32", "bf16", "int8")  # artifact precisions (base/precision.py); int8: any quantisation mode
RANK_AHEAD, RANK_BEHIND = 35, 45  # around ort-cpu's auto_priority (40); GPU backends rank 10-30
SMALL_GFLOPS = 0.25  # per image; below it ONNX Runtime's per-call overhead is the smaller (auto_rule)


def openvino_version() -> str | None:
    """The installed OpenVINO's version, or None when it is absent."""
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.__version__)


def choose_inference_precision(artifact_precision: str, requested: str, isa: CpuIsa) -> tuple[str, str]:
    """(``"f32"`` or ``"bf16"``, why) for an artifact of ``artifact_precision`` on a CPU with ``isa``.

    Raises ``BackendUnavailable`` when bf16 is asked for on a CPU without BF16 instructions."""
    if requested not in INFERENCE_PRECISIONS:
        raise ValueError(f"inference_precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {requested!r}")
    native = "AMX BF16" if isa.amx_bf16 else "AVX-512 BF16" if isa.avx512_bf16 else None
    if requested == "bf16":
        if native is None:
            raise BackendUnavailable(f"bf16 inference asked for, but this CPU ({isa.model}: {isa.summary}) has no BF16 "
                                     "instructions (AMX or AVX-512 BF16); OpenVINO would emulate it, slower than f32")
        return "bf16", f"bf16 asked for; the CPU computes it natively ({native})"
    if requested == "fp32":
        return "f32", "f32 asked for"
    if artifact_precision == "bf16":
        if native is None:
            return "f32", f"bf16 graph on a CPU without BF16 instructions ({isa.summary}): computed in f32"
        return "bf16", f"bf16 graph, computed natively ({native})"
    if artifact_precision == "int8":
        return "f32", "INT8 graph: quantised MatMuls in int8, the rest in f32 (bf16 for the rest measured no faster)"
    return "f32", f"{artifact_precision} graph: f32, the artifact's parity record holds (bf16 is opt-in)"


def estimated_gflops(meta: Sidecar) -> float | None:
    """GFLOPs per image of a ViT artifact, 2 x parameters x tokens, from the sidecar's model record (None without one)."""
    arch = meta.model.arch if meta.model else {}
    params, patch = arch.get("params"), arch.get("patch_size")
    if not params or not patch:
        return None
    h, w = meta.input_preprocess().size
    tokens = (h // patch[0]) * (w // patch[1]) + int(arch.get("num_prefix_tokens") or 0)
    return 2.0 * params * tokens / 1e9


def auto_rule(meta: Sidecar, isa: CpuIsa | None = None) -> tuple[bool, str]:
    """(OpenVINO before ONNX Runtime's CPU provider for this artifact here?, why) -- from measurements.

    Batch 1 (benchmarks/cpu_backends.py, benchmarks/README.md): on an AVX-512 CPU OpenVINO is faster
    for fp32 and static INT8 graphs of ViT-S/16 (0.87x and 0.76x ONNX Runtime's time, one thread);
    ONNX Runtime is 3x faster for its own dynamic-INT8 graph (OpenVINO has no fused kernel for
    DynamicQuantizeLinear + MatMulInteger). OpenVINO's per-call overhead is larger, so below about
    0.25 GFLOP per image ONNX Runtime wins (ViT-Ti/16 at 32-224 px: 1.11x, 1.00x, 0.97x, 0.93x ONNX
    Runtime's time at 0.055, 0.19, 0.55 and 2.2 GFLOP). On CPUs without AVX-512 nothing was
    measured, so ONNX Runtime, the measured baseline, stays first.
    """
    isa = isa or cpu_isa()
    if meta.precision == "bf16":
        return True, "bf16 graph: ONNX Runtime's CPU provider has no bf16 kernels"
    if meta.quantization is not None and meta.quantization.mode == "dynamic":
        return False, ("dynamic INT8 graph: ONNX Runtime's fused kernels measured 3x faster than OpenVINO "
                       "(ViT-S/16, batch 1, AVX-512 VNNI)")
    if not isa.avx512f:
        return False, f"no AVX-512 ({isa.summary}): not measured on this ISA, ONNX Runtime stays first"
    gflops = estimated_gflops(meta)
    if gflops is not None and gflops < SMALL_GFLOPS:
        return False, (f"about {gflops:.2g} GFLOP per image, below {SMALL_GFLOPS:g}: ONNX Runtime's smaller per-call "
                       "overhead wins at this size (measured on an AVX-512 CPU)")
    what = "static INT8 (Q/DQ) graph" if meta.precision == "int8" else f"{meta.precision} graph"
    return True, f"{what} on an AVX-512 CPU ({isa.summary}): OpenVINO measured faster than ONNX Runtime"


@register_backend
class OpenVino(Backend):
    """An ONNX artifact compiled by OpenVINO for the CPU (``pip install 'wherevit[openvino]'``)."""

    name = "openvino"
    kinds = ("onnx",)
    device = "cpu"
    auto_priority = RANK_BEHIND  # without an artifact to judge by: after ort-cpu
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS

    def __init__(self, artifact, meta: Sidecar, threads: int | None = None, inference_precision: str = "auto",
                 static_shapes: bool = False, isa: CpuIsa | None = None):
        super().__init__(artifact, meta)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads or len(os.sched_getaffinity(0))
        self.requested = inference_precision
        self.static_shapes = static_shapes
        self.isa = isa or cpu_isa()
        self.precision, self.why = choose_inference_precision(meta.precision, inference_precision, self.isa)
        self.info: dict | None = None  # set on activation: what was compiled (describe())

    @classmethod
    def _unavailable_impl(cls, meta: Sidecar) -> str | None:
        if openvino_version() is None:
            return "openvino is not installed (pip install 'wherevit[openvino]')"
        return None

    @classmethod
    def precision_reason(cls, precision: str) -> str:
        return f"openvino runs {', '.join(cls.precisions)} ONNX artifacts, not {precision}"

    @classmethod
    def row_sources(cls, label: str) -> tuple[str, ...]:
        """A bf16 row also runs the fp32 graph (OpenVINO lowers it to bf16) where the CPU computes bf16 natively."""
        return ("bf16", "fp32") if label == "bf16" and cpu_isa().bf16 else (label,)

    @classmethod
    def auto_rank(cls, meta: Sidecar) -> int:
        """This artifact's rank for backend="auto" on this CPU (``auto_rule``): just before or after ort-cpu."""
        return RANK_AHEAD if auto_rule(meta)[0] else RANK_BEHIND

    def _config(self) -> dict:
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        return {hints.inference_precision: ov.Type.bf16 if self.precision == "bf16" else ov.Type.f32,
                hints.performance_mode: hints.PerformanceMode.LATENCY, props.num_streams: 1,
                props.inference_num_threads: self.threads}

    def _compile(self, batch: tuple[int, int]):
        import openvino as ov

        model = self.core.read_model(str(self.artifact))
        lo, hi = batch
        shapes = {}
        for port in model.inputs:
            ps = port.get_partial_shape()
            ps[0] = ov.Dimension(lo) if lo == hi else ov.Dimension(lo, hi)  # the profile's range, not unbounded
            shapes[port.any_name] = ps
        model.reshape(shapes)
        compiled = self.core.compile_model(model, "CPU", self._config())
        return compiled, compiled.create_infer_request()

    def _activate_impl(self) -> None:
        import openvino as ov

        self.core = ov.Core()
        self.lock = threading.Lock()  # an infer request runs one inference at a time
        self.requests: dict[int | None, tuple] = {}
        key = None if not self.static_shapes else self.batch.opt
        self.requests[key] = self._compile((self.batch.opt,) * 2 if self.static_shapes else (self.batch.min, self.batch.max))
        compiled = self.requests[key][0]
        got = "bf16" if compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16 else "f32"
        self.info = {
            "openvino": ov.__version__, "device": str(self.core.get_property("CPU", "FULL_DEVICE_NAME")),
            "isa": self.isa.summary, "capabilities": list(self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
            "artifact_precision": self.meta.precision, "inference_precision": got,
            "requested": self.requested, "why": self.why, "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "shapes": "static, one compiled model per batch size" if self.static_shapes else
                      f"dynamic batch {self.batch.min}..{self.batch.max}",
            "summary": f"computes {got} ({self.isa.summary})",
        }
        if got != self.precision:  # a plugin that ignored the hint must not pass unnoticed
            raise BackendUnavailable(f"OpenVINO compiled {self.artifact.name} with inference precision {got}, asked for {self.precision}")

    def describe(self) -> dict | None:
        return self.info

    def _request(self, batch: int):
        if not self.static_shapes:
            return self.requests[None][1]
        if batch not in self.requests:
            self.requests[batch] = self._compile((batch, batch))
        return self.requests[batch][1]

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = next(iter(feeds.values())).shape[0]
        with self.lock:
            request = self._request(batch)
            # share_inputs: the arrays are read in place (the call is synchronous); outputs are copies
            res = request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()}, share_inputs=True)
            return {name: res[name] for name in self.output_names}

    def _deactivate_impl(self) -> None:
        self.requests = {}
        self.core = None
