"""The few CUDA runtime calls the engine backend needs, through cuda-python (not torch)."""

from __future__ import annotations

__all__ = ["cudart", "cuda_check", "device_compute_capability", "cuda_unavailable_reason"]


def cudart():
    """The cuda-python runtime bindings module (``cuda.bindings.runtime``; ``cuda.cudart`` on 12.x)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # cuda-python < 12.6
    return runtime


def cuda_check(ret):
    """Unpack a cuda-python ``(err, *values)`` tuple, raising on error."""
    rt = cudart()
    err, *vals = ret if isinstance(ret, tuple) else (ret,)
    if err != rt.cudaError_t.cudaSuccess:
        name = rt.cudaGetErrorName(err)[1].decode() if hasattr(rt, "cudaGetErrorName") else str(err)
        raise RuntimeError(f"CUDA error {name}")
    return vals[0] if len(vals) == 1 else tuple(vals)


def cuda_unavailable_reason() -> str | None:
    try:
        rt = cudart()
    except ImportError:
        return "cuda-python is not installed (pip install cuda-python)"
    err, n = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess:
        return f"no usable CUDA GPU ({rt.cudaGetErrorName(err)[1].decode()})"
    if n == 0:
        return "no CUDA GPU"
    return None


def device_compute_capability(device: int = 0) -> str | None:
    """"8.6" for the given device, or None without a GPU."""
    if cuda_unavailable_reason():
        return None
    rt = cudart()
    major = cuda_check(rt.cudaDeviceGetAttribute(rt.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, device))
    minor = cuda_check(rt.cudaDeviceGetAttribute(rt.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, device))
    return f"{major}.{minor}"
