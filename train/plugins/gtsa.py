"""GTSA -- geometric transformation sensitive architecture (arXiv 2304.08014), as a plug-in.

Followed from the source (bok3948/GTSA: ``util/gtsa_transforms.py`` ``GTSATransforms``,
``model_pretrain/gtsa.py``, ``engine_pretrain.py``, ``main_pretrain.py`` defaults):

* views: its own group of 2 global (224, scale 0.3-1) and N local (96, scale 0.1-0.3) crops.
  Every crop after the first is redrawn until its intersection with each earlier *global* crop
  exceeds ``min_intersection`` (1%) of the image area, twice that between the two globals. No
  flips; colour jitter p 0.8, grayscale 0.2, blur 0.2 (our photometric pipeline's strengths);
  each view is then turned k x 90 degrees counter-clockwise, k uniform in {0, 1, 2, 3}.
* conv projector (2 x [3x3 conv, channel LayerNorm without affine, GELU, residual when the
  widths match], then 1x1 to ``out_dim``) on student and EMA teacher patch grids; a predictor
  (3x3 conv, LN, GELU, 1x1) on the student only. The teacher embeds the 2 globals only.
* crop loss: for each teacher global t and student view v != t, RoIAlign (aligned=True) of both
  maps over the crops' intersection (10x10 when the student map has more than 100 tokens, else
  4x4), the teacher's RoI turned by (k_v - k_t) quarter turns, ``-cos`` per cell, mean.
* patch correspondence: each token's nearest token (cosine) in the other map, the best 98
  (global student) / 18 (local) matches kept, ``-cos``, ``0.5 * (s->t + t->s)``.
* rotation: mean patch token of the student backbone -> MLP (D -> 768 LN GELU -> 768 LN GELU ->
  128 LN -> 4), cross-entropy over all views.
* total: ``crop + pc_weight * pc + rot_weight * rotation`` with pc_weight 0 during the first
  ``pc_warmup`` of training (source: the first 11 of 100 epochs), 0.5 after; rot_weight 0.5.

Where we differ: the source's resampling loop is unbounded; ours gives up after ``max_tries`` and
says the image is too small. The source rotates the teacher RoI with ``kornia.rotate``; we use
``torch.rot90`` (exact for quarter turns). GTSA replaces DINO in the paper; here it is added with
``weight``. When the crop-aligned positional field is on, these views are embedded with the
crop-agnostic embedding (a rotated view's positions would reveal its rotation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wherevit.train.backbone import BackboneFeatures
from wherevit.train.data.dataset import stack_views
from wherevit.train.data.sources import DataError
from wherevit.train.data.views import ViewSpec, make_view, sample_box
from wherevit.train.plugins.base import HostSpec, Plugin, PluginConfig, PluginError, StepContext, register_plugin
from wherevit.train.plugins.roi import cxcywh_to_xyxy, intersect, region_in_view, roi_tokens

__all__ = [
    "GTSA", "GTSAConfig", "sample_gtsa_boxes", "GTSAViewSampler", "ConvProjector", "ConvPredictor", "rotation_head",
    "crop_rois", "crop_loss", "rot90_per_sample", "nearest_matches", "patch_correspondence_loss",
]


@dataclass
class GTSAConfig(PluginConfig):
    """Hyper-parameters of the GTSA plug-in (source defaults for ViT-S/16 at 224 px)."""

    weight: float = 1.0
    n_local: int = 8
    global_size: int = 224
    local_size: int = 96
    global_scale: tuple[float, float] = (0.3, 1.0)
    local_scale: tuple[float, float] = (0.1, 0.3)
    min_intersection: float = 0.01  # of the image area; doubled between the two globals
    max_tries: int = 200
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.2
    roi_size: tuple[int, int] = (10, 4)  # RoI cells when the student map has > roi_tokens tokens / otherwise
    roi_tokens: int = 100
    num_matches: tuple[int, int] = (98, 18)  # kept NN matches, same rule (clamped to the map size)
    projector_dim: int = 384
    out_dim: int = 768
    predictor_dim: int = 768
    rot_hidden: int = 768
    rot_bottleneck: int = 128
    crop_weight: float = 1.0
    pc_weight: float = 0.5
    pc_warmup: float = 0.11  # fraction of training before the patch-correspondence loss starts
    rot_weight: float = 0.5

    def validate(self) -> None:
        for key in ("weight", "crop_weight", "pc_weight", "rot_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {self.n_local}")
        if self.global_size < 1 or self.local_size < 1:
            raise ValueError("global_size and local_size must be >= 1")
        for key in ("global_scale", "local_scale"):
            lo, hi = getattr(self, key)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{key} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        if not 0 < self.min_intersection < 0.5:
            raise ValueError(f"min_intersection must be in (0, 0.5), got {self.min_intersection}")
        if self.max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {self.max_tries}")
        if min(self.roi_size) < 1 or min(self.num_matches) < 1:
            raise ValueError(f"roi_size and num_matches must be >= 1, got {self.roi_size}, {self.num_matches}")
        if not 0 <= self.pc_warmup <= 1:
            raise ValueError(f"pc_warmup must be a fraction of training in [0, 1], got {self.pc_warmup}")
        for key in ("projector_dim", "out_dim", "predictor_dim", "rot_hidden", "rot_bottleneck"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


def _inter_area(a: np.ndarray, b: np.ndarray) -> float:
    i = intersect(cxcywh_to_xyxy(a), cxcywh_to_xyxy(b))
    return float(max(0.0, i[2] - i[0]) * max(0.0, i[3] - i[1]))


def sample_gtsa_boxes(rng: np.random.Generator, img_hw: tuple[int, int], cfg: GTSAConfig) -> np.ndarray:
    """(2 + n_local, 4) crop boxes (cx, cy, w, h), globals first, obeying the overlap rule.

    Areas are compared in normalised units, i.e. as fractions of the image. Raises ``DataError``
    when ``max_tries`` draws cannot satisfy the rule (an image too small for these crops).
    """
    H, W = img_hw
    if min(H, W) < 2:
        raise DataError(f"gtsa: an image of {H}x{W} pixels is too small to cut overlapping crops from")
    boxes: list[np.ndarray] = []
    for i in range(2 + cfg.n_local):
        is_global = i < 2
        scale = cfg.global_scale if is_global else cfg.local_scale
        need = cfg.min_intersection * (2 if is_global else 1)
        for _ in range(cfg.max_tries):
            box = sample_box(rng, (H, W), scale, (3 / 4, 4 / 3))
            if all(_inter_area(box, g) > need for g in boxes[:2]):
                break
        else:
            raise DataError(
                f"gtsa: no {'global' if is_global else 'local'} crop of a {H}x{W} image overlapped the global crops by more "
                f"than {need:.0%} of the image in {cfg.max_tries} draws; the image is too small (whole-pixel crops) "
                f"for plugins.gtsa.{'global_scale' if is_global else 'local_scale'} / min_intersection")
        boxes.append(box)
    return np.stack(boxes)


class GTSAViewSampler:
    """Data-side half of GTSA (picklable): groups ``gtsa_global`` and ``gtsa_local`` with boxes,
    no flips, and ``rot`` (quarter turns, counter-clockwise) per view."""

    def __init__(self, cfg: GTSAConfig):
        self.cfg = cfg
        aug = dict(ratio=(3 / 4, 4 / 3), flip_p=0.0, color_jitter_p=cfg.color_jitter_p, grayscale_p=cfg.grayscale_p,
                   blur_p=cfg.blur_p)
        self.specs = (ViewSpec(cfg.global_size, cfg.global_scale, **aug), ViewSpec(cfg.local_size, cfg.local_scale, **aug))

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> dict:
        boxes = sample_gtsa_boxes(rng, img.shape[:2], self.cfg)
        groups: dict[str, list] = {"gtsa_global": [], "gtsa_local": []}
        rots: dict[str, list[int]] = {"gtsa_global": [], "gtsa_local": []}
        for i, box in enumerate(boxes):
            name = "gtsa_global" if i < 2 else "gtsa_local"
            chw, box, flip = make_view(img, self.specs[i >= 2], rng, box=box)
            k = int(rng.integers(0, 4))
            groups[name].append((np.ascontiguousarray(np.rot90(chw, k, axes=(1, 2))), box, flip))
            rots[name].append(k)
        out = {}
        for name, views in groups.items():
            if views:
                out[name] = {**stack_views(views), "rot": np.array(rots[name], np.int64)}
        return out


def _channel_ln(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over channels of a (B, C, H, W) map, without affine parameters."""
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2]).permute(0, 3, 1, 2)


