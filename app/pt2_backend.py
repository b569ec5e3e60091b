"""The ``pt2`` runtime backend: AOTInductor packages run through torch (where torch is installed).

It lives above the torch-free runtime: the runtime finds it in its backend registry (the
``wherevit.backends`` entry point, or importing this module), and a deployment without torch
simply does not list it. The package was compiled for one device (sidecar ``pt2.device``); a CUDA
package needs a CUDA GPU here, and the torch that loads it should be the one that compiled it.
"""

from __future__ import annotations

import importlib.util
from typing import Mapping

import numpy as np

from wherevit.base.precision import precision_names
from wherevit.base.sidecar import Sidecar
from wherevit.runtime.backends.base import Backend, register_backend

__all__ = ["Pt2Backend"]


@register_backend
class Pt2Backend(Backend):
    """Runs ``.pt2`` artifacts with ``torch._inductor.aoti_load_package`` on the device they were compiled for."""

    name = "pt2"
    kinds = ("pt2",)
    precisions = precision_names(quantized=False)  # what the pt2 export format writes
    device = "cpu"
    auto_priority = 50  # the only backend for .pt2 artifacts; after every ONNX/engine backend

    @classmethod
    def _unavailable_impl(cls, meta: Sidecar) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (an AOTInductor package runs through libtorch: pip install torch)"
        if meta.pt2 is not None and meta.pt2.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                return "this package was compiled for CUDA and there is no CUDA GPU here (export with --device cpu)"
        return None

    def _activate_impl(self) -> None:
        import torch

        facts = self.meta.pt2
        self.torch_device = facts.device if facts is not None else "cpu"
        built = facts.torch if facts is not None else None
        if built and built.split("+")[0] != torch.__version__.split("+")[0]:
            import warnings

            warnings.warn(f"{self.artifact.name} was compiled by torch {built}, this is torch {torch.__version__}; "
                          "AOTInductor packages are only guaranteed to load with the torch that built them", stacklevel=2)
        self.runner = torch._inductor.aoti_load_package(str(self.artifact))

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from wherevit.export.formats.pt2 import run_pt2  # the same call the export's parity check makes

        return run_pt2(self.runner, dict(feeds), list(self.inputs), self.output_names, self.torch_device)

    def _deactivate_impl(self) -> None:
        self.runner = None
