"""SP's jigsaw-understanding evaluation on frozen features.

Each held-out scene is cut into a 3x3 grid of tiles. A linear probe on each tile's frozen features
(trained on other scenes) scores the 9 slots; per-tile accuracy counts tiles put in their true
slot, full-permutation accuracy counts images whose 9 tiles are all placed right, using the exact
best one-to-one assignment of tiles to slots. The tiles are then reassembled in the predicted
order and a recognition probe trained on intact scenes classifies the reassembled image: how much
of the scene's meaning the predicted layout restores (next to the intact and the shuffled image).

The tile placement is label-free, so ``folder`` replaces the generated scenes by any folder of
photographs (split into probe-training and test images); the recognition part needs scene labels
and is reported as None there.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np
import torch

from wherevit.train.data.synthetic import SCENE_CLASSES
from wherevit.train.evals.folder import load_folder_images
from wherevit.train.evals.linear import RidgeProbe
from wherevit.train.evals.probes import labelled_scenes, linear_probe
from wherevit.train.evals.spatial import embed_crops

__all__ = ["JigsawConfig", "best_assignment", "evaluate_jigsaw"]


@dataclass
class JigsawConfig:
    n_train: int = 300
    n_test: int = 200
    size: int = 63  # divisible by 3
    tile_size: int = 32  # tiles are resized to this before embedding
    image_size: int = 64  # whole images (intact, shuffled, reassembled) are resized to this for recognition
    train_seed: int = 631
    test_seed: int = 632
    seed: int = 0
    folder: Optional[str] = None  # photographs instead of generated scenes (up to n_train + n_test of them)


def best_assignment(scores: np.ndarray) -> np.ndarray:
    """Exact maximum-score one-to-one assignment (rows -> columns) for a small square matrix (bitmask DP)."""
    n = scores.shape[0]

    @lru_cache(maxsize=None)
    def solve(i: int, used: int) -> tuple[float, tuple[int, ...]]:
        if i == n:
            return 0.0, ()
        best = (-np.inf, ())
        for j in range(n):
            if not used >> j & 1:
                s, rest = solve(i + 1, used | 1 << j)
                if s + scores[i, j] > best[0]:
                    best = (s + scores[i, j], (j,) + rest)
        return best

    return np.array(solve(0, 0)[1])


def _tiles(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) -> (N, 9, S/3, S/3, 3), row-major slots."""
    n, s = images.shape[:2]
    t = s // 3
    return images[:, : 3 * t, : 3 * t].reshape(n, 3, t, 3, t, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, 9, t, t, 3)


def _assemble(tiles: np.ndarray) -> np.ndarray:
    n, _, t = tiles.shape[:3]
    return tiles.reshape(n, 3, 3, t, t, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, 3 * t, 3 * t, 3)


def _embed_tiles(model, tiles: np.ndarray, size: int) -> np.ndarray:
    import cv2

    flat = tiles.reshape(-1, *tiles.shape[2:])
    resized = np.stack([cv2.resize(t, (size, size), interpolation=cv2.INTER_CUBIC) for t in flat])
    return embed_crops(model, resized).reshape(tiles.shape[0], 9, -1)


def _images(cfg: JigsawConfig) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(train images, train labels, test images, test labels); labels are None for a folder."""
    if not cfg.folder:
        tr_x, tr_y = labelled_scenes(cfg.n_train, cfg.size, cfg.train_seed)
        te_x, te_y = labelled_scenes(cfg.n_test, cfg.size, cfg.test_seed)
        return tr_x, tr_y, te_x, te_y
    images = np.stack(load_folder_images(cfg.folder, cfg.size, cfg.n_train + cfg.n_test, min_images=2, seed=cfg.seed))
    # fewer images than asked for: keep the train/test proportion, at least one image each side
    n_tr = min(max(1, round(len(images) * cfg.n_train / (cfg.n_train + cfg.n_test))), len(images) - 1)
    return images[:n_tr], None, images[n_tr:], None


@torch.no_grad()
def evaluate_jigsaw(model: torch.nn.Module, cfg: JigsawConfig | None = None) -> dict:
    cfg = cfg or JigsawConfig()
    rng = np.random.default_rng(cfg.seed)
    tr_x, tr_y, te_x, te_y = _images(cfg)
    tr_z = _embed_tiles(model, _tiles(tr_x), cfg.tile_size)
    slot_probe = RidgeProbe(seed=cfg.seed).fit(tr_z.reshape(-1, tr_z.shape[-1]), np.tile(np.eye(9), (len(tr_z), 1)),
                                               score=lambda y, p: float(np.mean(p.argmax(1) == y.argmax(1))))
    te_tiles = _tiles(te_x)
    perms = np.stack([rng.permutation(9) for _ in range(len(te_x))])  # shuffled[k] = tile perms[k]
    shuffled = np.stack([t[p] for t, p in zip(te_tiles, perms)])
    scores = slot_probe.predict(_embed_tiles(model, shuffled, cfg.tile_size).reshape(-1, tr_z.shape[-1])).reshape(len(te_x), 9, 9)
    assigned = np.stack([best_assignment(s) for s in scores])  # predicted slot of each shuffled tile
    correct = assigned == perms
    placement = {"per_tile_acc": float(correct.mean()), "full_permutation_acc": float(correct.all(1).mean()),
                 "chance_per_tile": 1 / 9, "n_test": len(te_x)}
    if tr_y is None:  # a folder of photographs: no scene labels for the recognition part
        return placement | {"recognition_intact": None, "recognition_shuffled": None, "recognition_reassembled": None,
                            "data": f"folder {cfg.folder}"}
    restored = np.zeros_like(shuffled)
    for i in range(len(te_x)):
        restored[i, assigned[i]] = shuffled[i]
    # recognition: a probe trained on intact scenes, applied to intact / shuffled / reassembled test images
    import cv2

    d = int(model.embed_dim)
    s = cfg.image_size
    cls = lambda x: embed_crops(model, np.stack([cv2.resize(im, (s, s), interpolation=cv2.INTER_LINEAR) for im in x]))[:, :d]
    rec = linear_probe(cls(tr_x), tr_y, len(SCENE_CLASSES))
    acc = lambda x: float((rec(cls(x)) == te_y).mean())
    return placement | {"recognition_intact": acc(te_x), "recognition_shuffled": acc(_assemble(shuffled)),
                        "recognition_reassembled": acc(_assemble(restored))}
