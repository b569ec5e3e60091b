"""``seg``: semantic segmentation from one image (BN + 1x1 linear on patch tokens, bilinear upsampling).

Data: generated 3-D scenes (their classes), or an ADE20K-style folder (``images/`` + ``annotations/``
class-index PNGs; 255 = ignore; ``--n-classes`` required, ``--reduce-zero-label`` for ADE's convention).
Loss: cross-entropy. Metric: mIoU, against predicting the most frequent training class everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wherevit.base.sidecar import HeadSection
from wherevit.train.backbone import BackboneFeatures
from wherevit.train.data.scenes3d import CLASSES, SceneSet, render_pair
from wherevit.train.downstream.datasets import DatasetError, load_seg_folder
from wherevit.train.downstream.heads import LinearSegHead
from wherevit.train.downstream.metrics import IGNORE_INDEX, confusion_matrix, mean_iou
from wherevit.train.downstream.tasks.base import Column, HeadSplit, HeadTask, predict_dense, register_head_task

__all__ = ["SegTask", "SegConfig"]


@dataclass
class SegConfig:
    n_classes: Optional[int] = None  # None: the generated scenes' classes (a folder must say)
    reduce_zero_label: bool = False  # ADE20K: label 0 is ignored, k -> k-1
    class_names: Optional[list[str]] = None  # None: the scenes' names, or "0", "1", ...

    def validate(self) -> None:
        if self.n_classes is not None and self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")


@register_head_task
class SegTask(HeadTask):
    name = "seg"
    summary = "semantic classes per pixel, from one image"
    data_help = "images/ + annotations/ (ADE20K style: class-index PNGs, 255 = ignore; needs --n-classes)"
    columns = {"seg_miou": Column("miou", "seg mIoU", True)}
    parity_metric = Column("miou", "segmentation mIoU", True)
    Config = SegConfig

    @classmethod
    def from_record(cls, record: HeadSection) -> "SegTask":
        return cls(SegConfig(n_classes=int(record.n_classes or len(record.classes or ())), class_names=record.classes))

    @property
    def n_classes(self) -> int:
        return self.cfg.n_classes or len(CLASSES)

    @property
    def class_names(self) -> list[str]:
        if self.cfg.class_names:
            return list(self.cfg.class_names)
        return list(CLASSES) if self.n_classes == len(CLASSES) else [str(i) for i in range(self.n_classes)]

    def check_data(self, data: str) -> None:
        if data != "synthetic" and self.cfg.n_classes is None:
            raise DatasetError("--n-classes is required for a segmentation folder")

    def synthetic_split(self, n: int, size: int, seed: int, cache_dir: str | None) -> HeadSplit:
        v = SceneSet(n, size, seed, cache_dir).views(("rgb", "labels"))
        return HeadSplit((v["rgb"],), {"labels": v["labels"].astype(np.uint8).astype(np.int64)})

    def read_folder(self, root: str | os.PathLike, size: int) -> HeadSplit:
        d = load_seg_folder(root, size, self.n_classes, self.cfg.reduce_zero_label)
        return HeadSplit((d.rgb,), {"labels": d.labels.astype(np.int64)})

    def build_head(self, embed_dim: int) -> nn.Module:
        return LinearSegHead(embed_dim, self.n_classes)

    def loss(self, head: nn.Module, feats: Sequence[BackboneFeatures], targets: Mapping[str, torch.Tensor], hw) -> torch.Tensor:
        return F.cross_entropy(head(feats[0], hw), targets["labels"], ignore_index=IGNORE_INDEX)

    def evaluate(self, head: nn.Module, feats: Sequence[BackboneFeatures], train, test, hw) -> dict:
        gt, tr = test["labels"].numpy(), train["labels"].numpy().reshape(-1)
        metrics = mean_iou(confusion_matrix(predict_dense(head, feats[0], hw).argmax(1).numpy(), gt, self.n_classes))
        majority = np.bincount(tr[tr != IGNORE_INDEX], minlength=self.n_classes).argmax()
        metrics["baseline"] = mean_iou(confusion_matrix(np.full_like(gt, majority), gt, self.n_classes))
        metrics["classes"] = self.class_names
        return metrics

    def output_specs(self) -> list[dict]:
        names = self.class_names
        return [{"name": "logits", "dtype": "float32", "shape": [-1, len(names), -1, -1], "classes": names,
                 "meaning": "per-pixel class logits at input resolution"},
                {"name": "labels", "dtype": "int64", "shape": [-1, -1, -1], "classes": names, "meaning": "per-pixel argmax class"}]

    def graph_outputs(self, head: nn.Module, feats: Sequence[BackboneFeatures], hw) -> tuple[torch.Tensor, ...]:
        logits = head(feats[0], hw)
        return logits, logits.argmax(1)

    def parity_scenes(self, count: int, size: int, seed: int) -> tuple[dict[str, list[np.ndarray]], Any]:
        pairs = [render_pair(seed + i, size) for i in range(count)]
        return {"images": [p["a"]["rgb"] for p in pairs]}, np.stack([p["a"]["labels"] for p in pairs]).astype(np.uint8)

    def parity_score(self, outputs: Mapping[str, np.ndarray], truth: Any) -> float:
        logits = outputs["logits"]
        gt = np.stack([cv2.resize(t, logits.shape[:1:-1], interpolation=cv2.INTER_NEAREST) for t in truth])
        return float(mean_iou(confusion_matrix(logits.argmax(1), gt, logits.shape[1]))["miou"])

    def summary_line(self, m: Mapping[str, Any]) -> str:
        return f"seg    mIoU {m['miou']:.3f}  pixel acc {m['pixel_acc']:.3f}   (majority-class baseline: mIoU {m['baseline']['miou']:.3f})"
