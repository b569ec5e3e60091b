"""The backend interface: one small class per inference library (Polygraphy's runner shape).

Public ``activate / infer / deactivate`` check state and inputs, then delegate to ``*_impl``.
Optional libraries (onnxruntime providers, tensorrt, cuda-python) are imported inside the backend
that needs them; ``unavailable_reason`` says, without raising, why a backend cannot run here.

What a backend supports is declared on its class, so callers ask instead of probing:

* ``kinds``        the artifact kinds it runs ("onnx", "engine", "pt2"; empty: any, see torch backends)
* ``precisions``   the precisions (``base/precision.py``) it runs; others are refused with that list
* ``device``, ``auto_priority``  where it runs, and its rank for ``backend="auto"``
* ``stages_inputs``  True when ``to_device`` / ``infer_device`` keep inputs on the device (bench
  ``--no-copies`` times only the work after the copy)

and its optional abilities have a default on this class (Polygraphy's ``last_inference_time``):
``sync()`` waits for queued device work (a no-op on a CPU), ``last_timings()`` is the last call's
h2d / compute / d2h split or None, ``to_device`` / ``infer_device`` stage inputs (the default keeps
host arrays). Bench calls them on every backend; no caller uses ``hasattr``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from wherevit.base.errors import WherevitError
from wherevit.base.precision import precision_names
from wherevit.base.registry import Registry
from wherevit.base.sidecar import Sidecar

__all__ = ["Backend", "BackendUnavailable", "InputError", "BACKENDS", "register_backend", "registered_backends",
           "unloadable_backends", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "wherevit.backends"
BACKENDS: Registry = Registry("backend", ENTRY_POINT_GROUP)
register_backend = BACKENDS.register  # class decorator; a duplicate name is refused
registered_backends = BACKENDS.items  # every backend by name: built-ins, installed packages', registered since
unloadable_backends = BACKENDS.unloadable  # entry-point backends whose module cannot import here (e.g. pt2 without torch)


class BackendUnavailable(WherevitError, RuntimeError):
    """The backend cannot run here (library missing, no GPU, unsupported compute capability)."""


class InputError(WherevitError, ValueError):
    """An input tensor with the wrong name, dtype or shape."""


class Backend(ABC):
    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]]  # artifact kinds it runs: "onnx", "engine", ...
    precisions: ClassVar[tuple[str, ...]] = precision_names()  # precisions it runs (base/precision.py)
    device: ClassVar[str] = "cpu"
    auto_priority: ClassVar[int | None] = None  # rank for backend="auto" (lower first); None: only by name
    stages_inputs: ClassVar[bool] = False  # to_device/infer_device keep inputs on the device (bench --no-copies)

    def __init__(self, artifact: Path, meta: Sidecar):
        self.artifact = Path(artifact)
        self.meta = meta
        self.active = False
        self.inputs = {t.name: t for t in meta.inputs}
        self.output_names = meta.output_names
        self.batch = meta.batch

    @classmethod
    def unavailable_reason(cls, meta: Sidecar) -> str | None:
        """None when the backend can run ``meta``'s artifact here, else a sentence saying why not."""
        if meta.kind not in cls.kinds:
            return f"{cls.name} runs {'/'.join(cls.kinds)} artifacts, not {meta.kind}"
        if meta.precision not in cls.precisions:
            return cls.precision_reason(meta.precision)
        return cls._unavailable_impl(meta)

    @classmethod
    def precision_reason(cls, precision: str) -> str:
        """Why this backend does not run ``precision`` (override to say more than the list)."""
        return f"{cls.name} runs {', '.join(cls.precisions)} artifacts, not {precision}"

    @classmethod
    def _unavailable_impl(cls, meta: Sidecar) -> str | None:
        return None

    def activate(self) -> "Backend":
        if not self.active:
            reason = self.unavailable_reason(self.meta)
            if reason:
                raise BackendUnavailable(f"backend {self.name}: {reason}")
            self._activate_impl()
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self._deactivate_impl()
            self.active = False

    def __enter__(self) -> "Backend":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Names, dtypes and shapes against the sidecar, and the batch against the profile."""
        missing = set(self.inputs) - set(feeds)
        extra = set(feeds) - set(self.inputs)
        if missing or extra:
            raise InputError(f"inputs must be exactly {sorted(self.inputs)}; missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, spec in self.inputs.items():
            x = feeds[name]
            want = np.dtype(spec.dtype)
            if x.dtype != want:
                raise InputError(f"input {name!r}: dtype {x.dtype}, expected {want}")
            shape = spec.shape
            if x.ndim != len(shape) or any(s not in (-1, d) for s, d in zip(shape, x.shape)):
                raise InputError(f"input {name!r}: shape {list(x.shape)}, expected {shape} (-1 = any)")
            if x.shape[0] not in self.batch:
                raise InputError(f"input {name!r}: batch {x.shape[0]} outside the artifact's range "
                                 f"{self.batch.min}..{self.batch.max}")

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; inputs are checked first. Returns outputs by name."""
        if not self.active:
            raise RuntimeError(f"backend {self.name} is not activated; call activate() or use it as a context manager")
        self.check_inputs(feeds)
        return self._infer_impl(feeds)

    # -- optional abilities: the defaults are what a backend without them does ---------------------
    def sync(self) -> None:  # noqa: B027 (optional: most backends return only when the work is done)
        """Wait for work queued on the device (timing stops after this); a no-op where ``infer`` is synchronous."""

    def last_timings(self) -> dict[str, float] | None:
        """The last ``infer``'s split in ms (``h2d_ms``, ``compute_ms``, ``d2h_ms``), or None where it is not measured."""
        return None

    def to_device(self, feeds: Mapping[str, np.ndarray]) -> Any:
        """Inputs staged for ``infer_device`` (on the device where ``stages_inputs``; the host arrays otherwise)."""
        return feeds

    def infer_device(self, staged: Any) -> Any:
        """Run on inputs from ``to_device``; outputs may stay on the device. Default: ``infer``."""
        return self.infer(staged)

    @abstractmethod
    def _activate_impl(self) -> None: ...

    @abstractmethod
    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _deactivate_impl(self) -> None:  # noqa: B027 (optional hook: most backends hold nothing to free)
        """Release what ``_activate_impl`` acquired (optional)."""


BACKENDS.base = Backend
