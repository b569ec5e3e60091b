"""Procedural scenes with real spatial structure, deterministic from a seed (numpy + OpenCV only).

Each image is a small outdoor-like scene: a sky gradient with a sun above a horizon, a ground plane
with a perspective checkerboard that recedes towards the horizon (texture frequency encodes height
and depth), fog near the horizon, and objects standing on the ground whose size shrinks with
distance and whose shading follows the sun, under lens vignetting. Position and scale are therefore readable from
content, which is what the spatial pretext tasks (and the spatial evaluation) need; a data set of
pure noise or centred blobs would not let SP learn anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

__all__ = ["render_scene", "scene_label", "SHAPES", "SCENE_CLASSES", "SyntheticScenes", "write_synthetic_folder"]


def _hsv_color(rng: np.random.Generator, h: float, s: tuple[float, float], v: tuple[float, float]) -> np.ndarray:
    hsv = np.array([[[h % 180.0, rng.uniform(*s) * 255, rng.uniform(*v) * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


SHAPES = ("box", "ball", "cone")
SCENE_CLASSES = ("2-3 objects", "4-5 objects")


def scene_label(meta: dict) -> int:
    """The class of a scene for recognition probes: how many objects it holds (a counting task, as
    in CLEVR-count probes; the nearest object's shape was tried first and stays at chance for small
    models)."""
    return int(meta["n_objects"] >= 4)


def render_scene(seed: int, size: int | tuple[int, int] = 96, return_meta: bool = False):
    """Render one scene as HxWx3 uint8 RGB. Same ``seed`` and ``size`` give the same pixels.

    With ``return_meta`` also returns ``{"nearest_shape": index into SHAPES, "n_objects": int}``
    (the scene layout does not depend on ``size``)."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    yn, xn = ys / h, xs / w

    horizon = rng.uniform(0.3, 0.55)
    sun_x = rng.uniform(0.1, 0.9)
    sun_y = rng.uniform(0.05, horizon - 0.1)
    sky_top = _hsv_color(rng, rng.uniform(95, 125), (0.5, 0.9), (0.35, 0.7))
    sky_low = _hsv_color(rng, rng.uniform(10, 110), (0.1, 0.4), (0.8, 1.0))
    ground_a = _hsv_color(rng, rng.uniform(20, 80), (0.3, 0.8), (0.3, 0.7))
    ground_b = ground_a * rng.uniform(0.45, 0.7)

    # Sky: vertical gradient + sun glow.
    t = np.clip(yn / horizon, 0, 1)[..., None]
    img = sky_top * (1 - t) + sky_low * t
    d_sun = np.sqrt(((xn - sun_x) * w / h) ** 2 + (yn - sun_y) ** 2)
    r_sun = rng.uniform(0.04, 0.08)
    img = img + (255 - img) * np.clip(1.2 - d_sun / r_sun, 0, 1)[..., None]
    img = img + 60 * np.exp(-d_sun / 0.2)[..., None]

    # Ground: perspective checkerboard (depth z = 1 / (y - horizon)), fog towards the horizon.
    below = yn > horizon
    z = 1.0 / np.maximum(yn - horizon, 1e-3)
    u = (xn - 0.5) * z
    cell = rng.uniform(0.35, 0.6)
    check = ((np.floor(u / cell) + np.floor(z / (cell * 2.5))) % 2)[..., None]
    ground = ground_a * (1 - check) + ground_b * check
    lit = 0.75 + 0.35 * (1 - np.abs(xn - sun_x))[..., None]  # sun side is brighter
    ground = ground * lit
    fog = np.clip(np.exp(-(yn - horizon) * 9), 0, 1)[..., None]
    ground = ground * (1 - fog) + sky_low * fog
    img = np.where(below[..., None], ground, img)

    # Objects on the ground: nearer ones are lower and larger; shadows point away from the sun.
    n_obj = int(rng.integers(2, 6))
    nearest = -1
    depths = np.sort(rng.uniform(1.5, 9.0, n_obj))[::-1]  # far first, so near ones occlude
    for dz in depths:
        base_y = horizon + 1.0 / dz
        if base_y >= 1.0:
            continue
        ox = rng.uniform(0.05, 0.95)
        s = rng.uniform(0.25, 0.5) / dz * 2.0
        color = _hsv_color(rng, rng.uniform(0, 180), (0.5, 1.0), (0.5, 1.0))
        shade = np.clip(1.0 - 0.5 * np.clip((xs / w - ox) * np.sign(sun_x - ox + 1e-6), -1, 1) * -1, 0.5, 1.3)[..., None]
        cx, by = ox * w, base_y * h
        half = s * w / 2
        kind = int(rng.integers(0, 3))
        nearest = kind  # objects are drawn far to near: the last one drawn is the nearest
        # shadow: a dark ellipse on the ground, offset away from the sun
        sh = np.zeros((h, w), np.uint8)
        cv2.ellipse(sh, (int(cx + (ox - sun_x) * half * 2), int(by)), (max(1, int(half * 1.2)), max(1, int(half * 0.25))), 0, 0, 360, 1, -1)
        img = np.where(sh[..., None] > 0, img * 0.6, img)
        mask = np.zeros((h, w), np.uint8)
        if kind == 0:
            cv2.rectangle(mask, (int(cx - half), int(by - 2 * half)), (int(cx + half), int(by)), 1, -1)
        elif kind == 1:
            cv2.circle(mask, (int(cx), int(by - half)), max(1, int(half)), 1, -1)
        else:
            pts = np.array([[cx - half, by], [cx + half, by], [cx, by - 2.2 * half]], np.int32)
            cv2.fillPoly(mask, [pts], 1)
        img = np.where(mask[..., None] > 0, color * shade, img)

    # Lens vignetting: light falls off towards the corners, as in real photographs.
    r2 = ((xn - 0.5) ** 2 + (yn - 0.5) ** 2) / 0.5
    img = img * (1.0 - rng.uniform(0.25, 0.45) * r2)[..., None]
    img = img + rng.normal(0, 3.0, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return (img, {"nearest_shape": nearest, "n_objects": n_obj}) if return_meta else img


class SyntheticScenes:
    """A fixed-size, indexable set of generated scenes: image ``i`` is ``render_scene(seed * 1_000_003 + i)``."""

    def __init__(self, count: int, size: int = 96, seed: int = 0):
        if count <= 0:
            raise ValueError(f"synthetic data set needs count > 0, got {count}")
        self.count, self.size, self.seed = count, size, seed

    def __len__(self) -> int:
        return self.count

    def describe(self) -> str:
        return f"synthetic scenes (count={self.count}, size={self.size}, seed={self.seed})"

    def load(self, index: int) -> np.ndarray:
        return render_scene(self.seed * 1_000_003 + index, self.size)


def write_synthetic_folder(out: str | os.PathLike, count: int, size: int = 96, seed: int = 0) -> list[Path]:
    """Write ``count`` generated scenes as PNG files under ``out`` (for folder-based workflows)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scenes = SyntheticScenes(count, size, seed)
    paths = []
    for i in range(count):
        p = out / f"scene_{i:06d}.png"
        cv2.imwrite(str(p), cv2.cvtColor(scenes.load(i), cv2.COLOR_RGB2BGR))
        paths.append(p)
    return paths
