"""SP's spatial evaluations on frozen features, on held-out generated scenes.

1. Position and scale prediction on patch pairs: two disentangled patches of one image are
   embedded separately (frozen backbone, standard position embedding); a ridge probe on
   [z_a, z_b, z_a - z_b, z_a * z_b] regresses the SP target (dx, dy, log-scale). Reported: MAE of
   dx, dy, log-scale and R^2, on test images never seen by the probe.
2. 8-way relative location (Doersch et al. 2015): the centre tile of a 3x3 grid (with jittered
   gaps) and one of its 8 neighbours; a least-squares classifier predicts which neighbour.
   Chance is 12.5%.

Both tasks are label-free, so ``folder`` replaces the generated scenes by any folder of photographs.

z is the concatenation of the CLS token and the mean patch token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from wherevit.train.backbone import embed_images
from wherevit.train.data.geometry import PairSpec, sample_disentangled_pair, sp_target
from wherevit.train.data.synthetic import render_scene
from wherevit.train.data.views import crop_view
from wherevit.train.evals.folder import load_folder_images
from wherevit.train.evals.linear import RidgeProbe, r2_score

__all__ = ["SpatialEvalConfig", "evaluate_spatial", "embed_crops"]


@dataclass
class SpatialEvalConfig:
    n_images: int = 400
    image_size: int = 96
    seed: int = 424242  # scenes disjoint from training (training uses synthetic_seed, default 0)
    pairs_per_image: int = 8
    crop_size: int = 32
    scale: tuple[float, float] = (0.05, 0.2)
    max_iou: float = 0.1
    train_frac: float = 0.5
    batch_size: int = 256
    tile_gap: float = 0.1  # fraction of a tile left as jittered gap in the 8-way task
    folder: Optional[str] = None  # photographs instead of generated scenes (up to n_images of them)
    extra: dict = field(default_factory=dict)


def embed_crops(model: torch.nn.Module, crops: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB crops -> (N, 2D) float32: [CLS, mean patch] from the frozen backbone."""
    f = embed_images(model, crops, batch_size)
    return torch.cat([f.cls, f.pooled("mean")], dim=1).numpy()


def _pair_features(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    return np.concatenate([za, zb, za - zb, za * zb], axis=1)


def _position_scale(model, cfg: SpatialEvalConfig, images: list[np.ndarray]) -> dict:
    sp = PairSpec(scale=cfg.scale, max_iou=cfg.max_iou)
    rng = np.random.default_rng(cfg.seed + 1)
    crops, targets, owner = [], [], []
    for i, img in enumerate(images):
        for _ in range(cfg.pairs_per_image):
            a, b = sample_disentangled_pair(rng, img.shape[:2], sp)
            crops += [crop_view(img, a, cfg.crop_size, False), crop_view(img, b, cfg.crop_size, False)]
            targets.append(sp_target(a, b))
            owner.append(i)
    z = embed_crops(model, np.stack(crops), cfg.batch_size)
    X = _pair_features(z[0::2], z[1::2])
    Y = np.stack(targets)
    Y = np.concatenate([Y[:, :2], Y[:, 2:].mean(1, keepdims=True)], 1)  # dx, dy, log-scale
    owner = np.array(owner)
    split = int(len(images) * cfg.train_frac)
    tr, te = owner < split, owner >= split
    probe = RidgeProbe(seed=cfg.seed).fit(X[tr], Y[tr])
    pred = probe.predict(X[te])
    mae = np.abs(pred - Y[te]).mean(0)
    r2 = r2_score(Y[te], pred)
    base = np.abs(Y[te] - Y[tr].mean(0)).mean(0)  # predicting the training mean
    return {
        "mae_dx": float(mae[0]), "mae_dy": float(mae[1]), "mae_logscale": float(mae[2]),
        "r2_dx": float(r2[0]), "r2_dy": float(r2[1]), "r2_logscale": float(r2[2]), "r2_mean": float(r2.mean()),
        "mean_baseline_mae": [float(v) for v in base], "n_train_pairs": int(tr.sum()), "n_test_pairs": int(te.sum()),
        "ridge_alpha": probe.alpha,
    }


_NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _relative_location(model, cfg: SpatialEvalConfig, images: list[np.ndarray]) -> dict:
    rng = np.random.default_rng(cfg.seed + 2)
    crops, labels, owner = [], [], []
    for i, img in enumerate(images):
        tile = 1.0 / 3.0
        side = tile * (1 - cfg.tile_gap)
        def box(r, c):
            jx, jy = rng.uniform(-1, 1, 2) * (tile - side) / 2
            return np.array([(c + 1.5) * tile + jx, (r + 1.5) * tile + jy, side, side])
        for _ in range(2):
            k = int(rng.integers(0, 8))
            dr, dc = _NEIGHBOURS[k]
            crops += [crop_view(img, box(0, 0), cfg.crop_size, False), crop_view(img, box(dr, dc), cfg.crop_size, False)]
            labels.append(k)
            owner.append(i)
    z = embed_crops(model, np.stack(crops), cfg.batch_size)
    X = _pair_features(z[0::2], z[1::2])
    y = np.array(labels)
    owner = np.array(owner)
    split = int(len(images) * cfg.train_frac)
    tr, te = owner < split, owner >= split
    onehot = np.eye(8)[y]
    acc = lambda yt, p: float(np.mean(np.argmax(p, 1) == np.argmax(yt, 1)))
    probe = RidgeProbe(seed=cfg.seed).fit(X[tr], onehot[tr], score=acc)
    return {"acc_8way": acc(onehot[te], probe.predict(X[te])), "chance": 1 / 8, "n_test": int(te.sum())}


def evaluate_spatial(model: torch.nn.Module, cfg: SpatialEvalConfig | None = None) -> dict:
    """Both spatial evaluations for a frozen backbone (must accept ``crop_size`` inputs)."""
    cfg = cfg or SpatialEvalConfig()
    model = model.eval()
    if cfg.folder:
        images = load_folder_images(cfg.folder, cfg.image_size, cfg.n_images, seed=cfg.seed)
        data = {"data": f"folder {cfg.folder}", "n_skipped": len(images.skipped)}
    else:
        images = [render_scene(cfg.seed * 1_000_003 + i, cfg.image_size) for i in range(cfg.n_images)]
        data = {"data": "generated scenes"}
    return {"position_scale": _position_scale(model, cfg, images), "relative_location": _relative_location(model, cfg, images),
            "config": {"n_images": len(images), "image_size": cfg.image_size, "crop_size": cfg.crop_size,
                       "pairs_per_image": cfg.pairs_per_image, "seed": cfg.seed, **data}}
