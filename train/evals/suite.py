"""Every evaluation of one frozen backbone in one call: the columns of the downstream table.

Every registered head task (depth, segmentation, relative pose, ...: ``train/downstream/tasks``) on
generated 3-D scene pairs, the SP paper's position/scale and relative-location probes, jigsaw, and
the k-NN / linear recognition probes.
``benchmarks/downstream_table.py``, ``benchmarks/dino_alone_ablation.py`` and the plug-in study
(``wherevit study``) score backbones with it. The label-free tasks (spatial, jigsaw) run on a
folder of photographs when ``folder`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from wherevit.train.downstream.fit import HeadTrainConfig, fit_head
from wherevit.train.downstream.tasks import HEAD_TASKS, HeadTask
from wherevit.train.evals.jigsaw import JigsawConfig, evaluate_jigsaw
from wherevit.train.evals.probes import ProbeConfig, evaluate_probes
from wherevit.train.evals.spatial import SpatialEvalConfig, evaluate_spatial

__all__ = ["SUITE_TASKS", "METRICS", "SuiteConfig", "evaluate_suite", "headline_scores", "chance_scores", "suite_tasks",
           "metric_columns"]


@dataclass(frozen=True)
class _Evaluation:
    """One evaluation of the suite that is not a head task: how it runs, its columns, and their chance values."""

    run: Callable[[torch.nn.Module, "SuiteConfig"], dict]
    columns: dict[str, tuple[str, bool]]  # headline metric -> (title, higher is better), in table order
    headline: Callable[[dict], dict[str, float]]
    chance: Callable[[dict], dict[str, float]] = field(default=lambda r: {})


# The label-free evaluations, after the head tasks (the table's column order). Chance: R^2 of predicting
# the mean (0); 8-way: 1/8; jigsaw: 1/9 per tile and 1/9! for the full permutation; probes: the majority class.
_EVALUATIONS: dict[str, _Evaluation] = {
    "spatial": _Evaluation(
        lambda m, c: evaluate_spatial(m, SpatialEvalConfig(n_images=c.spatial_images, crop_size=c.spatial_crop, folder=c.folder)),
        {"pos_scale_r2": ("pos/scale R^2", True), "rel_loc_8way": ("8-way rel. loc.", True)},
        lambda r: {"pos_scale_r2": r["position_scale"]["r2_mean"], "rel_loc_8way": r["relative_location"]["acc_8way"]},
        lambda r: {"pos_scale_r2": 0.0, "rel_loc_8way": float(r["relative_location"]["chance"])}),
    "jigsaw": _Evaluation(
        lambda m, c: evaluate_jigsaw(m, JigsawConfig(n_train=c.jigsaw_train, n_test=c.jigsaw_test, image_size=c.size, seed=c.seed,
                                                     folder=c.folder)),
        {"jigsaw_per_tile": ("jigsaw per-tile", True), "jigsaw_full_perm": ("jigsaw full perm.", True)},
        lambda r: {"jigsaw_per_tile": float(r["per_tile_acc"]), "jigsaw_full_perm": float(r["full_permutation_acc"])},
        lambda r: {"jigsaw_per_tile": float(r["chance_per_tile"]), "jigsaw_full_perm": 1.0 / 362880}),
    "probes": _Evaluation(
        lambda m, c: evaluate_probes(m, ProbeConfig(n_train=c.probe_train, n_test=c.probe_test, size=c.size)),
        {"knn": ("k-NN", True), "linear": ("linear", True)},
        lambda r: {"knn": float(r["knn_acc"]), "linear": float(r["linear_acc"])},
        lambda r: {"knn": float(r["chance"]), "linear": float(r["chance"])}),
}


def suite_tasks() -> tuple[str, ...]:
    """Every evaluation the suite can run: the registered head tasks, then the label-free evaluations."""
    return (*HEAD_TASKS.items(), *_EVALUATIONS)


def metric_columns() -> dict[str, tuple[str, str, bool]]:
    """Headline metric -> (task, title, higher is better): the table's columns, in order."""
    cols = {name: (task, c.title, c.higher_is_better) for task, cls in HEAD_TASKS.items().items() for name, c in cls.columns.items()}
    return cols | {name: (task, title, hib) for task, ev in _EVALUATIONS.items() for name, (title, hib) in ev.columns.items()}


SUITE_TASKS = suite_tasks()  # the built-ins at import; suite_tasks() also sees head tasks registered later
METRICS: dict[str, tuple[str, str, bool]] = metric_columns()


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
        known = suite_tasks()
        unknown = set(self.tasks) - set(known)
        if unknown:
            raise ValueError(f"unknown evaluation(s) {sorted(unknown)}; choose from {known}")
        if not self.tasks:
            raise ValueError("tasks is empty: name at least one evaluation")
        for name in ("size", "n_train", "n_test", "epochs", "spatial_images", "spatial_crop", "jigsaw_train",
                     "jigsaw_test", "probe_train", "probe_test"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def _head_task(name: str) -> HeadTask | None:
    return HEAD_TASKS.get(name)() if name not in _EVALUATIONS else None


def evaluate_suite(model: torch.nn.Module, cfg: SuiteConfig | None = None) -> dict[str, dict]:
    """Full result dicts by task name, for the tasks in ``cfg.tasks``."""
    cfg = cfg or SuiteConfig()
    cfg.validate()
    hc = HeadTrainConfig(n_train=cfg.n_train, n_test=cfg.n_test, size=cfg.size, epochs=cfg.epochs, seed=cfg.seed,
                         cache_dir=cfg.cache_dir)
    out: dict[str, dict] = {}
    for task in cfg.tasks:
        head = _head_task(task)
        out[task] = fit_head(head, model, hc, progress=False)[1] if head is not None else _EVALUATIONS[task].run(model, cfg)
    return out


def headline_scores(results: dict[str, dict]) -> dict[str, float]:
    """One number per column (the table's), from :func:`evaluate_suite`'s result dicts."""
    scores: dict[str, float] = {}
    for task, r in results.items():
        head = _head_task(task)
        scores |= head.headline(r) if head is not None else _EVALUATIONS[task].headline(r)
    return scores


def chance_scores(results: dict[str, dict]) -> dict[str, float]:
    """The chance / trivial-baseline value of every headline metric, read off one backbone's results.

    Heads: the baseline each result carries (mean depth, majority class, mean pose), computed on the
    same split; the label-free evaluations: see ``_EVALUATIONS``.
    """
    scores: dict[str, float] = {}
    for task, r in results.items():
        head = _head_task(task)
        scores |= head.chance(r) if head is not None else _EVALUATIONS[task].chance(r)
    return scores

