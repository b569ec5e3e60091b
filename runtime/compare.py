"""Output comparison with stated tolerances (torch-free), shared by export, bench and tests.

``compare(reference, candidate, rtol)`` compares outputs by name and returns a ``Comparison`` that
is truthy when every output passes: max and mean absolute error, relative L2 error and the 99th
percentile of the elementwise absolute error are reported; the pass criterion is relative L2 error
<= ``rtol`` (robust to the few large elements a max-abs test over-weights).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np

__all__ = ["OutputError", "Comparison", "compare", "DEFAULT_RTOL"]

# Relative L2 error bounds by precision: fp32 graphs differ from PyTorch only by op order.
DEFAULT_RTOL = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 3e-2}


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

    def to_dict(self) -> dict:
        return {"passed": bool(self), "outputs": [asdict(o) for o in self.outputs], "missing": self.missing}

    def summary(self) -> str:
        lines = [f"{'output':<22} {'shape':<18} {'max_abs':>10} {'mean_abs':>10} {'rel_l2':>10} {'p99_abs':>10}  result"]
        for o in self.outputs:
            lines.append(f"{o.name:<22} {str(o.shape):<18} {o.max_abs:10.3e} {o.mean_abs:10.3e} {o.rel_l2:10.3e} "
                         f"{o.p99_abs:10.3e}  {'ok' if o.passed else f'FAIL (rel_l2 > {o.rtol:g})'}")
        for m in self.missing:
            lines.append(f"{m:<22} missing from the candidate outputs")
        if not self.outputs:
            lines.append("no common outputs were compared: FAIL")
        return "\n".join(lines)


def compare(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], rtol: float) -> Comparison:
    """Compare ``candidate`` outputs against ``reference`` outputs of the same names and shapes."""
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
            res.outputs.append(OutputError(name, list(c.shape), float("inf"), float("inf"), float("inf"), float("inf"), rtol, False))
            continue
        diff = np.abs(r - c)
        rel = float(np.linalg.norm(diff) / max(np.linalg.norm(r), 1e-12))
        finite = bool(np.isfinite(c).all())
        res.outputs.append(OutputError(
            name, list(r.shape), float(diff.max(initial=0)), float(diff.mean()) if diff.size else 0.0, rel,
            float(np.percentile(diff, 99)) if diff.size else 0.0, rtol, finite and rel <= rtol,
        ))
    return res
