"""Precomputed per-step schedules (dinov2 style): the loop only indexes arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wherevit.train.config import TrainConfig

__all__ = ["cosine_schedule", "Schedules"]


def cosine_schedule(start: float, end: float, total: int, warmup: int = 0, warmup_start: float = 0.0) -> np.ndarray:
    """``total`` values: linear warm-up from ``warmup_start`` to ``start`` over ``warmup`` steps,
    then a half cosine from ``start`` to ``end``."""
    warmup = min(warmup, total)
    warm = np.linspace(warmup_start, start, warmup, endpoint=False) if warmup else np.array([])
    n = total - warmup
    t = np.arange(n) / max(n - 1, 1)
    cos = end + 0.5 * (start - end) * (1 + np.cos(np.pi * t))
    return np.concatenate([warm, cos]).astype(np.float64)


@dataclass
class Schedules:
    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "Schedules":
        T = cfg.total_steps
        o, d = cfg.optim, cfg.dino
        lr = o.base_lr * cfg.data.global_batch_size / 256.0
        warm = o.warmup_steps or max(1, T // 10)
        t_warm = min(d.warmup_teacher_temp_steps or max(1, int(0.3 * T)), T)
        temp = np.concatenate([
            np.linspace(d.warmup_teacher_temp, d.teacher_temp, t_warm),
            np.full(T - t_warm, d.teacher_temp),
        ])
        return cls(
            lr=cosine_schedule(lr, o.min_lr, T, warm),
            weight_decay=cosine_schedule(o.weight_decay, o.weight_decay_end, T),
            momentum=cosine_schedule(d.momentum_teacher, d.momentum_teacher_end, T),
            teacher_temp=temp,
        )
