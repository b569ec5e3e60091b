"""Output comparison with stated tolerances (torch-free), shared by export, bench and tests.

``compare(reference, candidate, rtol)`` compares outputs by name and returns a ``Comparison`` that
is truthy when every output passes: max and mean absolute error, relative L2 error and the 99th
percentile of the elementwise absolute error are reported; the pass criterion is relative L2 error
<= ``rtol`` (robust to the few large elements a max-abs test over-weights).

``compare(..., min_cosine=c)`` is the criterion for quantised artifacts, whose elementwise errors
are large by design while the embeddings' directions must hold: per sample (each output flattened
beyond the batch axis) the cosine similarity to the reference, reported as mean and minimum over
samples; an output passes when the minimum is >= ``c`` (Polygraphy's cosine-similarity check,
taken per sample so one bad image cannot hide in a batch average).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np

from wherevit.base.precision import DEFAULT_MIN_COSINE, PRECISIONS

__all__ = ["OutputError", "Comparison", "compare", "cosine_per_sample", "DEFAULT_RTOL", "DEFAULT_MIN_COSINE"]

# The bounds are the precision table's (base/precision.py): relative L2 by float precision (fp32 graphs
# differ from PyTorch only by op order), and the per-sample cosine bound of quantised graphs and
# mixed-precision (bf16) bench rows.
DEFAULT_RTOL = {name: p.rtol for name, p in PRECISIONS.items() if p.rtol is not None}


@dataclass
class OutputError:
    name: str
    shape: list[int]
    max_abs: float
    mean_abs: float
    rel_l2: float
    p99_abs: float
    rtol: float
    passed: bool
    cos_mean: float | None = None  # per-sample cosine similarity (set when compared with min_cosine)
    cos_min: float | None = None
    min_cosine: float | None = None


@dataclass
class Comparison:
    outputs: list[OutputError] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        # Polygraphy's rule: a comparison that compared nothing is no evidence, so it fails.
        return bool(self.outputs) and not self.missing and all(o.passed for o in self.outputs)

    @property
    def worst_rel_l2(self) -> float:
        return max((o.rel_l2 for o in self.outputs), default=float("nan"))

    @property
    def worst_cosine(self) -> float | None:
        """The lowest per-sample cosine over outputs (None when not compared by cosine)."""
        vals = [o.cos_min for o in self.outputs if o.cos_min is not None]
        return min(vals) if vals else None

    def to_dict(self) -> dict:
        return {"passed": bool(self), "outputs": [asdict(o) for o in self.outputs], "missing": self.missing}

    def summary(self) -> str:
        if any(o.min_cosine is not None for o in self.outputs):
            lines = [f"{'output':<22} {'shape':<18} {'cos_mean':>10} {'cos_min':>10} {'rel_l2':>10} {'max_abs':>10}  result"]
            for o in self.outputs:
                lines.append(f"{o.name:<22} {str(o.shape):<18} {o.cos_mean:10.5f} {o.cos_min:10.5f} {o.rel_l2:10.3e} "
                             f"{o.max_abs:10.3e}  {'ok' if o.passed else f'FAIL (min cosine < {o.min_cosine:g})'}")
            lines += [f"{m:<22} missing from the candidate outputs" for m in self.missing]
            return "\n".join(lines)
        lines = [f"{'output':<22} {'shape':<18} {'max_abs':>10} {'mean_abs':>10} {'rel_l2':>10} {'p99_abs':>10}  result"]
        for o in self.outputs:
            lines.append(f"{o.name:<22} {str(o.shape):<18} {o.max_abs:10.3e} {o.mean_abs:10.3e} {o.rel_l2:10.3e} "
                         f"{o.p99_abs:10.3e}  {'ok' if o.passed else f'FAIL (rel_l2 > {o.rtol:g})'}")
        for m in self.missing:
            lines.append(f"{m:<22} missing from the candidate outputs")
        if not self.outputs:
            lines.append("no common outputs were compared: FAIL")
        return "\n".join(lines)


def cosine_per_sample(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity per sample (axis 0), each sample flattened; two all-zero samples count as 1."""
    r = np.asarray(reference, np.float64).reshape(len(reference), -1)
    c = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    nr, nc = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
    dot = (r * c).sum(1)
    both_zero = (nr == 0) & (nc == 0)
    return np.where(both_zero, 1.0, dot / np.maximum(nr * nc, 1e-30))


def compare(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], rtol: float = float("inf"),
            min_cosine: float | None = None) -> Comparison:
    """Compare ``candidate`` outputs against ``reference`` outputs of the same names and shapes.

    Pass criterion: relative L2 error <= ``rtol``; with ``min_cosine``, instead the minimum
    per-sample cosine similarity >= ``min_cosine`` (the quantised-artifact criterion)."""
    res = Comparison()
    if not reference:
        raise ValueError("compare() needs at least one reference output")
    for name, ref in reference.items():
        if name not in candidate:
            res.missing.append(name)
            continue
        r = np.asarray(ref, np.float64)
        c = np.asarray(candidate[name], np.float64)
        if r.shape != c.shape:
            nan = float("nan") if min_cosine is not None else None
            res.outputs.append(OutputError(name, list(c.shape), float("inf"), float("inf"), float("inf"), float("inf"), rtol, False,
                                           nan, nan, min_cosine))
            continue
        diff = np.abs(r - c)
        rel = float(np.linalg.norm(diff) / max(np.linalg.norm(r), 1e-12))
        finite = bool(np.isfinite(c).all())
        out = OutputError(
            name, list(r.shape), float(diff.max(initial=0)), float(diff.mean()) if diff.size else 0.0, rel,
            float(np.percentile(diff, 99)) if diff.size else 0.0, rtol, finite and rel <= rtol,
        )
        if min_cosine is not None:
            cos = cosine_per_sample(r, c) if r.ndim and len(r) else np.ones(1)
            out.cos_mean, out.cos_min, out.min_cosine = float(cos.mean()), float(cos.min()), min_cosine
            out.passed = finite and out.cos_min >= min_cosine
        res.outputs.append(out)
    return res
