"""SCRL -- spatially consistent representation learning (Roh et al., CVPR 2021), as a plug-in.

Followed from the source (kakaobrain/scrl: ``models/box_generator.py`` ``SCRLBoxGenerator``,
``models/backbone.py``, ``models/heads.py``, ``trainer/base.py``, ``config/scrl_200ep.yaml``):

* boxes: for each pair of global views, intersect their crops; skip the pair when the
  intersection is empty or not wider/taller than ``min_size`` pixels at the coarser view's scale.
  Otherwise draw exactly ``n_boxes`` (10) boxes in that coarse pixel frame: a random grid of
  ``div`` cells per axis (cells at least ``min_size``), a random cell, integer sides in
  [``min_size``, cell], up to ``max_tries`` (50) draws to get IoU below ``iou_threshold`` (0.5)
  with the earlier boxes of the pair, else the last draw is kept. Each box is mapped into both
  views (scale, offset, mirrored when the view is flipped) and clipped to the view.
* RoIAlign to ``pool_size`` x ``pool_size`` (1) of the feature map, then the BYOL projector
  Linear(D, 4096) -> BN -> ReLU -> Linear(4096, 256, bias=False) and a predictor of the same shape
  on the online side; the target side is the EMA backbone with an EMA projector.
* loss: ``2 - 2 cos(q, z)`` (l2-normalised), symmetrised as a sum of both directions, mean over
  boxes, so it lies in [0, 8].

Where we differ from the source, and why:

* the source draws boxes in the training loop from the global NumPy RNG; we draw them in the
  data workers from the per-sample generator (exact resume, 1 -> N ranks);
* the intersection's size in the coarse frame is floored, not rounded: a rounded-up frame can poke
  out of the intersection, and the clip would then unmatch a box pair;
* RoIAlign uses ``aligned=True`` (source: ``detectron_aligned: False``): on a ViT token grid the
  source's half-cell offset becomes a whole-token mismatch between a mirrored and an unmirrored
  view (the geometry test measures it);
* the target backbone is the DINO teacher, so the target projector follows the host's teacher
  momentum (source: its own target network, m = 0.97 -> 1 at batch 256);
* the feature map is the ViT's patch-token grid (the source's ResNet has a C5 map); SCRL replaces
  BYOL's loss, here it is added to DINO's with ``weight``;
* the boxes are drawn between two views (SCRL has exactly two). ``views: auto`` (default) uses the
  host's global views 0 and 1 -- SCRL's two views are its SSL views, as in the source; with iBOT on,
  the student side is the host's masked forward of those views, as for DINO. When the crop-aligned
  positional field is on (matched RoIs would carry identical positional embeddings, a shortcut to
  the answer: the composition rule in docs/METHODS.md) or another plug-in transforms the host's
  global views (EC's faithful mode: view 1's box no longer describes its content), ``auto`` draws
  SCRL's own pair ``scrl`` instead (the host's global-crop augmentation; crop-agnostic positions
  under the field; two more student and teacher forwards). ``host`` / ``own`` force either, and
  ``host`` is refused in those two cases;
* batch normalisation in the heads normalises over the boxes of the *global* batch (all ranks),
  so a run on N ranks computes what one process would; the per-box mean is also taken over the
  global number of valid boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wherevit.base.config import ConfigError
from wherevit.train.backbone import BackboneFeatures
from wherevit.train.data.dataset import stack_views
from wherevit.train.data.views import ViewSpec, make_view
from wherevit.train.plugins.base import HostSpec, Plugin, PluginConfig, PluginError, StepContext, register_plugin
from wherevit.train.plugins.roi import cxcywh_to_xyxy, roi_tokens

__all__ = ["SCRL", "SCRLBoxHook", "SCRLViewSampler", "SCRLConfig", "scrl_box_pairs", "box_iou_xyxy", "SCRLHead", "GlobalBatchNorm1d", "scrl_loss", "global_count"]


@dataclass
class SCRLConfig(PluginConfig):
    """Hyper-parameters of the SCRL plug-in (source defaults at 224 px; scale ``min_size`` with the
    crop size)."""

    weight: float = 1.0
    n_boxes: int = 10
    min_size: int = 32  # view pixels at the coarser view's scale
    iou_threshold: float = 0.5
    max_tries: int = 50
    grid_boxes: bool = True  # the source's grid-based generator (False: uniform boxes)
    pool_size: int = 1
    hidden_dim: int = 4096
    out_dim: int = 256
    views: Literal["auto", "host", "own"] = "auto"  # whose two views the boxes are drawn in (module doc)

    def validate(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")
        if self.n_boxes < 1:
            raise ValueError(f"n_boxes must be >= 1, got {self.n_boxes}")
        if self.min_size < 1:
            raise ValueError(f"min_size must be >= 1 pixel, got {self.min_size}")
        if not 0 < self.iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {self.max_tries}")
        if self.pool_size < 1 or self.hidden_dim < 1 or self.out_dim < 1:
            raise ValueError("pool_size, hidden_dim and out_dim must be >= 1")


def box_iou_xyxy(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two corner boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    if inter == 0:
        return 0.0
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _draw_box(rng: np.random.Generator, int_w: int, int_h: int, min_size: int, grid: bool) -> tuple[int, int, int, int]:
    """One box (x, y, w, h) in the coarse intersection frame (``int_w`` x ``int_h`` pixels)."""
    if grid:  # a random grid whose cells are at least min_size, a random cell, a box inside it
        div_w = int(rng.integers(1, int_w // min_size + 1))
        div_h = int(rng.integers(1, int_h // min_size + 1))
        cell_w, cell_h = int_w / div_w, int_h / div_h
        gx, gy = int(rng.integers(0, div_w)), int(rng.integers(0, div_h))
        w = int(rng.integers(min_size, math.floor(cell_w) + 1))
        h = int(rng.integers(min_size, math.floor(cell_h) + 1))
        x = int(rng.integers(0, math.floor(cell_w - w) + 1)) + int(gx * cell_w)
        y = int(rng.integers(0, math.floor(cell_h - h) + 1)) + int(gy * cell_h)
    else:
        w = int(rng.integers(min_size, int_w + 1))
        h = int(rng.integers(min_size, int_h + 1))
        x = int(rng.integers(0, int_w - w + 1))
        y = int(rng.integers(0, int_h - h + 1))
    return x, y, w, h


def scrl_box_pairs(box1: np.ndarray, flip1: bool, box2: np.ndarray, flip2: bool, size: int,
                   rng: np.random.Generator, n_boxes: int = 10, min_size: int = 32, iou_threshold: float = 0.5,
                   max_tries: int = 50, grid: bool = True) -> tuple[np.ndarray, np.ndarray, bool]:
    """Spatially matched boxes in two ``size`` x ``size`` views of one image.

    ``box1``/``box2`` are the views' crops (cx, cy, w, h, normalised original-image coordinates),
    ``flip1``/``flip2`` whether each was mirrored. Returns ``(boxes1, boxes2, valid)``: two
    (n_boxes, 4) float32 arrays of corner boxes in each view's pixels (row i of both covers the
    same region of the original image) and whether the pair has a usable intersection (if not,
    the boxes are zeros and the pair contributes nothing).
    """
    out1 = np.zeros((n_boxes, 4), np.float32)
    out2 = np.zeros((n_boxes, 4), np.float32)
    a, b = cxcywh_to_xyxy(np.asarray(box1, np.float64)), cxcywh_to_xyxy(np.asarray(box2, np.float64))
    il, it = max(a[0], b[0]), max(a[1], b[1])
    ir, ib = min(a[2], b[2]), min(a[3], b[3])
    if il >= ir or it >= ib:
        return out1, out2, False
    # view pixels per normalised unit; the coarser view (smaller scale) sets the sampling frame
    s1 = (size / box1[2], size / box1[3])
    s2 = (size / box2[2], size / box2[3])
    smin = (min(s1[0], s2[0]), min(s1[1], s2[1]))
    # floor, not the source's round: a rounded-up frame pokes out of the intersection by up to a
    # pixel, and clipping would then unmatch the two boxes
    int_w, int_h = math.floor((ir - il) * smin[0] + 1e-9), math.floor((ib - it) * smin[1] + 1e-9)
    if min_size >= int_w or min_size >= int_h:
        return out1, out2, False
    kept: list[tuple[int, int, int, int]] = []
    for i in range(n_boxes):
        for _ in range(max_tries):
            x, y, w, h = _draw_box(rng, int_w, int_h, min_size, grid)
            if i == 0 or iou_threshold >= 1.0:
                break
            # IoU is invariant to per-axis scaling, offsets and mirroring: test it in this frame
            cand = (x, y, x + w, y + h)
            if max(box_iou_xyxy(cand, (k[0], k[1], k[0] + k[2], k[1] + k[3])) for k in kept) < iou_threshold:
                break
        kept.append((x, y, w, h))
        # back to normalised original-image coordinates, then into each view
        rx0, rx1 = il + x / smin[0], il + (x + w) / smin[0]
        ry0, ry1 = it + y / smin[1], it + (y + h) / smin[1]
        for out, v, s, flip in ((out1, a, s1, flip1), (out2, b, s2, flip2)):
            l, r = (rx0 - v[0]) * s[0], (rx1 - v[0]) * s[0]
            t, btm = (ry0 - v[1]) * s[1], (ry1 - v[1]) * s[1]
            if flip:
                l, r = size - r, size - l
            out[i] = (max(0.0, l), max(0.0, t), min(float(size), r), min(float(size), btm))
    return out1, out2, True


class GlobalBatchNorm1d(nn.Module):
    """BatchNorm1d (training statistics only) over the rows of every rank together.

    The boxes of a batch are split unevenly over ranks, so per-rank statistics would make N ranks
    compute something other than one process; the sums are all-reduced (autograd-aware) instead.
    These heads are training-only, so no running statistics are kept.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from wherevit.train.distributed import is_distributed

        x = x.float()  # sums of squares in bf16 (autocast) would lose the variance
        n = x.new_tensor([float(x.shape[0])])
        s, ss = x.sum(0), (x * x).sum(0)
        if is_distributed():
            import torch.distributed.nn.functional as dnn

            stats = dnn.all_reduce(torch.cat([n, s, ss]))
            n, s, ss = stats[:1], stats[1 : 1 + x.shape[1]], stats[1 + x.shape[1] :]
        n = n.clamp_min(1.0)
        mean = s / n
        var = (ss / n - mean * mean).clamp_min(0.0)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class SCRLHead(nn.Module):
    """BYOL's two-layer head: Linear -> BN -> ReLU -> Linear (no bias on the last layer)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.bn = GlobalBatchNorm1d(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.bn(self.fc1(x))))


def _regression(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return 2 - 2 * (F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(-1)


def scrl_loss(q1: torch.Tensor, q2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Per-box symmetric SCRL loss (R,): online predictions ``q1``/``q2`` of the boxes in views 1
    and 2 against the target projections ``z2``/``z1`` of the same boxes in the other view."""
    return _regression(q1, z2.detach()) + _regression(q2, z1.detach())


