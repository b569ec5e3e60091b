"""A study's report: per-cell intervals, paired differences against the baseline, the results file,
a Markdown table and a plot (torch-free; matplotlib only for the plot).

Each cell is one metric of one variant over its seeds (mean, 95% Student-t interval). Each variant
is compared with the baseline on the seeds both have: the mean paired difference with its 95%
interval, and the two-sided p-value of the paired t-test. The p-values of one table (every
comparison it marks) are adjusted together for multiple comparisons (Holm by default, or
Benjamini-Hochberg; the study file's ``correction``), and a verdict is read off the *adjusted*
p-value: "better"/"worse" (by the metric's direction) below 1 - level, "noise" otherwise, "n/a"
below two shared seeds. The table bolds only the differences that survive the correction; the
contrasts table is a second family, corrected on its own.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from wherevit.base.cpu import parse_cpu_flags
from wherevit.base.io import atomic_write_text, atomic_write_with
from wherevit.train.study.stats import CORRECTIONS, adjust_pvalues, paired_difference, paired_t_test, t_interval

__all__ = ["summarise", "markdown_table", "plot_study", "machine_info", "package_versions", "write_report"]

# the ISA features that decide CPU kernel speed (what /proc/cpuinfo calls them)
_ISA = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
        "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "sve")


def _values_by_variant(variants: Sequence[Mapping[str, Any]], baseline: str, records: Sequence[Mapping[str, Any]]
                       ) -> dict[str, dict[str, dict[int, float]]]:
    """variant -> metric -> seed -> value; chance rows read each seed's trivial baselines off a scored run."""
    out: dict[str, dict[str, dict[int, float]]] = {v["name"]: {} for v in variants}
    chance_src: dict[int, Mapping[str, float]] = {}
    for r in records:
        for metric, value in r["scores"].items():
            out.setdefault(r["variant"], {}).setdefault(metric, {})[int(r["seed"])] = float(value)
        if r["variant"] == baseline or int(r["seed"]) not in chance_src:
            chance_src[int(r["seed"])] = r.get("chance", {})
    for v in variants:
        if v.get("kind") == "chance":
            for seed, chance in chance_src.items():
                for metric, value in chance.items():
                    out[v["name"]].setdefault(metric, {})[seed] = float(value)
    return out


def summarise(variants: Sequence[Mapping[str, Any]], baseline: str, records: Sequence[Mapping[str, Any]],
              metrics: Mapping[str, tuple[str, str, bool]], level: float = 0.95,
              contrasts_of: Mapping[str, str] | None = None, correction: str = "holm") -> dict[str, Any]:
    """Intervals, paired differences and corrected verdicts for every (variant, metric) with values.

    ``variants``: dicts with ``name`` and ``kind``; ``metrics``: name -> (task, title, higher is better);
    ``contrasts_of``: variant -> its own reference variant (e.g. a plug-in on the iBOT host against
    DINO + iBOT), whose paired differences go to ``contrasts`` beside the baseline's. ``correction``
    (``holm`` or ``bh``) adjusts the p-values of each table as one family.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown multiple-comparison correction {correction!r}; choose from {', '.join(CORRECTIONS)}")
    values = _values_by_variant(variants, baseline, records)
    base = values.get(baseline, {})
    cells: dict[str, dict[str, Any]] = {}
    for v in variants:
        name = v["name"]
        cells[name] = {}
        for metric, (_task, _title, higher) in metrics.items():
            vals = values.get(name, {}).get(metric)
            if not vals:
                continue
            cell: dict[str, Any] = {"values": {str(s): x for s, x in sorted(vals.items())},
                                    "interval": t_interval(list(vals.values()), level).to_dict()}
            if name == baseline:
                cell["verdict"] = "baseline"
            else:
                cell |= _compare(vals, base.get(metric, {}), higher, level)
            cells[name][metric] = cell
    contrasts = []
    for name, ref in (contrasts_of or {}).items():
        rows = {}
        for metric, (_task, _title, higher) in metrics.items():
            vals, ref_vals = values.get(name, {}).get(metric), values.get(ref, {}).get(metric)
            if vals and ref_vals:
                rows[metric] = _compare(vals, ref_vals, higher, level)
        contrasts.append({"variant": name, "reference": ref, "cells": rows})
    alpha = 1.0 - level
    family = _correct([c for n in cells for c in cells[n].values() if c.get("verdict") != "baseline"], correction, alpha)
    contrast_family = _correct([c for con in contrasts for c in con["cells"].values()], correction, alpha)
    return {"level": level, "baseline": baseline, "kinds": {v["name"]: v.get("kind", "trained") for v in variants},
            "cells": cells, "contrasts": contrasts,
            "correction": {"method": correction, "name": CORRECTIONS[correction], "alpha": alpha,
                           "family_size": family, "contrast_family_size": contrast_family}}


def _compare(vals: Mapping[int, float], ref: Mapping[int, float], higher: bool, level: float) -> dict[str, Any]:
    """Paired difference ``vals - ref`` over their shared seeds (interval and t-test); the verdict is
    set by ``_correct`` once the whole table's p-values are known ("n/a" below two shared seeds)."""
    diff = paired_difference(vals, ref, level)
    test = paired_t_test(vals, ref)
    out: dict[str, Any] = {"diff": diff.to_dict() if diff else None, "higher": higher}
    if test is None:
        return out | {"verdict": "n/a"}  # fewer than two shared seeds: no test, no claim
    return out | {"test": test.to_dict()}


