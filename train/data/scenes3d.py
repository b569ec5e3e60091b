"""Procedural 3-D scenes rendered from pairs of cameras, with dense ground truth (numpy ray casting).

Each scene: a textured ground plane and back wall, a few boxes and spheres standing on the ground,
a directional light. Each view: RGB (uint8), metric z-depth (float32 metres; 0 where the ray hits
nothing), per-pixel class labels, intrinsics K, and the camera-to-world pose; a pair also carries
the relative pose of view b in view a's frame. Deterministic from a seed; ``SceneSet`` caches the
rendered arrays on disk (``.npz``) so repeated runs cost nothing.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CLASSES", "render_view", "sample_scene", "SceneSet", "look_at", "relative_pose"]

CLASSES = ("sky", "ground", "wall", "box", "sphere")


@dataclass
class Scene:
    boxes: np.ndarray  # (nb, 2, 3) min/max corners
    box_colors: np.ndarray  # (nb, 3)
    spheres: np.ndarray  # (ns, 4) cx, cy, cz, r
    sphere_colors: np.ndarray  # (ns, 3)
    wall_z: float
    ground_color: np.ndarray
    wall_color: np.ndarray
    light: np.ndarray  # unit vector towards the light
    ambient: float


def sample_scene(rng: np.random.Generator) -> Scene:
    nb, ns = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    boxes, spheres = [], []
    for _ in range(nb):
        size = rng.uniform([0.4, 0.3, 0.4], [1.2, 1.5, 1.2])
        c = np.array([rng.uniform(-2, 2), 0.0, rng.uniform(3, 7)])
        boxes.append([c - size * [0.5, 0, 0.5], c + size * [0.5, 1, 0.5]])
    for _ in range(ns):
        r = rng.uniform(0.3, 0.7)
        spheres.append([rng.uniform(-2, 2), r, rng.uniform(3, 7), r])
    light = np.array([rng.uniform(-1, 1), rng.uniform(0.5, 1.5), rng.uniform(-1, 0.2)])
    return Scene(np.array(boxes), rng.uniform(0.2, 1.0, (nb, 3)), np.array(spheres), rng.uniform(0.2, 1.0, (ns, 3)),
                 float(rng.uniform(8, 11)), rng.uniform(0.3, 0.7, 3), rng.uniform(0.4, 0.9, 3),
                 light / np.linalg.norm(light), float(rng.uniform(0.25, 0.45)))


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """Camera-to-world 4x4 (OpenCV convention: x right, y down, z forward)."""
    f = target - eye
    f = f / np.linalg.norm(f)
    r = np.cross(f, np.asarray(up))
    r = r / np.linalg.norm(r)
    d = np.cross(f, r)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = r, d, f, eye
    return T


def relative_pose(T_a: np.ndarray, T_b: np.ndarray) -> np.ndarray:
    """Pose of camera b in camera a's frame: T_ab = inv(T_a) @ T_b."""
    return np.linalg.inv(T_a) @ T_b


def _intersect(o: np.ndarray, d: np.ndarray, scene: Scene):
    n = d.shape[0]
    t_best = np.full(n, np.inf)
    label = np.zeros(n, np.uint8)
    normal = np.zeros((n, 3))
    color = np.zeros((n, 3))

    def take(t, lab, nrm, col):
        hit = (t > 1e-4) & (t < t_best)
        t_best[hit] = t[hit]
        label[hit] = lab
        normal[hit] = nrm[hit] if nrm.ndim == 2 else nrm
        color[hit] = col[hit] if np.ndim(col) == 2 else col

    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d[:, 1] < -1e-6, -o[1] / d[:, 1], np.inf)  # ground y = 0
        p = o + t[:, None] * d
        check = ((np.floor(p[:, 0] * 1.5) + np.floor(p[:, 2] * 1.5)) % 2)[:, None]
        take(t, 1, np.array([0.0, 1.0, 0.0]), scene.ground_color * (0.7 + 0.3 * check))
        t = np.where(d[:, 2] > 1e-6, (scene.wall_z - o[2]) / d[:, 2], np.inf)  # back wall z = wall_z
        t = np.where(o[1] + t * d[:, 1] < 4.0, t, np.inf)  # the wall is 4 m tall; sky above it
        p = o + t[:, None] * d
        stripes = (np.floor(p[:, 0] * 2.0) % 2)[:, None]
        take(t, 2, np.array([0.0, 0.0, -1.0]), scene.wall_color * (0.75 + 0.25 * stripes))
        for (lo, hi), col in zip(scene.boxes, scene.box_colors):
            t1, t2 = (lo - o) / d, (hi - o) / d
            tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
            tn, tf = tmin.max(1), tmax.min(1)
            t = np.where((tn <= tf) & (tf > 0), tn, np.inf)
            axis = tmin.argmax(1)
            nrm = np.zeros((n, 3))
            nrm[np.arange(n), axis] = -np.sign(d[np.arange(n), axis])  # the face the ray enters
            take(t, 3, nrm, col)
        for (cx, cy, cz, r), col in zip(scene.spheres, scene.sphere_colors):
            oc = o - np.array([cx, cy, cz])
            b = d @ oc
            disc = b * b - (oc @ oc - r * r)
            t = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0)), np.inf)
            p = o + t[:, None] * d
            take(t, 4, (p - np.array([cx, cy, cz])) / r, col)
    return t_best, label, normal, color


