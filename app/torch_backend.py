"""PyTorch reference runners for ``wherevit bench``: eager, torch.compile, torch.compile + CUDA graphs.

They take the same float32 NCHW batches as the runtime backends and return the same named
outputs, so one timing loop and one comparator serve every row.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from wherevit.export.onnx_export import DTYPES, FeatureModel
from wherevit.train.checkpoint import load_backbone

__all__ = ["TorchRunner", "TORCH_MODES", "torch_unavailable_reason"]

TORCH_MODES = {"torch-eager": None, "torch-compile": "default", "torch-compile-cudagraphs": "reduce-overhead"}


def torch_unavailable_reason(name: str, precision: str, device: str) -> str | None:
    if name == "torch-compile-cudagraphs" and device != "cuda":
        return "CUDA graphs need a CUDA GPU"
    if precision not in DTYPES:
        return f"PyTorch rows run fp32/fp16/bf16; {precision} rows are the runtime's quantised artifacts"
    if device == "cpu" and precision == "bf16":
        from wherevit.app.machine import bf16_cpu_reason

        return bf16_cpu_reason()  # bf16 autocast on CPUs with BF16 instructions
    if device == "cpu" and precision != "fp32":
        return f"PyTorch {precision} matmuls on this CPU are not a deployment path; compare fp32"
    return None


class TorchRunner:
    """A backbone in PyTorch, run like a runtime backend (``infer({'images': x}) -> outputs``)."""

    def __init__(self, checkpoint: str, name: str = "torch-eager", precision: str = "fp32", device: str = "cpu",
                 imgsz: tuple[int, int] | None = None, which: str = "teacher"):
        self.name, self.precision, self.device = name, precision, torch.device(device)
        model, self.info = load_backbone(checkpoint, which=which, dynamic_img_size=imgsz is not None)
        # CPU bf16: fp32 weights under autocast (oneDNN bf16 matmuls, float elsewhere), as users run it
        self.autocast = self.device.type == "cpu" and precision == "bf16"
        self.model = FeatureModel(copy.deepcopy(model), "fp32" if self.autocast else precision).eval().to(self.device)
        self.output_names = self.model.output_names
        mode = TORCH_MODES[name]
        self.fn = torch.compile(self.model, mode=mode) if mode else self.model

    @torch.inference_mode()
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(feeds["images"]).to(self.device, non_blocking=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            outs = self.fn(x)
        return {n: o.float().cpu().numpy() for n, o in zip(self.output_names, outs)}

    @torch.inference_mode()
    def infer_device(self, x: torch.Tensor):
        """Outputs left on the device (timing without copies)."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            return self.fn(x)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
