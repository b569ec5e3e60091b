"""``depth``: metric depth from one image (BN + linear over [patch token, CLS] to depth bins).

Data: generated 3-D scenes, or an NYU-Depth-v2-style folder (``rgb/`` + ``depth/``, PNG millimetres
or ``.npy`` metres; zero/NaN depth is masked). Loss: scale-invariant log. Metrics: RMSE, AbsRel,
delta < 1.25, against predicting the training set's mean depth everywhere.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from wherevit.train.backbone import BackboneFeatures
from wherevit.train.data.scenes3d import SceneSet, render_pair
from wherevit.train.downstream.datasets import load_depth_folder
from wherevit.train.downstream.heads import DepthBinsHead, silog_loss
from wherevit.train.downstream.metrics import depth_metrics
from wherevit.train.downstream.tasks.base import Column, HeadSplit, HeadTask, predict_dense, register_head_task

__all__ = ["DepthTask"]


@register_head_task
class DepthTask(HeadTask):
    name = "depth"
    summary = "metric depth per pixel (m), from one image"
    data_help = "rgb/ + depth/ (NYU style: PNG millimetres or .npy metres)"
    columns = {"depth_rmse": Column("rmse", "depth RMSE (m)", False), "depth_abs_rel": Column("abs_rel", "depth AbsRel", False)}
    parity_metric = Column("rmse", "depth RMSE (m)", False)

    def synthetic_split(self, n: int, size: int, seed: int, cache_dir: str | None) -> HeadSplit:
        v = SceneSet(n, size, seed, cache_dir).views()
        return HeadSplit((v["rgb"],), {"depth": v["depth"].astype(np.float32)})

    def read_folder(self, root: str | os.PathLike, size: int) -> HeadSplit:
        d = load_depth_folder(root, size)
        return HeadSplit((d.rgb,), {"depth": d.depth.astype(np.float32)})

    def build_head(self, embed_dim: int) -> nn.Module:
        return DepthBinsHead(embed_dim)

    def loss(self, head: nn.Module, feats: Sequence[BackboneFeatures], targets: Mapping[str, torch.Tensor], hw) -> torch.Tensor:
        return silog_loss(head(feats[0], hw), targets["depth"])

    def evaluate(self, head: nn.Module, feats: Sequence[BackboneFeatures], train, test, hw) -> dict:
        gt, tr = test["depth"].numpy(), train["depth"].numpy()
        metrics = depth_metrics(predict_dense(head, feats[0], hw).numpy(), gt)
        metrics["baseline"] = depth_metrics(np.full_like(gt, tr[tr > 0].mean()), gt)
        return metrics

    def output_specs(self) -> list[dict]:
        return [{"name": "depth", "dtype": "float32", "shape": [-1, -1, -1], "meaning": "metric depth (m) at input resolution"}]

    def graph_outputs(self, head: nn.Module, feats: Sequence[BackboneFeatures], hw) -> tuple[torch.Tensor, ...]:
        return (head(feats[0], hw),)

    def parity_scenes(self, count: int, size: int, seed: int) -> tuple[dict[str, list[np.ndarray]], Any]:
        pairs = [render_pair(seed + i, size) for i in range(count)]
        return {"images": [p["a"]["rgb"] for p in pairs]}, np.stack([p["a"]["depth"] for p in pairs])

    def parity_score(self, outputs: Mapping[str, np.ndarray], truth: Any) -> float:
        pred = outputs["depth"]
        gt = np.stack([cv2.resize(d, pred.shape[:0:-1], interpolation=cv2.INTER_NEAREST) for d in truth])  # at the output size
        return float(depth_metrics(pred, gt)["rmse"])

    def summary_line(self, m: Mapping[str, Any]) -> str:
        b = m["baseline"]
        return (f"depth  RMSE {m['rmse']:.3f} m  AbsRel {m['abs_rel']:.3f}  delta<1.25 {m['delta1']:.3f}   "
                f"(mean-depth baseline: RMSE {b['rmse']:.3f}, AbsRel {b['abs_rel']:.3f}, delta {b['delta1']:.3f})")
