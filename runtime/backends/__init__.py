"""Inference backends behind one interface; importing registers the built-in ones."""

from wherevit.base.sidecar import Sidecar
from wherevit.runtime.backends import onnxruntime as _ort  # noqa: F401
from wherevit.runtime.backends import openvino as _ov  # noqa: F401
from wherevit.runtime.backends import tensorrt as _trt  # noqa: F401
from wherevit.runtime.backends.base import (
    Backend,
    BackendUnavailable,
    InputError,
    registered_backends,
)

__all__ = ["Backend", "BackendUnavailable", "InputError", "registered_backends", "auto_order"]


def auto_order(meta: Sidecar | None = None) -> list[str]:
    """Backends tried for backend="auto", fastest first.

    Each backend states its ``auto_priority``; with the artifact's sidecar, a backend whose speed
    depends on the CPU and the artifact's precision (``auto_rank(meta)``, e.g. OpenVINO) ranks for
    that artifact on this machine."""
    ranked = []
    for name, cls in registered_backends().items():
        rank = cls.auto_priority
        if meta is not None and rank is not None and callable(getattr(cls, "auto_rank", None)):
            rank = cls.auto_rank(meta)
        if rank is not None:
            ranked.append((rank, name))
    return [name for _, name in sorted(ranked)]
