"""Train a head on frozen features and measure it on held-out scenes (``wherevit train-head``).

Features are extracted once from the frozen backbone (``embed_images``) (CLS + patch grid per view); the head trains
on them with AdamW. Every result carries a chance-level baseline computed on the same split:
depth -> predicting the training set's mean depth everywhere; segmentation -> predicting the most
frequent training class everywhere; pose -> predicting the mean training rotation and translation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from wherevit.base.io import atomic_write_text, atomic_write_with
from wherevit.train.backbone import embed_images
from wherevit.train.data.scenes3d import CLASSES
from wherevit.train.downstream.datasets import folder_splits, synthetic_splits
from wherevit.train.downstream.heads import (
    DepthBinsHead,
    LinearSegHead,
    RelPoseHead,
    geodesic_loss,
    silog_loss,
)
from wherevit.train.evals.dense_metrics import (
    confusion_matrix,
    depth_metrics,
    mean_iou,
    pose_metrics,
)

__all__ = ["HeadTrainConfig", "TASKS", "fit_head", "load_task_data"]

TASKS = ("depth", "seg", "pose")


@dataclass
class HeadTrainConfig:
    n_train: int = 600  # scene pairs (each gives two views)
    n_test: int = 200
    size: int = 64
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    train_seed: int = 71  # scene seeds: disjoint from each other and from pretraining data
    test_seed: int = 72
    cache_dir: str | None = None


def _batches(n: int, bs: int, rng: np.random.Generator):
    idx = rng.permutation(n)
    for i in range(0, n, bs):
        yield torch.from_numpy(idx[i : i + bs])


def load_task_data(task: str, data: str, cfg: HeadTrainConfig, n_classes: int = len(CLASSES), reduce_zero_label: bool = False):
    """``data`` is "synthetic" (generated scenes) or a folder in the task's layout -> (train, test) splits."""
    if data == "synthetic":
        return synthetic_splits(task, cfg.n_train, cfg.n_test, cfg.size, cfg.train_seed, cfg.test_seed, cfg.cache_dir)
    return folder_splits(task, data, cfg.size, n_classes, reduce_zero_label)


