"""Every evaluation of one frozen backbone in one call: the columns of the downstream table.

Depth, segmentation and relative-pose heads on generated 3-D scene pairs, the SP paper's
position/scale and relative-location probes, jigsaw, and the k-NN / linear recognition probes.
``benchmarks/downstream_table.py`` and ``benchmarks/dino_alone_ablation.py`` score backbones with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wherevit.train.downstream.fit import HeadTrainConfig, fit_head
from wherevit.train.evals.jigsaw import JigsawConfig, evaluate_jigsaw
from wherevit.train.evals.probes import evaluate_probes
from wherevit.train.evals.spatial import SpatialEvalConfig, evaluate_spatial

__all__ = ["SUITE_TASKS", "SuiteConfig", "evaluate_suite", "headline_scores"]

SUITE_TASKS = ("depth", "seg", "pose", "spatial", "jigsaw", "probes")


@dataclass
class SuiteConfig:
    size: int = 64  # the backbone's input size for the head tasks and jigsaw
    n_train: int = 400  # scene pairs for the heads
    n_test: int = 150
    epochs: int = 20
    tasks: tuple[str, ...] = SUITE_TASKS


def evaluate_suite(model: torch.nn.Module, cfg: SuiteConfig | None = None) -> dict[str, dict]:
    """Full result dicts by task name, for the tasks in ``cfg.tasks``."""
    cfg = cfg or SuiteConfig()
    unknown = set(cfg.tasks) - set(SUITE_TASKS)
    if unknown:
        raise ValueError(f"unknown evaluation(s) {sorted(unknown)}; choose from {SUITE_TASKS}")
    hc = HeadTrainConfig(n_train=cfg.n_train, n_test=cfg.n_test, size=cfg.size, epochs=cfg.epochs)
    out: dict[str, dict] = {}
    for task in cfg.tasks:
        if task in ("depth", "seg", "pose"):
            out[task] = fit_head(task, model, hc, progress=False)[1]
        elif task == "spatial":
            out[task] = evaluate_spatial(model, SpatialEvalConfig(n_images=400, crop_size=32))
        elif task == "jigsaw":
            out[task] = evaluate_jigsaw(model, JigsawConfig(n_train=200, n_test=150, image_size=cfg.size))
        else:
            out[task] = evaluate_probes(model)
    return out


def headline_scores(results: dict[str, dict]) -> dict[str, float]:
    """One number per column (the table's), from :func:`evaluate_suite`'s result dicts."""
    pick = {
        "depth": {"depth_rmse": "rmse", "depth_abs_rel": "abs_rel"},
        "seg": {"seg_miou": "miou"},
        "pose": {"pose_rot_err_deg": "rot_err_median_deg", "pose_trans_dir_err_deg": "trans_dir_err_median_deg"},
        "jigsaw": {"jigsaw_per_tile": "per_tile_acc", "jigsaw_full_perm": "full_permutation_acc"},
        "probes": {"knn": "knn_acc", "linear": "linear_acc"},
    }
    scores: dict[str, float] = {}
    for task, r in results.items():
        if task == "spatial":
            scores["pos_scale_r2"] = r["position_scale"]["r2_mean"]
            scores["rel_loc_8way"] = r["relative_location"]["acc_8way"]
        else:
            scores |= {name: float(r[key]) for name, key in pick[task].items()}
    return scores
