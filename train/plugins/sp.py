"""SP -- Spatial Prediction: regress the relative position and scale of two disentangled local views.

From "Learning to Perceive Where" (abstract); the formulation is ours (docs/METHODS.md, SP section).
For boxes a, b in original-image coordinates, normalised (cx, cy, w, h):

    dx = (cx_b - cx_a) / w_a,  dy = (cy_b - cy_a) / h_a,  ds_w = log(w_b / w_a),  ds_h = log(h_b / h_a)

("crop" normalisation; "image" normalisation uses dx = cx_b - cx_a, dy = cy_b - cy_a). Each view
is embedded on its own with the standard, crop-agnostic position embedding (with the positional
field on, the field sampled over the full frame: the host's rule for plug-in groups), so the target
cannot be read off the input; flips are disabled for the pair because a mirrored crop would contradict
dx. An MLP over [z_a, z_b, z_a - z_b] predicts the 4 numbers; smooth-L1 (or MSE) loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from wherevit.train.backbone import BackboneFeatures
from wherevit.train.data.dataset import stack_views
from wherevit.train.data.geometry import sample_disentangled_pair, sp_inverse, sp_target
from wherevit.train.data.views import ViewSpec, make_view
from wherevit.train.heads import mlp
from wherevit.train.plugins.base import Plugin, PluginConfig, StepContext, register_plugin

__all__ = ["SPConfig", "SpatialPrediction", "sp_target", "sp_inverse", "sample_disentangled_pair"]


@dataclass
class SPConfig(PluginConfig):
    weight: float = 0.5
    crop_size: int = 96
    scale: tuple[float, float] = (0.05, 0.32)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    max_iou: float = 0.1  # "disentangled": pairs overlapping more than this are resampled
    max_tries: int = 50
    normalize: Literal["crop", "image"] = "crop"
    embedding: Literal["cls", "mean"] = "cls"
    hidden_dim: int = 2048
    n_layers: int = 3
    loss: Literal["smooth_l1", "mse"] = "smooth_l1"
    beta: float = 1.0  # smooth-L1 transition point
    n_pairs: int = 1

    def validate(self) -> None:
        if self.weight < 0:
            raise ValueError("weight must be >= 0")
        if not 0 <= self.max_iou < 1:
            raise ValueError(f"max_iou must be in [0, 1), got {self.max_iou}")
        if self.n_layers < 1 or self.n_pairs < 1:
            raise ValueError("n_layers and n_pairs must be >= 1")


class SPViewSampler:
    """Data-side half of SP (picklable for data-loader workers): ``n_pairs`` unflipped view pairs."""

    def __init__(self, cfg: SPConfig, color_jitter_p: float = 0.8, grayscale_p: float = 0.2):
        self.cfg = cfg
        self.spec = ViewSpec(size=cfg.crop_size, scale=cfg.scale, ratio=cfg.ratio, flip_p=0.0,
                             color_jitter_p=color_jitter_p, grayscale_p=grayscale_p)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> dict:
        views = []
        for _ in range(self.cfg.n_pairs):
            a, b = sample_disentangled_pair(rng, img.shape[:2], self.cfg)
            views.append(make_view(img, self.spec, rng, box=a))
            views.append(make_view(img, self.spec, rng, box=b))
        return {"sp": stack_views(views)}  # order: a0, b0, a1, b1, ...


@register_plugin
class SpatialPrediction(Plugin):
    name = "sp"
    Config = SPConfig
    student_views = ("sp",)

    def __init__(self, cfg: SPConfig, embed_dim: int):
        super().__init__(cfg, embed_dim)
        self.head = mlp(3 * embed_dim, cfg.hidden_dim, 4, cfg.n_layers)

    def view_sampler(self) -> SPViewSampler:
        # the configured colour augmentation (no geometry: the pair's boxes are the target)
        c = self.host.crops if self.host is not None else None
        if c is None:
            return SPViewSampler(self.cfg)
        return SPViewSampler(self.cfg, color_jitter_p=c.color_jitter_p, grayscale_p=c.grayscale_p)

    def predict(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([z_a, z_b, z_a - z_b], dim=-1))

    def forward(self, student: Mapping[str, BackboneFeatures], teacher: Mapping[str, BackboneFeatures],
                batch: Mapping[str, Any], ctx: StepContext | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feats = student["sp"]  # view-major: (2 * n_pairs * B, ...) in order a0, b0, a1, b1, ...
        boxes = batch["sp"]["boxes"]  # (B, 2 * n_pairs, 4)
        B = boxes.shape[0]
        z = feats.pooled(self.cfg.embedding).float().reshape(2 * self.cfg.n_pairs, B, -1)
        z_a, z_b = z[0::2].reshape(-1, z.shape[-1]), z[1::2].reshape(-1, z.shape[-1])
        bx = boxes.transpose(0, 1).double()  # (2P, B, 4)
        target = sp_target(bx[0::2], bx[1::2], self.cfg.normalize).reshape(-1, 4).float()
        pred = self.predict(z_a, z_b)
        if self.cfg.loss == "smooth_l1":
            loss = F.smooth_l1_loss(pred, target, beta=self.cfg.beta)
        else:
            loss = F.mse_loss(pred, target)
        with torch.no_grad():
            mae = (pred - target).abs().mean(0)
        return loss, {"sp/mae_dx": mae[0], "sp/mae_dy": mae[1], "sp/mae_ds": mae[2:].mean()}
