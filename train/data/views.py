"""Crops that remember where they came from.

Every view carries its box in original-image coordinates, normalised to [0, 1] as
``(cx, cy, w, h)``, and whether it was mirrored. SP regresses relations between boxes; SCRL, GTSA
and the crop-aligned positional field need the same boxes, so the data pipeline carries them for
every view whether or not a plug-in uses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Box", "sample_box", "box_iou", "crop_view", "photometric", "make_view", "ViewSpec"]

Box = np.ndarray  # float64 (4,): cx, cy, w, h in [0, 1] of the original image


@dataclass(frozen=True)
class ViewSpec:
    """How to make one kind of view: output size, area-scale range, aspect-ratio range, augmentation."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0


def sample_box(rng: np.random.Generator, img_hw: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float]) -> Box:
    """A RandomResizedCrop box in whole pixels, returned normalised as (cx, cy, w, h).

    The box is snapped to the pixel grid here, so the normalised box is exactly the region that
    ``crop_view`` cuts out (targets computed from it are exact).
    """
    H, W = img_hw
    area = H * W
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        a = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(a * r)))
        h = int(round(math.sqrt(a / r)))
        if 0 < w <= W and 0 < h <= H:
            break
    else:  # fall back to the largest box with an in-range aspect ratio (as torchvision does)
        in_r = W / H
        if in_r < ratio[0]:
            w, h = W, int(round(W / ratio[0]))
        elif in_r > ratio[1]:
            h, w = H, int(round(H * ratio[1]))
        else:
            w, h = W, H
        w, h = max(1, min(w, W)), max(1, min(h, H))
    x0 = int(rng.integers(0, W - w + 1))
    y0 = int(rng.integers(0, H - h + 1))
    return np.array([(x0 + w / 2) / W, (y0 + h / 2) / H, w / W, h / H], np.float64)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (cx, cy, w, h) boxes."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def crop_view(img: np.ndarray, box: Box, size: int, flip: bool) -> np.ndarray:
    """Cut ``box`` out of ``img`` (HxWx3 uint8), resize to ``size`` x ``size``, mirror if ``flip``."""
    H, W = img.shape[:2]
    w, h = int(round(box[2] * W)), int(round(box[3] * H))
    x0, y0 = int(round(box[0] * W - w / 2)), int(round(box[1] * H - h / 2))
    patch = img[y0 : y0 + h, x0 : x0 + w]
    interp = cv2.INTER_AREA if (w > size or h > size) else cv2.INTER_CUBIC
    out = cv2.resize(patch, (size, size), interpolation=interp)
    if flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def photometric(img: np.ndarray, spec: ViewSpec, rng: np.random.Generator) -> np.ndarray:
    """Colour jitter, grayscale, blur and solarisation (never geometry: boxes stay exact)."""
    out = img.astype(np.float32)
    if rng.random() < spec.color_jitter_p:
        b, c, s = rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.8, 1.2)
        out = out * b
        mean = out.mean()
        out = (out - mean) * c + mean
        gray = out @ np.array([0.299, 0.587, 0.114], np.float32)
        out = (out - gray[..., None]) * s + gray[..., None]
    if rng.random() < spec.grayscale_p:
        gray = out @ np.array([0.299, 0.587, 0.114], np.float32)
        out = np.repeat(gray[..., None], 3, axis=2)
    out = np.clip(out, 0, 255)
    if rng.random() < spec.blur_p:
        sigma = rng.uniform(0.1, 2.0) * spec.size / 224
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=max(sigma, 0.1))
    if rng.random() < spec.solarize_p:
        out = np.where(out >= 128, 255 - out, out)
    return out.astype(np.uint8)


def make_view(img: np.ndarray, spec: ViewSpec, rng: np.random.Generator, box: Box | None = None) -> tuple[np.ndarray, Box, bool]:
    """Sample (or take) a box, crop, flip and colour it: returns (CHW uint8 image, box, flipped)."""
    if box is None:
        box = sample_box(rng, img.shape[:2], spec.scale, spec.ratio)
    flip = bool(rng.random() < spec.flip_p)
    view = photometric(crop_view(img, box, spec.size, flip), spec, rng)
    return np.ascontiguousarray(view.transpose(2, 0, 1)), box, flip
