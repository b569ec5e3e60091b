"""Backbone + trained head as one exportable graph, for any registered head task (depth, seg, pose, ...).

Same conventions as ``FeatureModel``: float32 NCHW images in (normalised per the sidecar), named
outputs; precision applies to the backbone, heads run in float32. The task (``train/downstream/tasks``)
says the graph's inputs, its outputs and how the head makes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from wherevit.base.config import ConfigError, from_dict
from wherevit.base.sidecar import HeadSection
from wherevit.export.onnx_export import FeatureModel
from wherevit.train.backbone import BackboneFeatures, backbone_features
from wherevit.train.checkpoint import CheckpointError
from wherevit.train.downstream.tasks import HEAD_FORMAT, task_from_record

__all__ = ["HeadModel", "load_head"]


def load_head(path: str | Path) -> tuple[nn.Module, HeadSection]:
    """A head saved by ``wherevit train-head`` (safetensors with its task's record in the metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"head file not found: {path}")
    with safe_open(str(path), "pt") as fh:
        raw = json.loads((fh.metadata() or {}).get("wherevit", "{}"))
    if raw.get("format") != HEAD_FORMAT:
        raise CheckpointError(f"{path}: not a wherevit head (train one with `wherevit train-head`)")
    try:
        record = from_dict(HeadSection, raw, _path=f"{path.name} metadata")
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    head = task_from_record(record).build_head(record.embed_dim)
    try:
        head.load_state_dict(load_file(str(path)))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match a {record.task} head of width {record.embed_dim}:\n{e}") from e
    return head.eval(), record


class HeadModel(nn.Module):
    """images -> the task's outputs (``task.output_specs``): one image input (``images``) or two (``images_a``, ``images_b``)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, record: HeadSection, precision: str = "fp32"):
        super().__init__()
        self.features = FeatureModel(backbone, precision, pooled=False)
        self.head, self.record = head.float(), record
        self.task = task_from_record(record)
        if not 1 <= len(self.task.input_names) <= 2:
            raise CheckpointError(f"head task {self.task.name!r} has inputs {self.task.input_names}; export takes one or two")
        self.input_names = list(self.task.input_names)
        self.output_names = self.task.output_names

    def _feats(self, x: torch.Tensor) -> BackboneFeatures:
        f = backbone_features(self.features.backbone, x.to(self.features.dtype))
        return BackboneFeatures(f.cls.float(), f.patch.float(), f.grid)

    # explicit arguments (not *images): torch.export takes one dynamic-shape spec per positional input
    def forward(self, images: torch.Tensor, images_b: torch.Tensor | None = None):
        inputs = (images,) if images_b is None else (images, images_b)
        return tuple(self.task.graph_outputs(self.head, [self._feats(x) for x in inputs], tuple(images.shape[-2:])))

    def output_meta(self, dim: int, grid) -> list[dict]:
        return self.task.output_specs()
