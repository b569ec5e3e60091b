"""Regions of the original image inside views (boxes, flips, quarter turns) and the token features there.

Every view carries its crop box in normalised original-image coordinates ``(cx, cy, w, h)``, whether
it was mirrored, and (for rotating plug-ins) how many counter-clockwise quarter turns it got. A
view image is ``rot90(flip(resize(crop)), k)``; ``region_in_view`` follows the same order, so a
region of the original image can be located in any view, in that view's pixels. ``roi_tokens``
reads a ViT's patch-token grid over such boxes with ``torchvision.ops.roi_align``.

Shared by the SCRL and GTSA plug-ins (and their geometry tests). Works on numpy arrays and on
torch tensors alike, with leading batch dimensions, and knows quarter turns: the host's per-box
numpy helpers (``train/data/geometry.py``) and ``BackboneFeatures.roi_align`` (normalised boxes on
backbone features) serve SP-style plug-ins; GTSA reads RoIs from projected maps, in view pixels.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch
from torchvision.ops import roi_align

__all__ = ["cxcywh_to_xyxy", "intersect", "region_in_view", "rotate_xyxy", "roi_tokens"]

Array = Union[np.ndarray, torch.Tensor]


def _lib(x: Array):
    return torch if isinstance(x, torch.Tensor) else np


def cxcywh_to_xyxy(box: Array) -> Array:
    """(..., 4) centre/size boxes -> (..., 4) corner boxes ``(x0, y0, x1, y1)``."""
    lib = _lib(box)
    cx, cy, w, h = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    return lib.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def intersect(a: Array, b: Array) -> Array:
    """Intersection of corner boxes (..., 4); an empty intersection has x1 <= x0 or y1 <= y0."""
    lib = _lib(a)
    mx, mn = (torch.maximum, torch.minimum) if lib is torch else (np.maximum, np.minimum)
    return lib.stack([mx(a[..., 0], b[..., 0]), mx(a[..., 1], b[..., 1]),
                      mn(a[..., 2], b[..., 2]), mn(a[..., 3], b[..., 3])], -1)


def rotate_xyxy(box: Array, k: Array | int, size: float) -> Array:
    """Corner boxes (..., 4) in an ``size`` x ``size`` image -> the same boxes after the image is
    turned ``k`` quarter turns counter-clockwise (``np.rot90`` / ``torch.rot90(dims=(-2, -1))``).

    One counter-clockwise quarter turn sends the point (x, y) to (y, size - x): the image's top row
    becomes its left column (checked against ``np.rot90`` by the geometry tests).
    """
    lib = _lib(box)
    x0, y0, x1, y1 = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    k = k % 4
    r1 = lib.stack([y0, size - x1, y1, size - x0], -1)
    r2 = lib.stack([size - x1, size - y1, size - x0, size - y0], -1)
    r3 = lib.stack([size - y1, x0, size - y0, x1], -1)
    out = [box, r1, r2, r3]
    if isinstance(k, int):
        return out[k]
    kk = k[..., None]
    res = box
    for i in (1, 2, 3):
        res = lib.where(kk == i, out[i], res)
    return res


def region_in_view(region: Array, view_box: Array, size: float, flip: Array | bool = False,
                   rot_k: Array | int = 0) -> Array:
    """Corner box ``region`` (..., 4, normalised original-image coordinates) expressed in the pixels
    of a ``size`` x ``size`` view cut from ``view_box`` (cx, cy, w, h), mirrored if ``flip``, then
    turned ``rot_k`` quarter turns counter-clockwise. Not clipped: a region outside the view maps
    outside ``[0, size]``."""
    lib = _lib(region)
    vx0 = view_box[..., 0] - view_box[..., 2] / 2
    vy0 = view_box[..., 1] - view_box[..., 3] / 2
    sx, sy = size / view_box[..., 2], size / view_box[..., 3]
    x0 = (region[..., 0] - vx0) * sx
    x1 = (region[..., 2] - vx0) * sx
    y0 = (region[..., 1] - vy0) * sy
    y1 = (region[..., 3] - vy0) * sy
    if isinstance(flip, (bool, np.bool_)):
        if flip:
            x0, x1 = size - x1, size - x0
    else:
        fx0, fx1 = size - x1, size - x0
        x0, x1 = lib.where(flip, fx0, x0), lib.where(flip, fx1, x1)
    return rotate_xyxy(lib.stack([x0, y0, x1, y1], -1), rot_k, size)


def roi_tokens(fmap: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor, patch_size: int,
               output_size: int | tuple[int, int] = 1) -> torch.Tensor:
    """RoIAlign of a token feature map (B, D, gh, gw) over boxes (R, 4) in view pixels.

    ``aligned=True``: token j covers pixels [j p, (j + 1) p) and its centre (j + 1/2) p maps to
    feature coordinate j, so a box reads exactly the tokens under it, mirrored or not. (SCRL's
    ResNet config uses ``aligned=False``, a half-cell shift that turns into a whole-token
    disagreement between a mirrored and an unmirrored view; GTSA uses ``aligned=True``.)
    Returns (R, D, oh, ow), float32 (roi_align has no bf16 CPU kernel).
    """
    rois = torch.cat([batch_index.to(boxes.dtype)[:, None], boxes], 1).float()
    return roi_align(fmap.float(), rois, output_size, spatial_scale=1.0 / patch_size, sampling_ratio=-1, aligned=True)
