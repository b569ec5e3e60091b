"""Token masks drawn in the data workers: block (BEiT/iBOT), random and cross-wise patterns, and the
batch-stratified choice of which crops are masked and at what ratio.

Everything here is numpy on one sample's generator, so masks are reproducible per sample (resume
and any number of ranks see the same masks). A mask is a (gh, gw) bool array over the patch grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MASK_PATTERNS", "block_mask", "random_mask", "cross_mask", "make_mask", "stratified_ratios", "MaskPlan", "ContentMasker",
]

MASK_PATTERNS = ("block", "random", "cross")


def _top_up(mask: np.ndarray, n_target: int, rng: np.random.Generator) -> np.ndarray:
    """Add random unmasked sites until ``n_target`` are masked (keeps stratified ratios exact)."""
    short = n_target - int(mask.sum())
    if short > 0:
        free = np.flatnonzero(~mask.reshape(-1))
        mask.reshape(-1)[rng.choice(free, size=min(short, free.size), replace=False)] = True
    return mask


def block_mask(rng: np.random.Generator, grid: tuple[int, int], n_target: int,
               aspect: tuple[float, float] = (0.3, 1 / 0.3), min_area: int | None = None) -> np.ndarray:
    """BEiT-style blocks: rectangles of area >= ``min_area`` (default (min(gh, gw) // 3)^2) and
    log-uniform aspect ratio, added while they fit in the remaining budget; topped up to exactly
    ``n_target`` sites with random ones when no block fits any more."""
    gh, gw = grid
    mask = np.zeros(grid, dtype=bool)
    n_target = min(int(n_target), gh * gw)
    min_area = max(1, min_area if min_area is not None else (min(gh, gw) // 3) ** 2)
    log_ar = (math.log(aspect[0]), math.log(aspect[1]))
    stalls = 0
    while mask.sum() < n_target and stalls < 10:
        budget = n_target - int(mask.sum())
        area = rng.uniform(min_area, max(min_area, budget))
        ar = math.exp(rng.uniform(*log_ar))
        h, w = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
        if 0 < h <= gh and 0 < w <= gw:
            top, left = int(rng.integers(0, gh - h + 1)), int(rng.integers(0, gw - w + 1))
            new = h * w - int(mask[top : top + h, left : left + w].sum())
            if 0 < new <= budget:
                mask[top : top + h, left : left + w] = True
                stalls = 0
                continue
        stalls += 1
    return _top_up(mask, n_target, rng)


def random_mask(rng: np.random.Generator, grid: tuple[int, int], n_target: int) -> np.ndarray:
    """``n_target`` sites chosen uniformly."""
    return _top_up(np.zeros(grid, dtype=bool), min(int(n_target), grid[0] * grid[1]), rng)


def cross_mask(rng: np.random.Generator, grid: tuple[int, int], n_target: int) -> np.ndarray:
    """Whole rows and columns of patches (each pick a row or a column with equal odds) while the
    next line still fits in ``n_target``; the first line is always taken, so a non-zero target
    never gives an empty mask."""
    gh, gw = grid
    mask = np.zeros(grid, dtype=bool)
    rows, cols = list(rng.permutation(gh)), list(rng.permutation(gw))
    while rows or cols:
        use_row = bool(rows) and (not cols or rng.random() < 0.5)
        line = (mask[rows[-1], :] if use_row else mask[:, cols[-1]])
        new = int((~line).sum())
        if mask.any() and mask.sum() + new > n_target:
            break
        if use_row:
            mask[rows.pop(), :] = True
        else:
            mask[:, cols.pop()] = True
        if mask.sum() >= n_target:
            break
    return mask


def make_mask(pattern: str, rng: np.random.Generator, grid: tuple[int, int], n_target: int) -> np.ndarray:
    """A ``pattern`` mask ("block", "random" or "cross") with about ``n_target`` masked sites."""
    if n_target <= 0:
        return np.zeros(grid, dtype=bool)
    if pattern == "block":
        return block_mask(rng, grid, n_target)
    if pattern == "random":
        return random_mask(rng, grid, n_target)
    if pattern == "cross":
        return cross_mask(rng, grid, n_target)
    raise ValueError(f"unknown mask pattern {pattern!r}; choose from {', '.join(MASK_PATTERNS)}")


@dataclass(frozen=True)
class MaskPlan:
    """Which crops of a global batch are masked, and how much (DINOv2's batch-level stratification).

    The ``batch_size * n_crops`` crop slots of a step are permuted by a generator seeded with
    ``(run_seed, step)``; slot rank ``k`` gets quantile ``u = (k + U) / slots``; the crop is masked
    when ``u < probability``, at ratio ``lo + (hi - lo) * u / probability``. So each global batch
    masks the same share of crops at ratios spread evenly over ``ratio``, and the plan depends only
    on the sample's global position: it is the same for any number of ranks and on resume.
    """

    probability: float
    ratio: tuple[float, float]
    n_crops: int
    batch_size: int
    run_seed: int

    def ratios(self, rng: np.random.Generator, position: int | None) -> list[float | None]:
        """Mask ratio per crop of the sample at global ``position`` (None: not masked). Without a
        position (a data set used outside the step sampler) the quantiles are drawn i.i.d."""
        return stratified_ratios(rng, position, self.probability, self.ratio, self.n_crops, self.batch_size, self.run_seed)


def stratified_ratios(rng: np.random.Generator, position: int | None, probability: float, ratio: tuple[float, float],
                      n_crops: int, batch_size: int, run_seed: int) -> list[float | None]:
    """See ``MaskPlan``."""
    slots = batch_size * n_crops
    if position is None:
        ks = None
    else:
        step, j = divmod(int(position), batch_size)
        perm = np.random.default_rng([run_seed, 0x1B07, step]).permutation(slots)
        ks = perm[j * n_crops : (j + 1) * n_crops]
    out: list[float | None] = []
    lo, hi = ratio
    for c in range(n_crops):
        u = rng.random() if ks is None else (ks[c] + rng.random()) / slots
        out.append(lo + (hi - lo) * u / probability if u < probability else None)
    return out


class ContentMasker:
    """Sample hook (picklable) for iBOT: ``sample["global"]["masks"]`` (V, gh, gw) bool, one mask
    per global crop, per ``MaskPlan`` and ``pattern``."""

    def __init__(self, plan: MaskPlan, grid: tuple[int, int], pattern: str = "block"):
        if pattern not in MASK_PATTERNS:  # fail here, not in a data worker at the first masked crop
            raise ValueError(f"unknown mask pattern {pattern!r}; choose from {', '.join(MASK_PATTERNS)}")
        self.plan, self.grid, self.pattern = plan, tuple(grid), pattern

    def __call__(self, sample: dict, img: np.ndarray, rng: np.random.Generator, position: int | None) -> None:
        n = self.grid[0] * self.grid[1]
        masks = np.zeros((self.plan.n_crops, *self.grid), dtype=bool)
        for c, r in enumerate(self.plan.ratios(rng, position)):
            if r is not None:
                masks[c] = make_mask(self.pattern, rng, self.grid, int(round(r * n)))
        sample["global"]["masks"] = masks
