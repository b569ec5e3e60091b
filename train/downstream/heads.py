"""Heads that read frozen backbone features (``BackboneFeatures``) and predict dense or pair outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wherevit.train.backbone import BackboneFeatures
from wherevit.train.heads import mlp

__all__ = ["DepthBinsHead", "LinearSegHead", "RelPoseHead", "rotation_6d_to_matrix", "silog_loss", "geodesic_loss"]


def _grid(f: BackboneFeatures) -> torch.Tensor:
    """(B, N, D) patch tokens -> (B, D, gh, gw)."""
    B, N, D = f.patch.shape
    return f.patch.transpose(1, 2).reshape(B, D, *f.grid)


class DepthBinsHead(nn.Module):
    """BN + linear over [patch token, CLS] to depth-bin logits, upsampled; depth = softmax-weighted bin centres."""

    def __init__(self, embed_dim: int, n_bins: int = 64, min_depth: float = 0.1, max_depth: float = 12.0):
        super().__init__()
        self.norm = nn.BatchNorm2d(2 * embed_dim)
        self.proj = nn.Conv2d(2 * embed_dim, n_bins, 1)
        self.register_buffer("centres", torch.linspace(min_depth, max_depth, n_bins))

    def forward(self, f: BackboneFeatures, out_hw: tuple[int, int]) -> torch.Tensor:
        g = _grid(f)
        x = torch.cat([g, f.cls[:, :, None, None].expand_as(g)], 1)
        logits = F.interpolate(self.proj(self.norm(x)), size=out_hw, mode="bilinear", align_corners=False)
        return (logits.softmax(1) * self.centres[None, :, None, None]).sum(1)  # (B, H, W) metres


class LinearSegHead(nn.Module):
    """BN + 1x1 linear on patch tokens, bilinear upsampling to the input size."""

    def __init__(self, embed_dim: int, n_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(embed_dim)
        self.proj = nn.Conv2d(embed_dim, n_classes, 1)

    def forward(self, f: BackboneFeatures, out_hw: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.proj(self.norm(_grid(f))), size=out_hw, mode="bilinear", align_corners=False)


def rotation_6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """Zhou et al. 2019: two 3-vectors -> rotation matrix by Gram-Schmidt (columns)."""
    a, b = x[..., :3], x[..., 3:6]
    c1 = F.normalize(a, dim=-1)
    c2 = F.normalize(b - (c1 * b).sum(-1, keepdim=True) * c1, dim=-1)
    c3 = torch.cross(c1, c2, dim=-1)
    return torch.stack([c1, c2, c3], -1)


class RelPoseHead(nn.Module):
    """Features of two views -> MLP -> 6-D rotation + translation of view b in view a's frame."""

    def __init__(self, embed_dim: int, hidden: int = 256):
        super().__init__()
        self.mlp = mlp(3 * 2 * embed_dim, hidden, 9, 3)

    @staticmethod
    def embed(f: BackboneFeatures) -> torch.Tensor:
        return torch.cat([f.cls, f.pooled("mean")], -1)

    def forward(self, fa: BackboneFeatures, fb: BackboneFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        za, zb = self.embed(fa), self.embed(fb)
        out = self.mlp(torch.cat([za, zb, za - zb], -1))
        return rotation_6d_to_matrix(out[..., :6]), out[..., 6:]


def silog_loss(pred: torch.Tensor, gt: torch.Tensor, lam: float = 0.85) -> torch.Tensor:
    """Scale-invariant log loss over valid pixels (gt > 0)."""
    valid = gt > 0
    g = torch.log(pred[valid].clamp_min(1e-3)) - torch.log(gt[valid])
    return torch.sqrt((g**2).mean() - lam * g.mean() ** 2 + 1e-8)


def geodesic_loss(R_pred: torch.Tensor, R_gt: torch.Tensor) -> torch.Tensor:
    cos = ((R_pred.transpose(-1, -2) @ R_gt).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6)).mean()
