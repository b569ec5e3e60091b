"""Inference backends behind one interface; importing registers the built-in ones."""

from wherevit.runtime.backends import onnxruntime as _ort  # noqa: F401
from wherevit.runtime.backends import tensorrt as _trt  # noqa: F401
from wherevit.runtime.backends.base import (
    Backend,
    BackendUnavailable,
    InputError,
    registered_backends,
)

__all__ = ["Backend", "BackendUnavailable", "InputError", "registered_backends", "auto_order"]


def auto_order() -> list[str]:
    """Backends tried for backend="auto", fastest first (each backend states its ``auto_priority``)."""
    ranked = [(cls.auto_priority, name) for name, cls in registered_backends().items() if cls.auto_priority is not None]
    return [name for _, name in sorted(ranked)]
