"""ONNX Runtime backends: CPU, CUDA, and ONNX Runtime's TensorRT execution provider."""

from __future__ import annotations

import os
from typing import ClassVar, Mapping

import numpy as np

from wherevit.base.sidecar import Sidecar
from wherevit.runtime.backends.base import Backend, register_backend

__all__ = ["OrtCpu", "OrtCuda", "OrtTensorrt"]


def _providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return ort.get_available_providers()


class _Ort(Backend):
    kinds = ("onnx",)
    provider: ClassVar[str]

    def __init__(self, artifact, meta, threads: int | None = None, provider_options: dict | None = None):
        super().__init__(artifact, meta)
        self.threads = threads
        self.provider_options = provider_options or {}

    @classmethod
    def _unavailable_impl(cls, meta: Sidecar) -> str | None:
        provs = _providers()
        if not provs:
            return "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu for CUDA)"
        if cls.provider not in provs:
            return f"{cls.provider} is not in this onnxruntime build (available: {', '.join(provs)})"
        return None

    def _session_options(self):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One inference at a time per session; intra-op threads = the cores we may use.
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = self.threads or len(os.sched_getaffinity(0))
        so.log_severity_level = 3
        return so

    def _activate_impl(self) -> None:
        import onnxruntime as ort

        providers = [(self.provider, self.provider_options)]
        if self.provider != "CPUExecutionProvider":
            providers.append(("CPUExecutionProvider", {}))
        self.session = ort.InferenceSession(str(self.artifact), self._session_options(), providers=providers)
        if self.session.get_providers()[0] != self.provider:
            raise RuntimeError(f"{self.provider} failed to load (session fell back to {self.session.get_providers()})")

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return dict(zip(self.output_names, outs))

    def _deactivate_impl(self) -> None:
        self.session = None


@register_backend
class OrtCpu(_Ort):
    name = "ort-cpu"
    auto_priority = 40
    provider = "CPUExecutionProvider"
    precisions = ("fp32", "int8")  # no fp16/bf16 MatMul kernels in the CPU provider

    @classmethod
    def precision_reason(cls, precision: str) -> str:
        return f"ONNX Runtime's CPU provider has no {precision} MatMul kernels; use the fp32 artifact or a GPU"


@register_backend
class OrtCuda(_Ort):
    name = "ort-cuda"
    auto_priority = 30
    provider = "CUDAExecutionProvider"
    device = "cuda"


@register_backend
class OrtTensorrt(_Ort):
    name = "ort-trt"
    auto_priority = 20
    provider = "TensorrtExecutionProvider"
    device = "cuda"
