"""Recognition probes on frozen CLS features: k-NN (cosine, k=20, T=0.07, DINO's vote) and a linear
probe (ridge-regularised least squares on one-hot targets, strength chosen on a validation slice).

Labels come from the generated scenes (``scene_label``: 2-3 vs 4-5 objects), so the probes run
anywhere without a data set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from wherevit.train.data.synthetic import SCENE_CLASSES, render_scene, scene_label
from wherevit.train.evals.linear import RidgeProbe
from wherevit.train.evals.spatial import embed_crops

__all__ = ["ProbeConfig", "knn_accuracy", "linear_probe", "labelled_scenes", "evaluate_probes"]


@dataclass
class ProbeConfig:
    n_train: int = 600
    n_test: int = 300
    size: int = 64
    train_seed: int = 515
    test_seed: int = 516
    k: int = 20
    temperature: float = 0.07


def labelled_scenes(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    out = [render_scene(seed * 1_000_003 + i, size, return_meta=True) for i in range(n)]
    return np.stack([o[0] for o in out]), np.array([scene_label(o[1]) for o in out])


def knn_accuracy(train_z: np.ndarray, train_y: np.ndarray, test_z: np.ndarray, test_y: np.ndarray, k: int = 20,
                 temperature: float = 0.07, n_classes: int | None = None) -> float:
    """Weighted k-NN on cosine similarity: each neighbour votes exp(sim / T) for its class."""
    n_classes = n_classes or int(max(train_y.max(), test_y.max()) + 1)
    a = F.normalize(torch.from_numpy(train_z).float(), dim=1)
    b = F.normalize(torch.from_numpy(test_z).float(), dim=1)
    sim, idx = (b @ a.T).topk(min(k, len(a)), dim=1)
    votes = torch.zeros(len(b), n_classes).scatter_add_(1, torch.from_numpy(train_y)[idx], (sim / temperature).exp())
    return float((votes.argmax(1).numpy() == test_y).mean())


def linear_probe(z: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0):
    """Fit a linear classifier on frozen features; returns ``predict(z) -> labels``."""
    probe = RidgeProbe(seed=seed).fit(z, np.eye(n_classes)[y], score=lambda t, p: float(np.mean(p.argmax(1) == t.argmax(1))))
    return lambda q: probe.predict(q).argmax(1)


def evaluate_probes(model: torch.nn.Module, cfg: ProbeConfig | None = None) -> dict:
    cfg = cfg or ProbeConfig()
    tr_x, tr_y = labelled_scenes(cfg.n_train, cfg.size, cfg.train_seed)
    te_x, te_y = labelled_scenes(cfg.n_test, cfg.size, cfg.test_seed)
    d = int(model.embed_dim)
    tr_z, te_z = embed_crops(model, tr_x)[:, :d], embed_crops(model, te_x)[:, :d]  # CLS
    probe = linear_probe(tr_z, tr_y, len(SCENE_CLASSES))
    return {"knn_acc": knn_accuracy(tr_z, tr_y, te_z, te_y, cfg.k, cfg.temperature, len(SCENE_CLASSES)),
            "linear_acc": float((probe(te_z) == te_y).mean()),
            "chance": float(np.bincount(te_y, minlength=len(SCENE_CLASSES)).max() / len(te_y)), "classes": list(SCENE_CLASSES)}
