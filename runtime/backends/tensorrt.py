"""TensorRT and TensorRT-RTX engines, with device buffers through cuda-python.

Before deserialising, the sidecar is checked against this machine: the engine's library must be
installed at the exact version it was built with, and this GPU's compute capability must be one
the engine targets. A mismatch names both sides and the command that rebuilds the engine.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Mapping

import numpy as np

from wherevit.base.errors import WherevitError
from wherevit.base.sidecar import Sidecar
from wherevit.runtime.backends.base import Backend, register_backend
from wherevit.runtime.backends.cuda import (
    cuda_check,
    cuda_unavailable_reason,
    cudart,
    device_compute_capability,
)

__all__ = ["TensorrtEngine", "EngineMismatch", "check_engine_compat", "installed_version"]


class EngineMismatch(WherevitError, RuntimeError):
    """An engine built for another library version or GPU than this machine has."""


def installed_version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:
        return None


def check_engine_compat(meta: Sidecar, installed: str | None, device_cc: str | None) -> None:
    """Raise ``EngineMismatch`` when the engine cannot run with library ``installed`` on ``device_cc``."""
    eng = meta.engine or {}
    lib, built = eng.get("library", "?"), eng.get("version", "?")
    rebuild = (f"rebuild it on this machine: wherevit export {meta.model.get('checkpoint', 'CKPT')} "
               f"--format engine --precision {meta.precision} --trt-lib {lib}")
    if installed is None:
        raise EngineMismatch(f"engine built by {lib} {built}, but {lib} is not installed here; install {lib}=={built} or {rebuild}")
    if installed != built:
        raise EngineMismatch(f"engine built by {lib} {built}, this machine has {lib} {installed}: TensorRT engines only load "
                             f"with the exact version that built them; {rebuild}")
    targets = eng.get("compute_capabilities") or []
    if device_cc is not None and targets and device_cc not in targets:
        extra = " (TensorRT-RTX does not support compute capability 9.0; use the full tensorrt package)" if (
            lib == "tensorrt_rtx" and device_cc.startswith("9.")) else f" --cc {device_cc}"
        raise EngineMismatch(f"engine built for compute capability {', '.join(targets)}, this GPU is {device_cc}; {rebuild}{extra}")


@register_backend
class TensorrtEngine(Backend):
    """Runs ``.engine`` artifacts with the library named in their sidecar (tensorrt or tensorrt_rtx)."""

    name = "tensorrt"
    kinds = ("engine",)
    auto_priority = 10
    device = "cuda"

    @classmethod
    def _unavailable_impl(cls, meta: Sidecar) -> str | None:
        lib = (meta.engine or {}).get("library", "tensorrt")
        if installed_version(lib) is None:
            return f"{lib} is not installed"
        return cuda_unavailable_reason()

    def _activate_impl(self) -> None:
        lib = self.meta.engine["library"]
        check_engine_compat(self.meta, installed_version(lib), device_compute_capability())
        trt = importlib.import_module(lib)
        self.trt, self.rt = trt, cudart()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.artifact.read_bytes())
        if self.engine is None:
            raise EngineMismatch(f"{lib} could not deserialise {self.artifact} (see the messages above)")
        self.context = self.engine.create_execution_context()
        self.stream = cuda_check(self.rt.cudaStreamCreate())
        self.events = [cuda_check(self.rt.cudaEventCreate()) for _ in range(4)]
        self.last_timings: dict[str, float] | None = None
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.io = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in self.io}

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                cuda_check(self.rt.cudaFree(ptr))
            ptr = cuda_check(self.rt.cudaMalloc(nbytes))
            self.buffers[name] = (ptr, nbytes)
        return ptr

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt = self.rt
        ev = self.events
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(rt.cudaEventRecord(ev[0], self.stream))
        for name, x in feeds.items():
            x = np.ascontiguousarray(x, dtype=self.dtypes[name])
            self.context.set_input_shape(name, x.shape)
            ptr = self._buffer(name, x.nbytes)
            cuda_check(rt.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, self.stream))
            self.context.set_tensor_address(name, ptr)
        outs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = np.empty(shape, self.dtypes[name])
            self.context.set_tensor_address(name, self._buffer(name, max(out.nbytes, 1)))
            outs[name] = out
        cuda_check(rt.cudaEventRecord(ev[1], self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError(f"{self.meta.engine['library']} execution failed")
        cuda_check(rt.cudaEventRecord(ev[2], self.stream))
        for name, out in outs.items():
            cuda_check(rt.cudaMemcpyAsync(out.ctypes.data, self.buffers[name][0], out.nbytes, d2h, self.stream))
        cuda_check(rt.cudaEventRecord(ev[3], self.stream))
        cuda_check(rt.cudaStreamSynchronize(self.stream))
        # trtexec's split: host-to-device copies, GPU compute, device-to-host copies (ms)
        span = [cuda_check(rt.cudaEventElapsedTime(ev[i], ev[i + 1])) for i in range(3)]
        self.last_timings = {"h2d_ms": span[0], "compute_ms": span[1], "d2h_ms": span[2]}
        return {k: v.astype(np.float32) if v.dtype in (np.float16,) else v for k, v in outs.items()}

    def _deactivate_impl(self) -> None:
        for ptr, _ in self.buffers.values():
            cuda_check(self.rt.cudaFree(ptr))
        self.buffers.clear()
        for e in self.events:
            cuda_check(self.rt.cudaEventDestroy(e))
        cuda_check(self.rt.cudaStreamDestroy(self.stream))
        self.context = self.engine = self.runtime = None
