"""``pose``: the relative pose of two views ([CLS, mean patch] of each -> MLP -> 6-D rotation + translation).

Data: generated 3-D scene pairs, or a ScanNet-style folder (``color/`` + ``pose/`` 4x4 camera-to-world;
frames i and i + 10 form a pair). Loss: geodesic + L1. Metrics: median rotation and
translation-direction errors, accuracy at 15/30 degrees, against predicting the mean training pose.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wherevit.train.backbone import BackboneFeatures
from wherevit.train.data.scenes3d import SceneSet, render_pair
from wherevit.train.downstream.datasets import load_pose_folder
from wherevit.train.downstream.heads import RelPoseHead, geodesic_loss
from wherevit.train.downstream.metrics import pose_metrics
from wherevit.train.downstream.tasks.base import Column, HeadSplit, HeadTask, register_head_task

__all__ = ["PoseTask"]


@register_head_task
class PoseTask(HeadTask):
    name = "pose"
    summary = "rotation and translation of view b in view a's frame, from two images"
    data_help = "color/ + pose/ (ScanNet style: 4x4 camera-to-world per frame)"
    input_names = ("images_a", "images_b")
    columns = {"pose_rot_err_deg": Column("rot_err_median_deg", "pose rot. err (deg)", False),
               "pose_trans_dir_err_deg": Column("trans_dir_err_median_deg", "pose transl. dir. err (deg)", False)}
    parity_metric = Column("rot_err_median_deg", "pose rotation error, median (deg)", False)

    def synthetic_split(self, n: int, size: int, seed: int, cache_dir: str | None) -> HeadSplit:
        d = SceneSet(n, size, seed, cache_dir).data
        return HeadSplit((d["a_rgb"], d["b_rgb"]), {"T_ab": d["T_ab"].astype(np.float32)})

    def read_folder(self, root: str | os.PathLike, size: int) -> HeadSplit:
        p = load_pose_folder(root, size)
        return HeadSplit((p.rgb_a, p.rgb_b), {"T_ab": p.T_ab.astype(np.float32)})

    def build_head(self, embed_dim: int) -> nn.Module:
        return RelPoseHead(embed_dim)

    def loss(self, head: nn.Module, feats: Sequence[BackboneFeatures], targets: Mapping[str, torch.Tensor], hw) -> torch.Tensor:
        R, t = head(feats[0], feats[1])
        Tg = targets["T_ab"]
        return geodesic_loss(R, Tg[:, :3, :3]) + F.l1_loss(t, Tg[:, :3, 3])

    def evaluate(self, head: nn.Module, feats: Sequence[BackboneFeatures], train, test, hw) -> dict:
        R, t = head(feats[0], feats[1])
        Tg, Ttr = test["T_ab"].numpy(), train["T_ab"].numpy()
        metrics = pose_metrics(R.numpy(), t.numpy(), Tg[:, :3, :3], Tg[:, :3, 3])
        U, _, Vt = np.linalg.svd(Ttr[:, :3, :3].mean(0))  # chordal mean rotation
        R_mean = np.broadcast_to(U @ Vt, Tg[:, :3, :3].shape)
        t_mean = np.broadcast_to(Ttr[:, :3, 3].mean(0), Tg[:, :3, 3].shape)
        metrics["baseline"] = pose_metrics(R_mean, t_mean, Tg[:, :3, :3], Tg[:, :3, 3])
        return metrics

    def output_specs(self) -> list[dict]:
        return [{"name": "rotation", "dtype": "float32", "shape": [-1, 3, 3], "meaning": "rotation of camera b in camera a's frame"},
                {"name": "translation", "dtype": "float32", "shape": [-1, 3],
                 "meaning": "translation of camera b in camera a's frame (training-data units)"}]

    def graph_outputs(self, head: nn.Module, feats: Sequence[BackboneFeatures], hw) -> tuple[torch.Tensor, ...]:
        R, t = head(feats[0], feats[1])
        return R, t

    def parity_scenes(self, count: int, size: int, seed: int) -> tuple[dict[str, list[np.ndarray]], Any]:
        pairs = [render_pair(seed + i, size) for i in range(count)]
        images = {"images_a": [p["a"]["rgb"] for p in pairs], "images_b": [p["b"]["rgb"] for p in pairs]}
        return images, np.stack([p["T_ab"] for p in pairs])

    def parity_score(self, outputs: Mapping[str, np.ndarray], truth: Any) -> float:
        return float(pose_metrics(outputs["rotation"], outputs["translation"], truth[:, :3, :3], truth[:, :3, 3])["rot_err_median_deg"])

    def summary_line(self, m: Mapping[str, Any]) -> str:
        b = m["baseline"]
        return (f"pose   rotation err median {m['rot_err_median_deg']:.2f} deg  translation-direction err median "
                f"{m['trans_dir_err_median_deg']:.2f} deg  acc@15 {m['acc_15deg']:.3f}  acc@30 {m['acc_30deg']:.3f}   "
                f"(mean-pose baseline: {b['rot_err_median_deg']:.2f} / {b['trans_dir_err_median_deg']:.2f} deg)")