class SCRLViewSampler:
    """SCRL's own pair (picklable): group ``scrl``, two views made like the host's global crops."""

    def __init__(self, spec: ViewSpec):
        self.spec = spec

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> dict:
        return {"scrl": stack_views([make_view(img, self.spec, rng) for _ in range(2)])}


class SCRLBoxHook:
    """Data-side half of SCRL (picklable sample hook): matched boxes for views 0 and 1 of ``group``
    (the host's ``global`` or SCRL's own ``scrl``), as ``sample["scrl_boxes"] = {"boxes": (2, K, 4)
    view pixels, "valid": ()}``."""

    def __init__(self, cfg: SCRLConfig, size: int, group: str = "global"):
        self.cfg, self.size, self.group = cfg, size, group

    def __call__(self, sample: dict, img: np.ndarray, rng: np.random.Generator, position: int | None) -> None:
        g = sample[self.group]
        c = self.cfg
        b1, b2, ok = scrl_box_pairs(g["boxes"][0].astype(np.float64), bool(g["flips"][0]),
                                    g["boxes"][1].astype(np.float64), bool(g["flips"][1]), self.size, rng,
                                    c.n_boxes, c.min_size, c.iou_threshold, c.max_tries, c.grid_boxes)
        sample["scrl_boxes"] = {"boxes": np.stack([b1, b2]), "valid": np.array(ok)}


