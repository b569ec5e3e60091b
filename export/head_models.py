"""Backbone + trained head as one exportable graph (depth map, segmentation, relative pose).

Same conventions as ``FeatureModel``: float32 NCHW images in (normalised per the sidecar), named
float32 outputs; precision applies to the backbone, heads run in float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from wherevit.export.onnx_export import FeatureModel
from wherevit.train.backbone import BackboneFeatures, backbone_features
from wherevit.train.checkpoint import CheckpointError
from wherevit.train.downstream.heads import DepthBinsHead, LinearSegHead, RelPoseHead

__all__ = ["HeadModel", "load_head"]


def load_head(path: str | Path) -> tuple[nn.Module, dict]:
    """A head saved by ``wherevit train-head`` (safetensors with its task in the metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"head file not found: {path}")
    with safe_open(str(path), "pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("wherevit", "{}"))
    if meta.get("format") != "wherevit.head/1":
        raise CheckpointError(f"{path}: not a wherevit head (train one with `wherevit train-head`)")
    task, dim = meta["task"], int(meta["embed_dim"])
    head = {"depth": lambda: DepthBinsHead(dim), "seg": lambda: LinearSegHead(dim, int(meta.get("n_classes", len(meta["classes"])))),
            "pose": lambda: RelPoseHead(dim)}[task]()
    try:
        head.load_state_dict(load_file(str(path)))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match a {task} head of width {dim}:\n{e}") from e
    return head.eval(), meta


class HeadModel(nn.Module):
    """images -> head outputs. depth: ``depth`` (B, H, W) metres; seg: ``logits`` (B, C, H, W) and
    ``labels`` (B, H, W); pose: inputs ``images_a``/``images_b`` -> ``rotation`` (B, 3, 3), ``translation`` (B, 3)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, meta: dict, precision: str = "fp32"):
        super().__init__()
        self.features = FeatureModel(backbone, precision, pooled=False)
        self.head, self.task, self.meta = head.float(), meta["task"], meta
        self.input_names = ["images_a", "images_b"] if self.task == "pose" else ["images"]
        self.output_names = {"depth": ["depth"], "seg": ["logits", "labels"], "pose": ["rotation", "translation"]}[self.task]

    def _feats(self, x: torch.Tensor) -> BackboneFeatures:
        f = backbone_features(self.features.backbone, x.to(self.features.dtype))
        return BackboneFeatures(f.cls.float(), f.patch.float(), f.grid)

    def forward(self, images: torch.Tensor, images_b: torch.Tensor | None = None):
        if self.task == "pose":
            R, t = self.head(self._feats(images), self._feats(images_b))
            return R, t
        hw = tuple(images.shape[-2:])
        out = self.head(self._feats(images), hw)
        if self.task == "depth":
            return (out,)
        return out, out.argmax(1)

    def output_meta(self, dim: int, grid) -> list[dict]:
        if self.task == "depth":
            return [{"name": "depth", "dtype": "float32", "shape": [-1, -1, -1], "meaning": "metric depth (m) at input resolution"}]
        if self.task == "seg":
            c = len(self.meta["classes"])
            return [{"name": "logits", "dtype": "float32", "shape": [-1, c, -1, -1], "classes": self.meta["classes"],
                     "meaning": "per-pixel class logits at input resolution"},
                    {"name": "labels", "dtype": "int64", "shape": [-1, -1, -1], "classes": self.meta["classes"],
                     "meaning": "per-pixel argmax class"}]
        return [{"name": "rotation", "dtype": "float32", "shape": [-1, 3, 3], "meaning": "rotation of camera b in camera a's frame"},
                {"name": "translation", "dtype": "float32", "shape": [-1, 3],
                 "meaning": "translation of camera b in camera a's frame (training-data units)"}]
