"""TensorRT and TensorRT-RTX engines, with device buffers through cuda-python.

Before deserialising, the sidecar is checked against this machine: the engine's library must be
installed at the exact version it was built with, and this GPU's compute capability must be one
the engine targets. A mismatch names both sides and the command that rebuilds the engine.
"""

from __future__ import annotations

import ctypes
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
    eng = meta.engine
    lib, built = (eng.library, eng.version) if eng else ("?", "?")
    rebuild = (f"rebuild it on this machine: wherevit export {meta.model.checkpoint or 'CKPT'} "
               f"--format engine --precision {meta.precision} --trt-lib {lib}")
    if installed is None:
        raise EngineMismatch(f"engine built by {lib} {built}, but {lib} is not installed here; install {lib}=={built} or {rebuild}")
    if installed != built:
        raise EngineMismatch(f"engine built by {lib} {built}, this machine has {lib} {installed}: TensorRT engines only load "
                             f"with the exact version that built them; {rebuild}")
    targets = eng.compute_capabilities if eng else []
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
        if meta.engine is None:
            return "the sidecar has no engine section (re-export with `wherevit export --format engine`)"
        lib = meta.engine.library
        if installed_version(lib) is None:
            return f"{lib} is not installed"
        return cuda_unavailable_reason()

    def _activate_impl(self) -> None:
        lib = self.meta.engine.library
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
        self._timings: dict[str, float] | None = None
        self.device_buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.host_buffers: dict[str, tuple[int, int]] = {}  # name -> (pinned host pointer, bytes)
        self.io = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in self.io}
        for name in self.io:  # allocate for the profile's max batch once, so timed calls allocate nothing
            shape = self._max_shape(name)
            if shape is not None:
                self._buffers(name, int(np.prod(shape)) * self.dtypes[name].itemsize)

    def last_timings(self) -> dict[str, float] | None:
        return self._timings

    def _max_shape(self, name: str) -> tuple[int, ...] | None:
        spec = self.inputs.get(name) or self.meta.output(name)
        if spec is None or any(d < 0 for d in spec.shape[1:]):
            return None  # dynamic spatial size: grown on first use
        return (self.batch.max, *spec.shape[1:])

    def _buffers(self, name: str, nbytes: int) -> tuple[int, np.ndarray]:
        """(device pointer, pinned host bytes view) of at least ``nbytes`` for tensor ``name``.

        Copies go through page-locked host memory: a pageable numpy array would make the driver
        stage every copy through its own pinned buffer, and h2d/d2h would time that staging."""
        nbytes = max(nbytes, 1)
        dptr, dsize = self.device_buffers.get(name, (0, 0))
        hptr, _ = self.host_buffers.get(name, (0, 0))
        if dsize < nbytes:
            if dptr:
                cuda_check(self.rt.cudaFree(dptr))
                cuda_check(self.rt.cudaFreeHost(hptr))
            dptr = cuda_check(self.rt.cudaMalloc(nbytes))
            hptr = cuda_check(self.rt.cudaMallocHost(nbytes))
            self.device_buffers[name], self.host_buffers[name] = (dptr, nbytes), (hptr, nbytes)
        host = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(int(hptr)))
        return dptr, host

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt, ev, stream = self.rt, self.events, self.stream
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        staged = self._stage_inputs(feeds)
        cuda_check(rt.cudaEventRecord(ev[0], stream))
        for dptr, hptr, nbytes in staged.values():
            cuda_check(rt.cudaMemcpyAsync(dptr, hptr, nbytes, h2d, stream))
        outs = self._bind_outputs()
        cuda_check(rt.cudaEventRecord(ev[1], stream))
        if not self.context.execute_async_v3(stream):
            raise RuntimeError(f"{self.meta.engine.library} execution failed")
        cuda_check(rt.cudaEventRecord(ev[2], stream))
        for name, (_shape, host) in outs.items():
            cuda_check(rt.cudaMemcpyAsync(host.ctypes.data, self.device_buffers[name][0], host.nbytes, d2h, stream))
        cuda_check(rt.cudaEventRecord(ev[3], stream))
        cuda_check(rt.cudaStreamSynchronize(stream))
        # trtexec's split: host-to-device copies, GPU compute, device-to-host copies (ms)
        span = [cuda_check(rt.cudaEventElapsedTime(ev[i], ev[i + 1])) for i in range(3)]
        self._timings = {"h2d_ms": span[0], "compute_ms": span[1], "d2h_ms": span[2]}
        # copy out of the reused pinned buffers: results must not change under the caller on the next call
        return {k: host.view(self.dtypes[k]).reshape(shape).astype(np.float32 if self.dtypes[k] == np.float16 else self.dtypes[k])
                for k, (shape, host) in outs.items()}

    def _stage_inputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[int, int, int]]:
        """Set input shapes and addresses; copy each input into its pinned buffer (outside the timed copy)."""
        staged = {}
        for name, x in feeds.items():
            x = np.ascontiguousarray(x, dtype=self.dtypes[name])
            self.context.set_input_shape(name, x.shape)
            dptr, host = self._buffers(name, x.nbytes)
            host[: x.nbytes] = x.reshape(-1).view(np.uint8)
            self.context.set_tensor_address(name, dptr)
            staged[name] = (dptr, host.ctypes.data, x.nbytes)
        return staged

    def _bind_outputs(self) -> dict[str, tuple[tuple[int, ...], np.ndarray]]:
        """Output shapes (known once inputs are set) and their pinned host views."""
        outs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * self.dtypes[name].itemsize
            dptr, host = self._buffers(name, nbytes)
            self.context.set_tensor_address(name, dptr)
            outs[name] = (shape, host[:nbytes])
        return outs

    def _deactivate_impl(self) -> None:
        for ptr, _ in self.device_buffers.values():
            cuda_check(self.rt.cudaFree(ptr))
        for ptr, _ in self.host_buffers.values():
            cuda_check(self.rt.cudaFreeHost(ptr))
        self.device_buffers.clear()
        self.host_buffers.clear()
        for e in self.events:
            cuda_check(self.rt.cudaEventDestroy(e))
        cuda_check(self.rt.cudaStreamDestroy(self.stream))
        self.context = self.engine = self.runtime = None
