"""Every evaluation of one frozen backbone in one call: the columns of the downstream table.

Depth, segmentation and relative-pose heads on generated 3-D scene pairs, the SP paper's
position/scale and relative-location probes, jigsaw, and the k-NN / linear recognition probes.
``benchmarks/downstream_table.py``, ``benchmarks/dino_alone_ablation.py`` and the plug-in study
(``wherevit study``) score backbones with it. The label-free tasks (spatial, jigsaw) run on a
folder of photographs when ``folder`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from wherevit.train.downstream.fit import HeadTrainConfig, fit_head
from wherevit.train.evals.jigsaw import JigsawConfig, evaluate_jigsaw
from wherevit.train.evals.probes import ProbeConfig, evaluate_probes
from wherevit.train.evals.spatial import SpatialEvalConfig, evaluate_spatial

__all__ = ["SUITE_TASKS", "METRICS", "SuiteConfig", "evaluate_suite", "headline_scores", "chance_scores"]

SUITE_TASKS = ("depth", "seg", "pose", "spatial", "jigsaw", "probes")

# headline metric -> (task, title, higher is better): the table's columns, in order
METRICS: dict[str, tuple[str, str, bool]] = {
    "depth_rmse": ("depth", "depth RMSE (m)", False),
    "depth_abs_rel": ("depth", "depth AbsRel", False),
    "seg_miou": ("seg", "seg mIoU", True),
    "pose_rot_err_deg": ("pose", "pose rot. err (deg)", False),
    "pose_trans_dir_err_deg": ("pose", "pose transl. dir. err (deg)", False),
    "pos_scale_r2": ("spatial", "pos/scale R^2", True),
    "rel_loc_8way": ("spatial", "8-way rel. loc.", True),
    "jigsaw_per_tile": ("jigsaw", "jigsaw per-tile", True),
    "jigsaw_full_perm": ("jigsaw", "jigsaw full perm.", True),
    "knn": ("probes", "k-NN", True),
    "linear": ("probes", "linear", True),
}


@dataclass
class SuiteConfig:
    size: int = 64  # the backbone's input size for the head tasks and jigsaw
    n_train: int = 400  # scene pairs for the heads
    n_test: int = 150
    epochs: int = 20
    tasks: tuple[str, ...] = SUITE_TASKS
    spatial_images: int = 400  # held-out images for position/scale and 8-way (half fit the probe)
    spatial_crop: int = 32
    jigsaw_train: int = 200
    jigsaw_test: int = 150
    probe_train: int = 600
    probe_test: int = 300
    seed: int = 0  # head training, jigsaw shuffles and probe validation splits (not the evaluation data)
    folder: Optional[str] = None  # photographs for the label-free tasks (spatial, jigsaw) instead of generated scenes
    cache_dir: Optional[str] = None  # rendered 3-D scenes for the heads (default: ~/.cache/wherevit)

    def validate(self) -> None:
        unknown = set(self.tasks) - set(SUITE_TASKS)
        if unknown:
            raise ValueError(f"unknown evaluation(s) {sorted(unknown)}; choose from {SUITE_TASKS}")
        if not self.tasks:
            raise ValueError("tasks is empty: name at least one evaluation")
        for name in ("size", "n_train", "n_test", "epochs", "spatial_images", "spatial_crop", "jigsaw_train",
                     "jigsaw_test", "probe_train", "probe_test"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def evaluate_suite(model: torch.nn.Module, cfg: SuiteConfig | None = None) -> dict[str, dict]:
    """Full result dicts by task name, for the tasks in ``cfg.tasks``."""
    cfg = cfg or SuiteConfig()
    cfg.validate()
    hc = HeadTrainConfig(n_train=cfg.n_train, n_test=cfg.n_test, size=cfg.size, epochs=cfg.epochs, seed=cfg.seed,
                         cache_dir=cfg.cache_dir)
    out: dict[str, dict] = {}
    for task in cfg.tasks:
        if task in ("depth", "seg", "pose"):
            out[task] = fit_head(task, model, hc, progress=False)[1]
        elif task == "spatial":
            out[task] = evaluate_spatial(model, SpatialEvalConfig(n_images=cfg.spatial_images, crop_size=cfg.spatial_crop,
                                                                  folder=cfg.folder))
        elif task == "jigsaw":
            out[task] = evaluate_jigsaw(model, JigsawConfig(n_train=cfg.jigsaw_train, n_test=cfg.jigsaw_test,
                                                            image_size=cfg.size, seed=cfg.seed, folder=cfg.folder))
        else:
            out[task] = evaluate_probes(model, ProbeConfig(n_train=cfg.probe_train, n_test=cfg.probe_test, size=cfg.size))
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


def chance_scores(results: dict[str, dict]) -> dict[str, float]:
    """The chance / trivial-baseline value of every headline metric, read off one backbone's results.

    Heads: the baseline each result carries (mean depth, majority class, mean pose), computed on the
    same split; position/scale: R^2 of predicting the mean (0); 8-way: 1/8; jigsaw: 1/9 per tile and
    1/9! for the full permutation; probes: the majority class.
    """
    scores: dict[str, float] = {}
    for task, r in results.items():
        if task == "depth":
            scores |= {"depth_rmse": float(r["baseline"]["rmse"]), "depth_abs_rel": float(r["baseline"]["abs_rel"])}
        elif task == "seg":
            scores["seg_miou"] = float(r["baseline"]["miou"])
        elif task == "pose":
            scores |= {"pose_rot_err_deg": float(r["baseline"]["rot_err_median_deg"]),
                       "pose_trans_dir_err_deg": float(r["baseline"]["trans_dir_err_median_deg"])}
        elif task == "spatial":
            scores |= {"pos_scale_r2": 0.0, "rel_loc_8way": float(r["relative_location"]["chance"])}
        elif task == "jigsaw":
            scores |= {"jigsaw_per_tile": float(r["chance_per_tile"]), "jigsaw_full_perm": 1.0 / 362880}
        else:
            scores |= {"knn": float(r["chance"]), "linear": float(r["chance"])}
    return scores
