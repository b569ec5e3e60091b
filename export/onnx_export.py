"""Backbone -> ONNX: named feature outputs, dynamic batch, checked, simplified, parity-tested.

Outputs (all float32):
  ``cls``          (B, D)      the CLS token after the final norm
  ``patch_tokens`` (B, N, D)   patch tokens in row-major grid order (N = grid_h * grid_w)
  ``pooled``       (B, D)      mean of patch tokens (optional)

The graph takes float32 NCHW images, normalised as the sidecar's ``preprocess`` says. For fp16 and
bf16 the weights and matmuls are in that type while every LayerNorm runs in float32 (cast in, cast
out) -- the "strongly typed" form TensorRT 11 and TensorRT-RTX build as written.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from wherevit.base.errors import InvalidRequest
from wherevit.base.io import atomic_write_with
from wherevit.base.precision import PRECISIONS
from wherevit.train.backbone import backbone_features

__all__ = ["FeatureModel", "OnnxExportOptions", "export_onnx", "check_onnx", "slim_onnx", "DTYPES"]

log = logging.getLogger("wherevit.export")

# torch dtype of every float precision in the table (base/precision.py)
DTYPES = {name: getattr(torch, p.dtype) for name, p in PRECISIONS.items() if p.dtype is not None}


class FP32LayerNorm(nn.Module):
    """A LayerNorm that computes in float32 whatever the dtype around it."""

    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.ln = ln.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.float()).to(x.dtype)


class FeatureModel(nn.Module):
    """Backbone wrapped for export: float32 images in, named float32 features out."""

    def __init__(self, backbone: nn.Module, precision: str = "fp32", pooled: bool = True):
        super().__init__()
        self.dtype = DTYPES[precision]
        self.backbone = backbone.to(self.dtype)
        if self.dtype != torch.float32:
            for name, mod in list(self.backbone.named_modules()):
                if isinstance(mod, nn.LayerNorm):
                    parent = self.backbone.get_submodule(name.rsplit(".", 1)[0]) if "." in name else self.backbone
                    setattr(parent, name.rsplit(".", 1)[-1], FP32LayerNorm(mod))
        self.pooled = pooled

    input_names = ["images"]

    def output_meta(self, dim: int, grid: tuple[int, int] | None) -> list[dict]:
        """Sidecar entries for the outputs (shape -1 = dynamic)."""
        n = -1 if grid is None else grid[0] * grid[1]
        out = [
            {"name": "cls", "dtype": "float32", "shape": [-1, dim], "meaning": "CLS token after the final norm"},
            {"name": "patch_tokens", "dtype": "float32", "shape": [-1, n, dim], "grid": None if grid is None else list(grid),
             "meaning": "patch tokens after the final norm, row-major over the patch grid"},
        ]
        if self.pooled:
            out.append({"name": "pooled", "dtype": "float32", "shape": [-1, dim], "meaning": "mean of patch_tokens"})
        return out

    @property
    def output_names(self) -> list[str]:
        return ["cls", "patch_tokens"] + (["pooled"] if self.pooled else [])

    def forward(self, images: torch.Tensor):
        f = backbone_features(self.backbone, images.to(self.dtype))
        outs = [f.cls.float(), f.patch.float()]
        if self.pooled:
            outs.append(f.patch.float().mean(dim=1))
        return tuple(outs)


@dataclass
class OnnxExportOptions:
    precision: str = "fp32"
    batch: tuple[int, int, int] = (1, 8, 64)  # min, opt, max
    imgsz: tuple[int, int] = (224, 224)
    dynamic_hw: bool = False
    pooled: bool = True
    opset: int = 18  # >= 17 keeps LayerNormalization one op
    simplify: bool = True


def export_onnx(model: nn.Module, out: Path, opts: OnnxExportOptions) -> dict:
    """Export ``model`` to ``out`` atomically; returns facts for the sidecar."""
    if opts.opset < 17:
        raise InvalidRequest(f"opset {opts.opset} < 17 would split LayerNorm into primitive ops; use >= 17")
    h, w = opts.imgsz
    example = tuple(torch.randn(2, 3, h, w) for _ in model.input_names)
    batch = torch.export.Dim("batch", min=1, max=max(opts.batch[2], 2))
    dyn = {0: batch}
    if opts.dynamic_hw:
        p = model.backbone.patch_embed.patch_size
        dyn.update({2: torch.export.Dim("height", min=p[0], max=4096) , 3: torch.export.Dim("width", min=p[1], max=4096)})
    t0 = time.perf_counter()
    model = model.eval()

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(
                model, example, dynamo=True, input_names=list(model.input_names), output_names=model.output_names,
                dynamic_shapes=tuple(dyn for _ in model.input_names), opset_version=opts.opset, external_data=False,
                verbose=False,
            )
        proto = prog.model_proto
        _name_dims(proto, opts.dynamic_hw)
        simplified = None
        if opts.simplify:
            proto, simplified = slim_onnx(proto)
        check_onnx(proto)
        onnx.save(proto, str(tmp))
        facts["simplified_with"] = simplified

    facts: dict = {}
    with torch.no_grad():
        atomic_write_with(out, write)
    facts.update({"opset": opts.opset, "export_seconds": round(time.perf_counter() - t0, 2), "exporter": f"torch.onnx (dynamo) {torch.__version__}"})
    return facts


def _name_dims(proto: onnx.ModelProto, dynamic_hw: bool) -> None:
    """Give dynamic dimensions stable names: ``batch`` (and ``height``/``width``)."""
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
        if vi.name.startswith("images") and dynamic_hw:
            dims[2].dim_param, dims[3].dim_param = "height", "width"
        if vi.name == "patch_tokens" and dynamic_hw and not dims[1].HasField("dim_value"):
            dims[1].dim_param = "num_patches"


def slim_onnx(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Simplify with onnxslim when installed (constant folding, dead-node removal); else unchanged."""
    try:
        import onnxslim
    except ImportError:
        return proto, None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(proto)
        return slim, f"onnxslim {getattr(onnxslim, '__version__', '?')}"
    except Exception as e:  # a simplifier bug must not block export: keep the checked original
        log.warning("onnxslim failed (%s); keeping the unsimplified graph", e)
        return proto, None


def check_onnx(proto: onnx.ModelProto) -> None:
    """Full ``onnx.checker`` check and strict shape inference; raises ``ValueError`` naming the problem."""
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise InvalidRequest(f"exported ONNX graph failed validation: {e}") from e


def torch_reference(model: nn.Module, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a wrapped export model in PyTorch on float32 NCHW batches, by input name."""
    with torch.no_grad():
        outs = model(*(torch.from_numpy(feeds[n]) for n in model.input_names))
    return {n: o.numpy() for n, o in zip(model.output_names, outs)}
