"""Statistics of a study over seeds (numpy only, torch-free): Student-t intervals and paired differences.

A cell of the study table is one metric of one variant over its seeds: its mean and the half-width
of the two-sided 95% Student-t interval, ``t(0.975, n-1) * sd / sqrt(n)`` (sample sd, ddof=1).
A variant is compared with the baseline on the *same* seeds (each seed pairs a baseline run with
a variant run that share their initialisation, data order and evaluation seed), so the interval of
the mean paired difference is the one that says whether the variant differs from the baseline.
A difference whose interval contains 0 is inside the noise.

A table holds many such comparisons (every variant against the baseline on every metric), and at
a 5% level about one in twenty differences that do not exist would still look real. So each cell
also gets the two-sided p-value of its paired t-test (:func:`paired_t_test`), and the p-values of a
whole table are adjusted together (:func:`adjust_pvalues`): Holm's step-down method (the default,
controls the chance of *any* false "better"/"worse" in the table) or Benjamini-Hochberg (controls
the expected share of false ones among those claimed). A verdict is read off the adjusted p-value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["Interval", "TTest", "t_quantile", "t_sf", "t_interval", "paired_difference", "paired_t_test",
           "adjust_pvalues", "CORRECTIONS"]

CORRECTIONS = {"holm": "Holm", "bh": "Benjamini-Hochberg"}  # name in a study file -> name in the table


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with the half-width of its two-sided ``level`` interval (None when n < 2)."""

    mean: float
    half_width: float | None
    n: int
    sd: float | None

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def contains(self, value: float) -> bool:
        """True when ``value`` lies inside the interval (always True without an interval: no evidence)."""
        return self.half_width is None or self.low <= value <= self.high

    def to_dict(self) -> dict:
        return {"mean": self.mean, "half_width": self.half_width, "low": self.low, "high": self.high, "n": self.n, "sd": self.sd}


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_sf(t: float, df: float) -> float:
    """Upper tail P(T > t) of Student's t with ``df`` degrees of freedom (exact, via the incomplete beta)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    return 1.0 - _t_cdf(t, df) if t < 0 else 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t with ``df`` degrees of freedom (bisection on the exact CDF; |error| < 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:  # bracket: heavy tails at df=1 need hi in the thousands for p near 1
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and Student-t ``level`` interval of ``values`` (one value: no interval)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("t_interval of no values")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"t_interval of non-finite values {x.tolist()}")
    n = int(x.size)
    if n < 2:
        return Interval(float(x.mean()), None, n, None)
    sd = float(x.std(ddof=1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(float(x.mean()), half, n, sd)


def paired_difference(variant: Mapping[int, float], baseline: Mapping[int, float], level: float = 0.95) -> Interval | None:
    """Interval of mean(variant[s] - baseline[s]) over the seeds ``s`` both have (None when none are shared)."""
    seeds = sorted(set(variant) & set(baseline))
    if not seeds:
        return None
    return t_interval([variant[s] - baseline[s] for s in seeds], level)


@dataclass(frozen=True)
class TTest:
    """A paired t-test of mean(differences) = 0: statistic, degrees of freedom and two-sided p-value."""

    mean: float
    t: float
    df: int
    p: float

    def to_dict(self) -> dict:
        return {"mean": self.mean, "t": self.t, "df": self.df, "p": self.p}


def paired_t_test(variant: Mapping[int, float], baseline: Mapping[int, float]) -> TTest | None:
    """Two-sided paired t-test of ``variant[s] - baseline[s]`` over the shared seeds (None below two).

    ``t = mean / (sd / sqrt(n))`` with ``n - 1`` degrees of freedom. Differences that are all equal
    have sd 0: p is 1 when they are all 0 and 0 otherwise (no spread can explain them).
    """
    seeds = sorted(set(variant) & set(baseline))
    if len(seeds) < 2:
        return None
    d = np.array([variant[s] - baseline[s] for s in seeds], dtype=np.float64)
    if not np.all(np.isfinite(d)):
        raise ValueError(f"paired_t_test of non-finite differences {d.tolist()}")
    n, mean, sd = len(d), float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        return TTest(mean, 0.0 if mean == 0 else math.copysign(math.inf, mean), n - 1, 1.0 if mean == 0 else 0.0)
    t = mean / (sd / math.sqrt(n))
    return TTest(mean, t, n - 1, min(1.0, 2.0 * t_sf(abs(t), n - 1)))


def adjust_pvalues(p: Sequence[float], method: str = "holm") -> np.ndarray:
    """p-values adjusted for testing them together (one family): ``holm`` or ``bh``.

    Holm: sort ascending, ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j))`` (ranks from 1).
    Benjamini-Hochberg: ``p_adj(i) = min_{j >= i} min(1, m p(j) / j)``. Rejecting where the adjusted
    value is below alpha is the method's test at level alpha. NaN entries (cells without a test) are
    left NaN and not counted in the family.
    """
    if method not in CORRECTIONS:
        raise ValueError(f"unknown multiple-comparison correction {method!r}; choose from {', '.join(CORRECTIONS)}")
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    if m == 0:
        return out
    if np.any((p[idx] < 0) | (p[idx] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[idx].tolist()}")
    order = idx[np.argsort(p[idx], kind="stable")]
    ranked = p[order]
    ranks = np.arange(1, m + 1)
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (m - ranks + 1) * ranked))
    else:
        adj = np.minimum.accumulate(np.minimum(1.0, m * ranked / ranks)[::-1])[::-1]
    out[order] = adj
    return out