def _correct(cells: list[dict[str, Any]], method: str, alpha: float) -> int:
    """Adjust the p-values of ``cells`` (one table) together and set each verdict from its adjusted
    p-value: better/worse by the metric's direction below ``alpha``, noise otherwise. Returns the
    family's size."""
    tested = [c for c in cells if "test" in c]
    adjusted = adjust_pvalues([c["test"]["p"] for c in tested], method)
    for c, p_adj in zip(tested, adjusted):
        c["p_adj"] = float(p_adj)
        if p_adj < alpha:
            c["verdict"] = "better" if (c["test"]["mean"] > 0) == c["higher"] else "worse"
        else:
            c["verdict"] = "noise"
    for c in cells:
        c.pop("higher", None)
    return len(tested)


def _fmt(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _digits(values: Sequence[float]) -> int:
    big = max((abs(v) for v in values), default=0.0)
    return 2 if big >= 10 else 3


def markdown_table(summary: Mapping[str, Any], metrics: Mapping[str, tuple[str, str, bool]],
                   labels: Mapping[str, str] | None = None) -> str:
    """Metrics as rows, variants as columns: ``mean ± half-width`` and, beside it, the paired
    difference to the baseline; bold only where that difference's interval excludes 0."""
    cells, baseline = summary["cells"], summary["baseline"]
    names = [n for n in cells if cells[n]]
    labels = labels or {}
    pct = int(round(summary["level"] * 100))
    head = "| evaluation | " + " | ".join(labels.get(n, n) for n in names) + " |"
    lines = [head, "|" + " --- |" * (len(names) + 1)]
    for metric, (_task, title, higher) in metrics.items():
        present = [cells[n][metric] for n in names if metric in cells[n]]
        if not present:
            continue
        d = _digits([c["interval"]["mean"] for c in present])
        row = [f"{title} {'↑' if higher else '↓'}"]
        for n in names:
            c = cells[n].get(metric)
            if c is None:
                row.append("")
                continue
            iv = c["interval"]
            diff = _fmt_diff(c, d)
            row.append(f"{_fmt(iv['mean'], d)} ± {_fmt(iv['half_width'], d)}" + (f" ({diff})" if diff else ""))
        lines.append("| " + " | ".join(row) + " |")
    ns = sorted({iv["interval"]["n"] for n in names for iv in cells[n].values()}) or [0]
    seeds = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"  # a partial study: say so, not the most
    corr = summary.get("correction") or {"name": "no", "alpha": 1 - summary["level"], "family_size": 0}
    alpha = f"{corr['alpha']:.2g}"
    lines.append("")
    lines.append(f"Mean ± half-width of the {pct}% Student-t interval over {seeds} seeds; in brackets the mean paired "
                 f"difference to {labels.get(baseline, baseline)} on the same seeds with its {pct}% interval and its "
                 f"paired t-test's p-value adjusted by the **{corr['name']} correction** over the "
                 f"{corr['family_size']} comparisons of this table (p_adj): **bold** with better/worse (by the arrow's "
                 f"direction) where p_adj < {alpha}, \"noise\" otherwise -- an interval that excludes 0 is not enough "
                 "on its own. Chance rows are each evaluation's trivial baseline on the same split.")
    contrasts = [c for c in summary.get("contrasts", []) if c["cells"]]
    if contrasts:
        lines += ["", f"Paired differences against each variant's own reference (same seeds, same marks; "
                      f"{corr['name']} over this table's {corr.get('contrast_family_size', 0)} comparisons):", "",
                  "| evaluation | " + " | ".join(f"{labels.get(c['variant'], c['variant'])} vs "
                                                 f"{labels.get(c['reference'], c['reference'])}" for c in contrasts) + " |",
                  "|" + " --- |" * (len(contrasts) + 1)]
        for metric, (_task, title, higher) in metrics.items():
            if not any(metric in c["cells"] for c in contrasts):
                continue
            d = _digits([cells[n][metric]["interval"]["mean"] for n in names if metric in cells[n]])
            lines.append(f"| {title} {'↑' if higher else '↓'} | "
                         + " | ".join(_fmt_diff(c["cells"][metric], d) if metric in c["cells"] else "" for c in contrasts)
                         + " |")
    return "\n".join(lines) + "\n"


def _fmt_diff(cell: Mapping[str, Any], digits: int) -> str:
    """``-0.100 ± 0.025`` with the verdict and the adjusted p-value: bold when the difference survives
    the correction, empty without a test."""
    diff, verdict = cell.get("diff"), cell.get("verdict")
    if not diff or verdict not in ("better", "worse", "noise"):
        return ""
    text = f"{diff['mean']:+.{digits}f} ± {diff['half_width']:.{digits}f}"
    p = f", p_adj {cell['p_adj']:.3f}" if cell.get("p_adj") is not None else ""
    return f"**{text}** {verdict}{p}" if verdict != "noise" else f"{text}, noise{p}"


def plot_study(summary: Mapping[str, Any], metrics: Mapping[str, tuple[str, str, bool]], path: str | os.PathLike,
               labels: Mapping[str, str] | None = None, title: str = "") -> Path:
    """One panel per evaluation, variants side by side with their intervals; ``*`` marks a paired
    difference to the baseline that survives the table's correction; chance is a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells, baseline = summary["cells"], summary["baseline"]
    kinds = summary.get("kinds", {})
    chance = [n for n in cells if cells[n] and kinds.get(n) == "chance"]
    names = [n for n in cells if cells[n] and n not in chance]
    labels = labels or {}
    shown = [m for m in metrics if any(m in cells[n] for n in names)]
    cols = min(4, max(1, len(shown)))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, shown):
        _task, mtitle, higher = metrics[metric]
        for i, n in enumerate(names):
            c = cells[n].get(metric)
            if c is None:
                continue
            iv = c["interval"]
            err = iv["half_width"] or 0.0
            ax.errorbar([i], [iv["mean"]], yerr=[err], fmt="o", capsize=4, color=colours[i % len(colours)],
                        markerfacecolor="white" if n != baseline else None)
            if c.get("verdict") in ("better", "worse"):
                ax.annotate("*", (i, iv["mean"] + err), ha="center", va="bottom", fontsize=13)
        for n in chance:
            if metric in cells[n]:
                ax.axhline(cells[n][metric]["interval"]["mean"], ls="--", lw=1, color="grey", label=labels.get(n, n))
        ax.set_title(f"{mtitle} ({'higher' if higher else 'lower'} is better)", fontsize=8)
        ax.set_xticks(range(len(names)), [labels.get(n, n) for n in names], rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.margins(y=0.15)
    if chance:
        axes.flat[0].legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    pct = int(round(summary["level"] * 100))
    corr = (summary.get("correction") or {}).get("name", "no")
    fig.suptitle(f"{title} (mean and {pct}% interval over seeds; * = paired difference to {labels.get(baseline, baseline)} "
                 f"that survives the {corr} correction)", fontsize=9)
    fig.tight_layout()
    out = atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return out


def machine_info() -> dict[str, Any]:
    """CPU model, cores and ISA flags, OS and Python: what the numbers were measured on."""
    try:
        model, flags = parse_cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        model, flags = "", set()
    info = {"cpu": model or platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "isa": [f for f in _ISA if f in flags], "platform": platform.platform(), "python": sys.version.split()[0]}
    try:
        info["sched_affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    return info


def package_versions(names: Sequence[str] = ("wherevit", "torch", "timm", "numpy", "opencv-python-headless",
                                              "safetensors", "matplotlib")) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def write_report(out_dir: str | os.PathLike, study: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
                 missing: Sequence[str], metrics: Mapping[str, tuple[str, str, bool]], command: str,
                 labels: Mapping[str, str] | None = None, plot: bool = True) -> dict[str, Path]:
    """``results.json`` (every run's numbers, summary, machine, command, versions), ``table.md`` and
    ``study.png`` in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    variants = study["variants"]
    summary = summarise(variants, study["baseline"], records, metrics, contrasts_of=study.get("contrasts"),
                        correction=study.get("correction", "holm"))
    table = markdown_table(summary, metrics, labels)
    slim = [{k: r[k] for k in ("variant", "kind", "seed", "key", "train_key", "scores", "chance", "eval_seconds",
                               "train", "finished") if k in r} | {"results": r.get("results")} for r in records]
    doc = {"format": "wherevit.study/1", "name": study["name"], "command": command,
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
           "versions": package_versions(), "study": study, "complete": not missing, "missing": list(missing),
           "summary": summary, "table_md": table, "runs": slim}
    paths = {"results": atomic_write_text(out / "results.json", json.dumps(doc, indent=1, default=str)),
             "table": atomic_write_text(out / "table.md", f"# Study: {study['name']}\n\n" + table)}
    if plot and any(summary["cells"].values()):
        try:
            paths["plot"] = plot_study(summary, metrics, out / "study.png", labels, title=study["name"])
        except ImportError:  # the plot is optional: results and table are written without matplotlib
            pass
    return paths
