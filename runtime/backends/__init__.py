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
    """Backends tried for backend="auto", fastest first: each backend's ``auto_priority``, or with the
    artifact's sidecar its ``auto_rank(meta)`` (OpenVINO ranks before or after ONNX Runtime's CPU
    provider per artifact and CPU, ``runtime/backends/openvino.py``'s ``auto_rule``)."""
    ranks = {name: cls.auto_priority if meta is None else cls.auto_rank(meta) for name, cls in registered_backends().items()}
    return [name for rank, name in sorted((r, n) for n, r in ranks.items() if r is not None)]
