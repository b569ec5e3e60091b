"""The plug-in study: which spatial pretext task helps which evaluation, over seeds, with intervals.

``wherevit study configs/study_quickstart.yaml`` is :func:`study`: run what is missing (cached and
resumable, :mod:`.runner`), then write the results file, table and plot (:mod:`.report`, with the
statistics of :mod:`.stats`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from wherevit.base.config import to_dict
from wherevit.train.evals.suite import METRICS
from wherevit.train.study.config import StudyConfig, StudyError, VariantSpec, load_study_config
from wherevit.train.study.report import write_report
from wherevit.train.study.runner import load_records, plan_runs, run_study

__all__ = ["StudyConfig", "StudyError", "VariantSpec", "load_study_config", "plan_runs", "run_study", "study"]


def study(cfg: StudyConfig, runs_dir: str | Path | None = None, out: str | Path | None = None, command: str = "",
          progress: bool = False, echo: Callable[[str], None] = print, max_runs: int | None = None,
          report_only: bool = False) -> dict[str, Path]:
    """Run the study's missing runs (at most ``max_runs``; none with ``report_only``) and write its report.

    Returns the paths written (results, table, plot). A report of an unfinished study says which
    runs are missing; calling again continues where it stopped.
    """
    runs_dir = Path(runs_dir or cfg.runs_dir)
    if not report_only:
        run_study(cfg, runs_dir, progress=progress, echo=echo, max_runs=max_runs)
    records, missing = load_records(cfg, runs_dir)
    tasks = set(cfg.evaluation.tasks)
    metrics = {k: m for k, m in METRICS.items() if m[0] in tasks}
    labels = {v.name: v.label or v.name for v in cfg.variants}
    paths = write_report(Path(out or cfg.out), to_dict(cfg), records, [r.label for r in missing], metrics, command, labels)
    if missing:
        echo(f"{len(missing)} run(s) still missing: {', '.join(r.label for r in missing)}")
    for what, p in paths.items():
        echo(f"{what}: {p}")
    return paths