def render_view(scene: Scene, T_cw: np.ndarray, size: int, fov_deg: float = 60.0) -> dict:
    """Render one view: rgb (H,W,3) uint8, depth (H,W) float32 metres (0 = no surface), labels (H,W) uint8, K (3,3)."""
    H = W = size
    f = 0.5 * W / np.tan(np.radians(fov_deg) / 2)
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    rays_cam = np.stack([(xs - W / 2) / f, (ys - H / 2) / f, np.ones_like(xs)], -1).reshape(-1, 3)
    R, o = T_cw[:3, :3], T_cw[:3, 3]
    d = rays_cam @ R.T
    d_unit = d / np.linalg.norm(d, axis=1, keepdims=True)
    t, label, normal, albedo = _intersect(o, d_unit, scene)
    hit = np.isfinite(t)
    zdepth = np.where(hit, t / np.linalg.norm(d, axis=1), 0.0)  # t along a unit ray -> camera z
    shade = scene.ambient + (1 - scene.ambient) * np.clip(normal @ scene.light, 0, 1)
    sky_t = np.clip(-d_unit[:, 1] * 0.5 + 0.5, 0, 1)[:, None]  # camera-space "up" is -y
    sky = np.array([0.55, 0.7, 0.95]) * (1 - sky_t) + np.array([0.85, 0.9, 1.0]) * sky_t
    rgb = np.where(hit[:, None], albedo * shade[:, None], sky)
    return {
        "rgb": (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(H, W, 3),
        "depth": zdepth.astype(np.float32).reshape(H, W),
        "labels": label.reshape(H, W),
        "K": K.astype(np.float32),
    }


def render_pair(seed: int, size: int = 64) -> dict:
    """A scene and two camera poses looking at it; arrays for views a and b and the relative pose."""
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng)
    target = np.array([rng.uniform(-0.5, 0.5), 0.6, rng.uniform(4.5, 6.0)])
    eye_a = np.array([rng.uniform(-1.0, 1.0), rng.uniform(1.0, 2.0), rng.uniform(-0.5, 0.5)])
    T_a = look_at(eye_a, target)
    # view b: moved sideways/forward and turned, so the pair has a real baseline and rotation
    eye_b = eye_a + np.array([rng.uniform(-1.2, 1.2), rng.uniform(-0.3, 0.3), rng.uniform(-0.6, 0.8)])
    T_b = look_at(eye_b, target + np.array([rng.uniform(-1.5, 1.5), rng.uniform(-0.3, 0.3), rng.uniform(-1, 1)]))
    a, b = render_view(scene, T_a, size), render_view(scene, T_b, size)
    return {"a": a, "b": b, "T_a": T_a.astype(np.float32), "T_b": T_b.astype(np.float32),
            "T_ab": relative_pose(T_a, T_b).astype(np.float32)}


class SceneSet:
    """``n`` rendered pairs (seed ``seed``) as stacked arrays, cached under ``cache_dir``."""

    def __init__(self, n: int, size: int = 64, seed: int = 0, cache_dir: str | os.PathLike | None = None):
        self.n, self.size, self.seed = n, size, seed
        cache = Path(cache_dir or os.environ.get("WHEREVIT_CACHE", Path.home() / ".cache" / "wherevit")) / "scenes3d"
        key = hashlib.sha1(f"v1-{n}-{size}-{seed}".encode()).hexdigest()[:12]
        path = cache / f"pairs_{n}_{size}_{seed}_{key}.npz"
        if path.is_file():
            data = dict(np.load(path))
        else:
            pairs = [render_pair(seed * 1_000_003 + i, size) for i in range(n)]
            data = {f"{v}_{k}": np.stack([p[v][k] for p in pairs]) for v in ("a", "b") for k in ("rgb", "depth", "labels", "K")}
            data.update({k: np.stack([p[k] for p in pairs]) for k in ("T_a", "T_b", "T_ab")})
            cache.mkdir(parents=True, exist_ok=True)
            from wherevit.base.io import atomic_path

            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **data)
        self.data = data

    def __len__(self) -> int:
        return self.n

    def views(self, keys: tuple[str, ...] = ("rgb", "depth", "labels")) -> dict[str, np.ndarray]:
        """Both views of every pair stacked as single views (2n, ...), for the arrays in ``keys``."""
        return {k: np.concatenate([self.data[f"a_{k}"], self.data[f"b_{k}"]]) for k in keys}


class SceneViews:
    """Single RGB views of generated 3-D scenes as a pretraining image source (``data.source:
    scenes3d``): the same renderer as the downstream heads' data, so pretraining and evaluation
    share a domain. Views come from :class:`SceneSet` pairs (both cameras), rendered once and cached.
    Seeds are disjoint from the downstream splits as long as ``seed`` differs from theirs."""

    def __init__(self, count: int, size: int = 96, seed: int = 0, cache_dir: str | os.PathLike | None = None):
        if count <= 0:
            raise ValueError(f"scenes3d data set needs count > 0, got {count}")
        self.count, self.size, self.seed = count, size, seed
        self.rgb = SceneSet((count + 1) // 2, size, seed, cache_dir).views(("rgb",))["rgb"][:count]  # depth/labels unused here

    def __len__(self) -> int:
        return self.count

    def describe(self) -> str:
        return f"generated 3-D scene views (count={self.count}, size={self.size}, seed={self.seed})"

    def load(self, index: int) -> np.ndarray:
        return self.rgb[index]
