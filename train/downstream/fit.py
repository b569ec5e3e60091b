"""Train a head on frozen features and measure it on held-out data (``wherevit train-head``), for any head task.

Features are extracted once from the frozen backbone (``embed_images``: CLS + patch grid per image
input); the task's head trains on them with AdamW and a cosine schedule. What differs between tasks
(data, head, loss, metrics and their chance-level baseline) is the task's (``tasks/``); this module
is the same loop for all of them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from wherevit.base.config import to_dict
from wherevit.base.io import atomic_write_text, atomic_write_with
from wherevit.train.backbone import embed_images
from wherevit.train.downstream.tasks import HeadSplit, HeadTask, create_head_task

__all__ = ["HeadTrainConfig", "fit_head", "load_task_data", "head_task"]


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


def head_task(task: str | HeadTask) -> HeadTask:
    """A task instance: given, or registered ``task`` with its default options."""
    return task if isinstance(task, HeadTask) else create_head_task(task)


def _batches(n: int, bs: int, rng: np.random.Generator):
    idx = rng.permutation(n)
    for i in range(0, n, bs):
        yield torch.from_numpy(idx[i : i + bs])


def load_task_data(task: str | HeadTask, data: str, cfg: HeadTrainConfig) -> tuple[HeadSplit, HeadSplit]:
    """``data`` is "synthetic" (generated scenes) or a folder in the task's layout -> (train, test) splits."""
    task = head_task(task)
    task.check_data(data)
    if data == "synthetic":
        return (task.synthetic_split(cfg.n_train, cfg.size, cfg.train_seed, cfg.cache_dir),
                task.synthetic_split(cfg.n_test, cfg.size, cfg.test_seed, cfg.cache_dir))
    return task.folder_splits(data, cfg.size)


def fit_head(task: str | HeadTask, backbone: torch.nn.Module, cfg: HeadTrainConfig | None = None, progress: bool = True,
             out_dir: Path | None = None, splits: tuple[HeadSplit, HeadSplit] | None = None) -> tuple[torch.nn.Module, dict]:
    """Train head ``task`` (a registered name or a configured ``HeadTask``) on frozen ``backbone`` features;
    return (head, metrics).

    ``splits`` is a (train, test) pair from ``load_task_data``; default: generated scenes per ``cfg``.
    Steps: extract frozen features -> build the head -> train it -> evaluate against the baseline ->
    save the head and its metrics.
    """
    task = head_task(task)
    cfg = cfg or HeadTrainConfig()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train_split, test_split = splits or load_task_data(task, "synthetic", cfg)
    dim = int(backbone.embed_dim)
    hw = tuple(train_split.images[0].shape[1:3])

    feats = {s: [embed_images(backbone, im) for im in sp.images] for s, sp in (("train", train_split), ("test", test_split))}
    targets = {s: {k: torch.from_numpy(v) for k, v in sp.targets.items()} for s, sp in (("train", train_split), ("test", test_split))}
    head = task.build_head(dim)
    losses = _train(task, head, feats["train"], targets["train"], len(train_split), hw, cfg, rng, progress)
    with torch.no_grad():
        head.eval()
        metrics = task.evaluate(head, feats["test"], targets["train"], targets["test"], hw)
    metrics.update({"task": task.name, "first_loss": losses[0], "last_loss": float(np.mean(losses[-5:])), "config": asdict(cfg)})
    if out_dir is not None:
        _save(Path(out_dir), task, head, metrics, dim, hw)
    return head, metrics


def _train(task: HeadTask, head: torch.nn.Module, feats: list, targets: dict, n: int, hw: tuple[int, int], cfg: HeadTrainConfig,
           rng: np.random.Generator, progress: bool) -> list[float]:
    """AdamW with a cosine schedule over ``cfg.epochs``; returns the per-batch losses."""
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    losses = []
    for _ in tqdm(range(cfg.epochs), desc=f"train-head {task.name}", disable=not progress):
        head.train()
        for idx in _batches(n, cfg.batch_size, rng):
            loss = task.loss(head, [f[idx] for f in feats], {k: v[idx] for k, v in targets.items()}, hw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
    return losses


def _save(out_dir: Path, task: HeadTask, head: torch.nn.Module, metrics: dict, dim: int, hw: tuple[int, int]) -> None:
    """head_<task>.safetensors (with the task's record in its metadata, what export needs) and head_<task>.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    meta = {"wherevit": json.dumps({k: v for k, v in to_dict(task.record(dim, hw)).items() if k != "file"})}
    atomic_write_with(out_dir / f"head_{task.name}.safetensors", lambda tmp: save_file(state, str(tmp), metadata=meta))
    atomic_write_text(out_dir / f"head_{task.name}.json", json.dumps(metrics, indent=2))