def fit_head(task: str, backbone: torch.nn.Module, cfg: HeadTrainConfig | None = None, progress: bool = True,
             out_dir: Path | None = None, splits: tuple | None = None, n_classes: int = len(CLASSES),
             class_names: list[str] | None = None) -> tuple[torch.nn.Module, dict]:
    """Train head ``task`` ("depth", "seg", "pose") on frozen ``backbone`` features; return (head, metrics).

    ``splits`` is a (train, test) pair from ``load_task_data``; default: generated scenes per ``cfg``.
    Steps: extract frozen features -> build the head -> train it -> evaluate against the baseline ->
    save the head and its metrics.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    cfg = cfg or HeadTrainConfig()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train_split, test_split = splits or load_task_data(task, "synthetic", cfg)
    dim = int(backbone.embed_dim)
    hw = tuple((train_split.rgb_a if task == "pose" else train_split.rgb).shape[1:3])
    class_names = class_names or (list(CLASSES) if n_classes == len(CLASSES) else [str(i) for i in range(n_classes)])

    data = _extract(task, backbone, train_split, test_split)
    head = RelPoseHead(dim) if task == "pose" else DepthBinsHead(dim) if task == "depth" else LinearSegHead(dim, n_classes)
    losses = _train(task, head, data, hw, cfg, rng, progress)
    metrics = _evaluate(task, head, data, hw, n_classes)
    if task == "seg":
        metrics["classes"] = class_names
    metrics.update({"task": task, "first_loss": losses[0], "last_loss": float(np.mean(losses[-5:])), "config": asdict(cfg)})
    if out_dir is not None:
        _save(Path(out_dir), task, head, metrics, dim, class_names, n_classes, hw)
    return head, metrics


@dataclass
class _TaskData:
    """Frozen features and targets per split ("train", "test"); pose features are (view a, view b)."""

    feats: dict
    targets: dict
    n_train: int


def _extract(task: str, backbone: torch.nn.Module, train_split, test_split) -> _TaskData:
    """Frozen backbone features (extracted once) and the targets as tensors."""
    splits = (("train", train_split), ("test", test_split))
    if task == "pose":
        feats = {s: [embed_images(backbone, sp.rgb_a), embed_images(backbone, sp.rgb_b)] for s, sp in splits}
        targets = {s: torch.from_numpy(sp.T_ab.astype(np.float32)) for s, sp in splits}
    else:
        feats = {s: embed_images(backbone, sp.rgb) for s, sp in splits}
        targets = {s: torch.from_numpy(sp.depth.astype(np.float32) if task == "depth" else sp.labels.astype(np.int64))
                   for s, sp in splits}
    return _TaskData(feats, targets, len(targets["train"]))


def _loss(task: str, head: torch.nn.Module, data: _TaskData, idx: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if task == "pose":
        fa, fb = (f[idx] for f in data.feats["train"])
        R, t = head(fa, fb)
        Tg = data.targets["train"][idx]
        return geodesic_loss(R, Tg[:, :3, :3]) + F.l1_loss(t, Tg[:, :3, 3])
    if task == "depth":
        return silog_loss(head(data.feats["train"][idx], hw), data.targets["train"][idx])
    return F.cross_entropy(head(data.feats["train"][idx], hw), data.targets["train"][idx], ignore_index=255)


def _train(task: str, head: torch.nn.Module, data: _TaskData, hw: tuple[int, int], cfg: HeadTrainConfig,
           rng: np.random.Generator, progress: bool) -> list[float]:
    """AdamW with a cosine schedule over ``cfg.epochs``; returns the per-batch losses."""
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    losses = []
    for _ in tqdm(range(cfg.epochs), desc=f"train-head {task}", disable=not progress):
        head.train()
        for idx in _batches(data.n_train, cfg.batch_size, rng):
            loss = _loss(task, head, data, idx, hw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
    return losses


@torch.no_grad()
def _evaluate(task: str, head: torch.nn.Module, data: _TaskData, hw: tuple[int, int], n_classes: int) -> dict:
    """Test metrics, with the chance-level baseline (see the module docstring) under "baseline"."""
    head.eval()
    if task == "pose":
        R, t = head(*data.feats["test"])
        Tg = data.targets["test"].numpy()
        metrics = pose_metrics(R.numpy(), t.numpy(), Tg[:, :3, :3], Tg[:, :3, 3])
        Ttr = data.targets["train"].numpy()
        U, _, Vt = np.linalg.svd(Ttr[:, :3, :3].mean(0))  # chordal mean rotation
        R_mean = np.broadcast_to(U @ Vt, Tg[:, :3, :3].shape)
        t_mean = np.broadcast_to(Ttr[:, :3, 3].mean(0), Tg[:, :3, 3].shape)
        metrics["baseline"] = pose_metrics(R_mean, t_mean, Tg[:, :3, :3], Tg[:, :3, 3])
        return metrics
    test = data.feats["test"]
    n_test = len(data.targets["test"])
    pred = torch.cat([head(test[i : i + 256], hw) for i in range(0, n_test, 256)])
    gt = data.targets["test"].numpy()
    tr = data.targets["train"].numpy()
    if task == "depth":
        metrics = depth_metrics(pred.numpy(), gt)
        metrics["baseline"] = depth_metrics(np.full_like(gt, tr[tr > 0].mean()), gt)
        return metrics
    metrics = mean_iou(confusion_matrix(pred.argmax(1).numpy(), gt, n_classes))
    tr = tr.reshape(-1)
    majority = np.bincount(tr[tr != 255], minlength=n_classes).argmax()
    metrics["baseline"] = mean_iou(confusion_matrix(np.full_like(gt, majority), gt, n_classes))
    return metrics


def _save(out_dir: Path, task: str, head: torch.nn.Module, metrics: dict, dim: int, class_names: list[str],
          n_classes: int, hw: tuple[int, int]) -> None:
    """head_<task>.safetensors (with what export needs in its metadata) and head_<task>.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    meta = {"wherevit": json.dumps({"format": "wherevit.head/1", "task": task, "embed_dim": dim, "classes": class_names,
                                    "n_classes": n_classes, "image_size": list(hw)})}
    atomic_write_with(out_dir / f"head_{task}.safetensors", lambda tmp: save_file(state, str(tmp), metadata=meta))
    atomic_write_text(out_dir / f"head_{task}.json", json.dumps(metrics, indent=2))