class _ConvBlock(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(_channel_ln(self.conv(x)))


def _init_conv(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)


class ConvProjector(nn.Module):
    """2 x [3x3 conv -> channel LN -> GELU (+ residual when widths match)] -> 1x1 conv."""

    def __init__(self, in_dim: int, dim: int, out_dim: int, n_blocks: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList([_ConvBlock(in_dim if i == 0 else dim, dim) for i in range(n_blocks)])
        self.proj = nn.Conv2d(dim, out_dim, 1)
        self.apply(_init_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            y = blk(x)
            x = y + x if y.shape[1] == x.shape[1] else y
        return self.proj(x)


class ConvPredictor(nn.Module):
    """3x3 conv -> channel LN -> GELU -> 1x1 conv (no residual, as in the source)."""

    def __init__(self, in_dim: int, dim: int, out_dim: int):
        super().__init__()
        self.block = _ConvBlock(in_dim, dim)
        self.proj = nn.Conv2d(dim, out_dim, 1)
        self.apply(_init_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.block(x))


def rotation_head(in_dim: int, hidden: int = 768, bottleneck: int = 128) -> nn.Sequential:
    """GTSA's rotation predictor: 4 logits (0, 90, 180, 270 degrees counter-clockwise)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(),
        nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(),
        nn.Linear(hidden, bottleneck), nn.LayerNorm(bottleneck),
        nn.Linear(bottleneck, 4),
    )


def rot90_per_sample(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Turn each (C, H, W) map of ``x`` (B, C, H, W) by its own ``k[b]`` counter-clockwise quarter turns."""
    k = k.remainder(4).view(-1, 1, 1, 1)
    out = x
    for j in (1, 2, 3):
        out = torch.where(k == j, torch.rot90(x, j, dims=(-2, -1)), out)
    return out


def crop_rois(s_map: torch.Tensor, t_map: torch.Tensor, s_box: torch.Tensor, t_box: torch.Tensor,
              s_rot: torch.Tensor, t_rot: torch.Tensor, s_size: int, t_size: int, patch: int,
              out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RoIs over the intersection of a student view and a teacher view, the teacher's turned into
    the student's orientation: two (B, C, out, out) maps whose cells cover the same image region.

    Maps are (B, C, h, w) on each view's token grid; boxes (B, 4) are the crops (cx, cy, w, h);
    rots (B,) the views' quarter turns.
    """
    inter = intersect(cxcywh_to_xyxy(s_box), cxcywh_to_xyxy(t_box)).double()
    idx = torch.arange(s_box.shape[0], device=s_box.device)
    s_px = region_in_view(inter, s_box.double(), float(s_size), False, s_rot)
    t_px = region_in_view(inter, t_box.double(), float(t_size), False, t_rot)
    s_roi = roi_tokens(s_map, s_px, idx, patch, out)
    t_roi = roi_tokens(t_map, t_px, idx, patch, out)
    return s_roi, rot90_per_sample(t_roi, s_rot - t_rot)


def crop_loss(s_roi: torch.Tensor, t_roi: torch.Tensor) -> torch.Tensor:
    """``-cos`` per RoI cell between student and (detached) teacher RoIs, averaged."""
    return -(F.normalize(s_roi, dim=1) * F.normalize(t_roi.detach(), dim=1)).sum(1).mean()


def nearest_matches(a: torch.Tensor, b: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For tokens ``a`` (B, N, C) and candidates ``b`` (B, M, C): the ``k`` tokens of ``a`` whose
    nearest candidate (cosine) is closest, and those candidates: two (B, k, C) tensors."""
    an, bn = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    sim = torch.bmm(an, bn.transpose(1, 2))
    best, nn_idx = sim.max(dim=2)  # (B, N)
    k = min(k, a.shape[1])
    keep = best.topk(k, dim=1).indices  # (B, k)
    sel_a = torch.gather(a, 1, keep[..., None].expand(-1, -1, a.shape[2]))
    sel_b = torch.gather(b, 1, torch.gather(nn_idx, 1, keep)[..., None].expand(-1, -1, b.shape[2]))
    return sel_a, sel_b


def patch_correspondence_loss(s_map: torch.Tensor, t_map: torch.Tensor, k: int) -> torch.Tensor:
    """VICRegL-style matching, both ways: ``0.5 * (-cos(s, NN_t(s)) - cos(t, NN_s(t)))`` over the
    ``k`` best matches each way. Maps are (B, C, h, w); the teacher side is detached."""
    s = s_map.flatten(2).transpose(1, 2)
    t = t_map.detach().flatten(2).transpose(1, 2)
    a1, b1 = nearest_matches(s, t, k)
    a2, b2 = nearest_matches(t, s, k)
    return 0.5 * (-F.cosine_similarity(a1, b1, dim=-1).mean() - F.cosine_similarity(a2, b2, dim=-1).mean())


@register_plugin
class GTSA(Plugin):
    """Crop, patch-correspondence and rotation losses on GTSA's own rotated view groups."""

    name = "gtsa"
    Config = GTSAConfig
    student_views = ("gtsa_global", "gtsa_local")
    teacher_views = ("gtsa_global",)

    def __init__(self, cfg: GTSAConfig, embed_dim: int):
        super().__init__(cfg, embed_dim)
        if cfg.n_local == 0:
            self.student_views = ("gtsa_global",)
        self.projector = ConvProjector(embed_dim, cfg.projector_dim, cfg.out_dim)
        self.predictor = ConvPredictor(cfg.out_dim, cfg.predictor_dim, cfg.out_dim)
        self.rotation = rotation_head(embed_dim, cfg.rot_hidden, cfg.rot_bottleneck)
        self.add_ema_target("target_projector", self.projector)

    def setup(self, host: HostSpec) -> None:
        super().setup(host)
        for key in ("global_size", "local_size"):
            if getattr(self.cfg, key) % host.patch_size:
                raise PluginError(f"plugins.gtsa.{key} ({getattr(self.cfg, key)}) must be a multiple of the patch size "
                                  f"({host.patch_size})")

    def view_sampler(self) -> GTSAViewSampler:
        return GTSAViewSampler(self.cfg)

    def _views(self, student: Mapping[str, BackboneFeatures], batch: Mapping[str, Any]):
        """Per student view: (projected + predicted map, crop boxes (B, 4), rotations (B,), size)."""
        out = []
        for group, size in (("gtsa_global", self.cfg.global_size), ("gtsa_local", self.cfg.local_size)):
            if group not in self.student_views:
                continue
            f = student[group]
            maps = self.predictor(self.projector(f.patch_map()))
            grp = batch[group]
            V = grp["boxes"].shape[1]
            for v, m in enumerate(maps.chunk(V)):
                out.append((m, grp["boxes"][:, v], grp["rot"][:, v], size))
        return out

    def forward(self, student: Mapping[str, BackboneFeatures], teacher: Mapping[str, BackboneFeatures],
                batch: Mapping[str, Any], ctx: StepContext | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c, patch = self.cfg, self.host.patch_size
        views = self._views(student, batch)
        with torch.no_grad():
            t = teacher["gtsa_global"]
            t_maps = self.target_projector(t.patch_map()).chunk(2)
        crop, pc, n = 0.0, 0.0, 0
        for ti, t_map in enumerate(t_maps):
            t_box, t_rot = batch["gtsa_global"]["boxes"][:, ti], batch["gtsa_global"]["rot"][:, ti]
            for vi, (s_map, s_box, s_rot, s_size) in enumerate(views):
                if vi == ti:  # the student's own copy of the teacher's view
                    continue
                big = s_map.shape[-2] * s_map.shape[-1] > c.roi_tokens
                s_roi, t_roi = crop_rois(s_map, t_map, s_box, t_box, s_rot, t_rot, s_size, c.global_size, patch,
                                         c.roi_size[0] if big else c.roi_size[1])
                crop = crop + crop_loss(s_roi, t_roi)
                pc = pc + patch_correspondence_loss(s_map.float(), t_map.float(), c.num_matches[0] if big else c.num_matches[1])
                n += 1
        crop, pc = crop / n, pc / n
        # rotation from the mean patch token of every student view (the backbone's, not projected)
        logits, labels = [], []
        for group in self.student_views:
            f = student[group]
            logits.append(self.rotation(f.patch.mean(1)))
            labels.append(batch[group]["rot"].transpose(0, 1).reshape(-1))  # view-major like the features
        logits, labels = torch.cat(logits).float(), torch.cat(labels)
        rot = F.cross_entropy(logits, labels)
        progress = ctx.progress if ctx is not None else 1.0
        pc_w = c.pc_weight if progress >= c.pc_warmup else 0.0
        loss = c.crop_weight * crop + pc_w * pc + c.rot_weight * rot
        with torch.no_grad():
            acc = (logits.argmax(1) == labels).float().mean()
        return loss, {"gtsa/crop": crop.detach(), "gtsa/pc": pc.detach(), "gtsa/rot": rot.detach(), "gtsa/rot_acc": acc}
