"""PyTorch reference backends: an artifact's source model run in PyTorch (eager, torch.compile, CUDA graphs).

They implement the runtime's ``Backend`` interface, so bench times them with the same loop and
compares them with the same comparator as every runtime backend. An artifact's sidecar names the
checkpoint (and head) it was exported from; these backends rebuild exactly that graph
(``FeatureModel`` or ``HeadModel``) at the sidecar's input size.

They live in the application layer because the runtime is torch-free, and they reach the runtime
through the ``wherevit.backends`` entry-point group (pyproject.toml): ``runtime.load(path,
backend="torch-eager")`` imports this module by that name. Importing it does not import torch
(torch and the export layer are imported when a backend is activated), so listing every backend
for ``backend="auto"`` stays torch-free.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np

from wherevit.base.precision import get_precision, precision_names
from wherevit.base.sidecar import Sidecar
from wherevit.runtime.backends.base import Backend, register_backend

if TYPE_CHECKING:
    import torch

__all__ = ["TorchEager", "TorchCompile", "TorchCompileCudaGraphs", "torch_device", "reference_model"]


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def reference_model(meta: Sidecar, precision: str = "fp32") -> "torch.nn.Module":
    """The wrapped PyTorch graph an artifact was exported from, at the artifact's input size."""
    import copy

    from wherevit.export.head_models import HeadModel, load_head
    from wherevit.export.onnx_export import FeatureModel
    from wherevit.train.checkpoint import load_backbone, named_source

    ckpt, which = meta.model.checkpoint, meta.model.trained_network
    size = tuple(int(s) for s in meta.input_preprocess().size)
    named = named_source(meta.model.weights)
    if named:  # a timm model with a weights file or timm's download, built at the artifact's size as export did
        model, _ = load_backbone(ckpt, img_size=size[0], dynamic_img_size=meta.dynamic_hw, **{"which": which, **named})
    else:
        model, _ = load_backbone(ckpt, which=which)
        if tuple(model.patch_embed.img_size) != size or meta.dynamic_hw:  # exported at another size: resample pos embed
            model, _ = load_backbone(ckpt, which=which, dynamic_img_size=True)
    if meta.head is not None:
        head, record = load_head(meta.head.file)
        return HeadModel(model, copy.deepcopy(head), record, precision).eval()
    return FeatureModel(model, precision, pooled=meta.output("pooled") is not None).eval()


class _Torch(Backend):
    """Runs any artifact's source model; ``meta.precision`` picks the dtype."""

    kinds = ()  # not tied to an artifact kind: see unavailable_reason
    precisions = precision_names(quantized=False)  # quantised rows are the runtime's artifacts, not PyTorch's
    stages_inputs = True
    cpu_direct: ClassVar[tuple[str, ...]] = ("fp32",)  # precisions run as they are on a CPU
    cpu_autocast: ClassVar[tuple[str, ...]] = ("bf16",)  # on a CPU: fp32 weights under autocast (where the ISA has BF16)
    mode: ClassVar[str | None] = None  # torch.compile mode; None = eager

    def __init__(self, artifact, meta: Sidecar, device: str | None = None):
        super().__init__(artifact, meta)
        self.requested_device = device

    @classmethod
    def precision_reason(cls, precision: str) -> str:
        return f"PyTorch rows run {'/'.join(cls.precisions)}; {precision} rows are the runtime's quantised artifacts"

    @classmethod
    def unavailable_reason(cls, meta: Sidecar) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "PyTorch is not installed (pip install 'wherevit[export]')"
        if not meta.model.checkpoint:
            return "the sidecar names no checkpoint to rebuild the PyTorch model from"
        if meta.precision not in cls.precisions:
            return cls.precision_reason(meta.precision)
        return cls._unavailable_impl(meta)

    @classmethod
    def _unavailable_impl(cls, meta: Sidecar) -> str | None:
        if torch_device() == "cpu" and meta.precision in cls.cpu_autocast:
            from wherevit.app.machine import bf16_cpu_reason

            return bf16_cpu_reason()  # bf16 autocast where the CPU has BF16 instructions
        if torch_device() == "cpu" and meta.precision not in cls.cpu_direct:
            return f"PyTorch {meta.precision} matmuls on this CPU are not a deployment path; compare fp32"
        return None

    def _activate_impl(self) -> None:
        import torch

        self.torch_device = torch.device(self.requested_device or torch_device())
        # CPU autocast: fp32 weights, oneDNN low-precision matmuls, float elsewhere, as users run it on such CPUs
        self.autocast = self.torch_device.type == "cpu" and self.meta.precision in self.cpu_autocast
        self.autocast_dtype = getattr(torch, get_precision(self.meta.precision).dtype) if self.autocast else None
        self.model = reference_model(self.meta, "fp32" if self.autocast else self.meta.precision).to(self.torch_device)
        self.fn = torch.compile(self.model, mode=self.mode) if self.mode else self.model

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            outs = self.infer_device(self.to_device(feeds))
            return {n: o.float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy() for n, o in zip(self.output_names, outs)}

    def to_device(self, feeds: Mapping[str, np.ndarray]) -> list["torch.Tensor"]:
        """Inputs placed on the device once (bench --no-copies times only what follows)."""
        import torch

        return [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.torch_device, non_blocking=True) for n in self.model.input_names]

    def infer_device(self, staged: list["torch.Tensor"]) -> Any:
        """Outputs left on the device."""
        import torch

        with torch.inference_mode(), torch.autocast("cpu", dtype=self.autocast_dtype or torch.bfloat16, enabled=self.autocast):
            return self.fn(*staged)

    def sync(self) -> None:
        if self.torch_device.type == "cuda":
            import torch

            torch.cuda.synchronize()

    def _deactivate_impl(self) -> None:
        self.model = self.fn = None


@register_backend
class TorchEager(_Torch):
    name = "torch-eager"


@register_backend
class TorchCompile(_Torch):
    name = "torch-compile"
    mode = "default"


@register_backend
class TorchCompileCudaGraphs(_Torch):
    name = "torch-compile-cudagraphs"
    mode = "reduce-overhead"
    device = "cuda"

    @classmethod
    def _unavailable_impl(cls, meta: Sidecar) -> str | None:
        if torch_device() != "cuda":
            return "CUDA graphs need a CUDA GPU"
        return super()._unavailable_impl(meta)
