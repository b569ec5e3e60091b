"""Geometry between crops of one image: the SP relative-position target, disentangled box pairs,
and boxes carried between image and view coordinates (intersections, flips).

Shared by plug-ins (training) and the spatial evaluations (frozen features), so neither imports the
other. Crop boxes are ``(cx, cy, w, h)`` normalised to the original image (``views.Box``); regions
are ``(x0, y0, x1, y1)``, normalised to the image or to a view as named.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from wherevit.train.data.views import Box, box_iou, sample_box

__all__ = [
    "PairSampling", "PairSpec", "sp_target", "sp_inverse", "sample_disentangled_pair", "box_corners",
    "intersection", "image_to_view",
]


class PairSampling(Protocol):
    """What ``sample_disentangled_pair`` reads (``PairSpec`` and the SP plug-in's config both fit)."""

    scale: tuple[float, float]
    ratio: tuple[float, float]
    max_iou: float
    max_tries: int


@dataclass(frozen=True)
class PairSpec:
    """Box sampling for a disentangled pair: area-scale and aspect ranges, overlap limit, tries."""

    scale: tuple[float, float]
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    max_iou: float = 0.1
    max_tries: int = 50


def sp_target(box_a: np.ndarray | torch.Tensor, box_b: np.ndarray | torch.Tensor, normalize: str = "crop"):
    """The SP target for boxes (..., 4) as (cx, cy, w, h): returns (..., 4) = (dx, dy, ds_w, ds_h)."""
    lib = torch if isinstance(box_a, torch.Tensor) else np
    dx = box_b[..., 0] - box_a[..., 0]
    dy = box_b[..., 1] - box_a[..., 1]
    if normalize == "crop":
        dx, dy = dx / box_a[..., 2], dy / box_a[..., 3]
    elif normalize != "image":
        raise ValueError(f"unknown SP normalisation {normalize!r}")
    dsw = lib.log(box_b[..., 2] / box_a[..., 2])
    dsh = lib.log(box_b[..., 3] / box_a[..., 3])
    return lib.stack([dx, dy, dsw, dsh], -1)


def sp_inverse(t, normalize: str = "crop"):
    """The target of (b, a) given the target of (a, b): the inverse transform."""
    lib = torch if isinstance(t, torch.Tensor) else np
    dx, dy, dsw, dsh = t[..., 0], t[..., 1], t[..., 2], t[..., 3]
    if normalize == "crop":  # (cx_a - cx_b) / w_b = -dx * w_a / w_b = -dx * exp(-ds_w)
        return lib.stack([-dx * lib.exp(-dsw), -dy * lib.exp(-dsh), -dsw, -dsh], -1)
    return lib.stack([-dx, -dy, -dsw, -dsh], -1)


def sample_disentangled_pair(rng: np.random.Generator, img_hw: tuple[int, int], spec: PairSampling) -> tuple[Box, Box]:
    """Two boxes with IoU <= ``spec.max_iou``. The first box is redrawn every few tries (a large
    central box may leave no room); after ``max_tries`` the least-overlapping pair seen is kept."""
    best, best_iou = None, 2.0
    for attempt in range(spec.max_tries):
        if attempt % 5 == 0:
            a = sample_box(rng, img_hw, spec.scale, spec.ratio)
        b = sample_box(rng, img_hw, spec.scale, spec.ratio)
        iou = box_iou(a, b)
        if iou <= spec.max_iou:
            return a, b
        if iou < best_iou:
            best, best_iou = (a, b), iou
    return best


def box_corners(box: Box) -> np.ndarray:
    """(cx, cy, w, h) -> (x0, y0, x1, y1)."""
    cx, cy, w, h = (float(v) for v in box[:4])
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float64)


def intersection(a: Box, b: Box) -> np.ndarray | None:
    """The image region two crop boxes share, as (x0, y0, x1, y1), or None when they do not overlap."""
    ca, cb = box_corners(a), box_corners(b)
    out = np.array([max(ca[0], cb[0]), max(ca[1], cb[1]), min(ca[2], cb[2]), min(ca[3], cb[3])])
    return out if out[2] > out[0] and out[3] > out[1] else None


def image_to_view(region: np.ndarray, view_box: Box, flip: bool) -> np.ndarray:
    """An image region (x0, y0, x1, y1) in the normalised coordinates of the view cut from
    ``view_box`` (mirrored when ``flip``): (0, 0, 1, 1) is the whole view. Not clipped."""
    v = box_corners(view_box)
    x0, x1 = (region[0] - v[0]) / (v[2] - v[0]), (region[2] - v[0]) / (v[2] - v[0])
    y0, y1 = (region[1] - v[1]) / (v[3] - v[1]), (region[3] - v[1]) / (v[3] - v[1])
    if flip:
        x0, x1 = 1 - x1, 1 - x0
    return np.array([x0, y0, x1, y1], np.float64)
