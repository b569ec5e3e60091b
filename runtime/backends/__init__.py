"""Inference backends behind one interface; importing registers the built-in ones."""

from wherevit.runtime.backends import onnxruntime as _ort  # noqa: F401
from wherevit.runtime.backends import tensorrt as _trt  # noqa: F401
from wherevit.runtime.backends.base import (
    Backend,
    BackendUnavailable,
    InputError,
    registered_backends,
)

__all__ = ["Backend", "BackendUnavailable", "InputError", "registered_backends", "AUTO_ORDER"]

# Preference when the user does not name a backend: fastest first.
AUTO_ORDER = ("tensorrt", "ort-trt", "ort-cuda", "ort-cpu")
