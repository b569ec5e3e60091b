"""PyTorch reference backends: an artifact's source model run in PyTorch (eager, torch.compile, CUDA graphs).

They implement the runtime's ``Backend`` interface, so bench times them with the same loop and
compares them with the same comparator as every runtime backend. An artifact's sidecar names the
checkpoint (and head) it was exported from; these backends rebuild exactly that graph
(``FeatureModel`` or ``HeadModel``) at the sidecar's input size. They live in the application layer
because the runtime is torch-free; importing ``wherevit.app.bench`` registers them.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Mapping

import numpy as np
import torch

from wherevit.base.sidecar import Sidecar
from wherevit.export.head_models import HeadModel, load_head
from wherevit.export.onnx_export import DTYPES, FeatureModel
from wherevit.runtime.backends.base import Backend, register_backend
from wherevit.train.checkpoint import load_backbone, named_source

__all__ = ["TorchEager", "TorchCompile", "TorchCompileCudaGraphs", "torch_device", "reference_model"]


def torch_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def reference_model(meta: Sidecar, precision: str = "fp32") -> torch.nn.Module:
    """The wrapped PyTorch graph an artifact was exported from, at the artifact's input size."""
    ckpt = meta.model.get("checkpoint")
    which = meta.model.get("source") if meta.model.get("source") in ("teacher", "student") else "teacher"
    size = tuple(int(s) for s in meta.input_preprocess().size)
    named = named_source(meta.model)
    if named:  # a timm model with a weights file or timm's download, built at the artifact's size as export did
        model, _ = load_backbone(ckpt, img_size=size[0], dynamic_img_size=meta.dynamic_hw, **{"which": which, **named})
    else:
        model, _ = load_backbone(ckpt, which=which)
        if tuple(model.patch_embed.img_size) != size or meta.dynamic_hw:  # exported at another size: resample pos embed
            model, _ = load_backbone(ckpt, which=which, dynamic_img_size=True)
    if meta.head:
        head, head_meta = load_head(meta.head["file"])
        return HeadModel(model, copy.deepcopy(head), head_meta, precision).eval()
    return FeatureModel(model, precision, pooled=meta.output("pooled") is not None).eval()


class _Torch(Backend):
    """Runs any artifact's source model; ``meta.precision`` picks the dtype."""

    kinds = ()  # not tied to an artifact kind: see unavailable_reason
    mode: ClassVar[str | None] = None  # torch.compile mode; None = eager

    def __init__(self, artifact, meta: Sidecar, device: str | None = None):
        super().__init__(artifact, meta)
        self.torch_device = torch.device(device or torch_device())

    @classmethod
    def unavailable_reason(cls, meta: Sidecar) -> str | None:
        if not meta.model.get("checkpoint"):
            return "the sidecar names no checkpoint to rebuild the PyTorch model from"
        return cls._unavailable_impl(meta)

    @classmethod
    def _unavailable_impl(cls, meta: Sidecar) -> str | None:
        if meta.precision not in DTYPES:
            return f"PyTorch rows run fp32/fp16/bf16; {meta.precision} rows are the runtime's quantised artifacts"
        if torch_device() == "cpu" and meta.precision == "bf16":
            from wherevit.app.machine import bf16_cpu_reason

            return bf16_cpu_reason()  # bf16 autocast where the CPU has BF16 instructions
        if torch_device() == "cpu" and meta.precision != "fp32":
            return f"PyTorch {meta.precision} matmuls on this CPU are not a deployment path; compare fp32"
        return None

    def _activate_impl(self) -> None:
        # CPU bf16: fp32 weights under autocast (oneDNN bf16 matmuls, float elsewhere), as users run it on such CPUs
        self.autocast = self.torch_device.type == "cpu" and self.meta.precision == "bf16"
        self.model = reference_model(self.meta, "fp32" if self.autocast else self.meta.precision).to(self.torch_device)
        self.fn = torch.compile(self.model, mode=self.mode) if self.mode else self.model

    @torch.inference_mode()
    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.infer_device(self.to_device(feeds))
        return {n: o.float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy() for n, o in zip(self.output_names, outs)}

    def to_device(self, feeds: Mapping[str, np.ndarray]) -> list[torch.Tensor]:
        """Inputs placed on the device once (bench --no-copies times only what follows)."""
        return [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.torch_device, non_blocking=True) for n in self.model.input_names]

    @torch.inference_mode()
    def infer_device(self, inputs: list[torch.Tensor]):
        """Outputs left on the device."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            return self.fn(*inputs)

    def sync(self) -> None:
        if self.torch_device.type == "cuda":
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