def _world_size() -> int:
    from wherevit.train.distributed import is_distributed

    return torch.distributed.get_world_size() if is_distributed() else 1


def global_count(n: torch.Tensor) -> torch.Tensor:
    """``n`` summed over ranks (no gradient): the global number of items a loss averages over."""
    from wherevit.train.distributed import is_distributed

    n = n.detach().float().clone()
    if is_distributed():
        torch.distributed.all_reduce(n)
    return n


@register_plugin
class SCRL(Plugin):
    """Spatially consistent box features between the host's two global views (see the module doc)."""

    name = "scrl"
    Config = SCRLConfig

    def __init__(self, cfg: SCRLConfig, embed_dim: int):
        super().__init__(cfg, embed_dim)
        # a pool_size x pool_size RoI is flattened into the projector's input
        self.projector = SCRLHead(embed_dim * cfg.pool_size**2, cfg.hidden_dim, cfg.out_dim)
        self.predictor = SCRLHead(cfg.out_dim, cfg.hidden_dim, cfg.out_dim)
        self.add_ema_target("target_projector", self.projector)
        self.group = "global"

    def setup(self, host: HostSpec) -> None:
        super().setup(host)
        why = ("the crop-aligned positional field is on (matched boxes would carry identical positions)"
               if host.positions_provided else
               "another plug-in transforms the host's global views (their boxes no longer describe them)"
               if host.host_views_altered else "")
        if self.cfg.views == "host" and why:
            raise PluginError(f"plugins.scrl.views: 'host' reads the host's global views, but {why}; use views: auto or own")
        if self.cfg.views == "own" or (self.cfg.views == "auto" and why):
            self.group = "scrl"
            self.student_views = self.teacher_views = ("scrl",)

    @classmethod
    def check_run_config(cls, cfg: SCRLConfig, run: Any) -> None:
        super().check_run_config(cfg, run)
        size = run.data.crops.global_size
        if cfg.min_size >= size:
            raise ConfigError(f"plugins.scrl.min_size ({cfg.min_size} px) must be smaller than the global crop "
                              f"(data.crops.global_size = {size}): no box could ever be drawn")

    def view_sampler(self) -> SCRLViewSampler | None:
        if self.group != "scrl":
            return None
        c = self.host.crops
        return SCRLViewSampler(ViewSpec(c.global_size, c.global_scale, flip_p=c.flip_p, color_jitter_p=c.color_jitter_p,
                                        grayscale_p=c.grayscale_p, blur_p=c.blur_p, solarize_p=c.solarize_p))

    def data_hook(self) -> SCRLBoxHook:
        return SCRLBoxHook(self.cfg, self.host.crops.global_size, self.group)

    def _roi(self, feats: BackboneFeatures, boxes: torch.Tensor, B: int) -> torch.Tensor:
        """1 x 1 (pool_size) RoI features of boxes (B, 2, K, 4) in global views 0 and 1 -> (2, B*K, D')."""
        fmap = feats[: 2 * B].patch_map()
        K = boxes.shape[2]
        out = []
        for v in range(2):
            idx = (torch.arange(B, device=boxes.device) + v * B).repeat_interleave(K)
            r = roi_tokens(fmap, boxes[:, v].reshape(-1, 4), idx, self.host.patch_size, self.cfg.pool_size)
            out.append(r.flatten(1))
        return torch.stack(out)

    def forward(self, student: Mapping[str, BackboneFeatures], teacher: Mapping[str, BackboneFeatures],
                batch: Mapping[str, Any], ctx: StepContext | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        boxes, valid = batch["scrl_boxes"]["boxes"], batch["scrl_boxes"]["valid"].bool()  # (B, 2, K, 4), (B,)
        B, K = boxes.shape[0], boxes.shape[2]
        keep = valid.repeat_interleave(K)  # pairs without a usable intersection contribute nothing
        s = self._roi(student[self.group], boxes, B)[:, keep]
        q = self.predictor(self.projector(s.flatten(0, 1)).float()).float().reshape(2, -1, self.cfg.out_dim)
        with torch.no_grad():
            t = self._roi(teacher[self.group], boxes, B)[:, keep]
            z = self.target_projector(t.flatten(0, 1)).float().reshape(2, -1, self.cfg.out_dim)
        per_box = scrl_loss(q[0], q[1], z[0], z[1])
        # mean over the boxes of all ranks (DDP averages gradients over ranks, hence * world)
        n_all = global_count(keep.sum())
        loss = per_box.sum() * _world_size() / n_all.clamp_min(1)
        return loss, {"scrl/valid_pairs": valid.float().mean()}
