"""The plug-in study: which spatial pretext task helps which evaluation, over seeds, with intervals.

``wherevit study configs/study_quickstart.yaml`` is :func:`run_and_report`: run what is missing
(cached and resumable, :mod:`.runner`), then write the results file, table and plot
(:mod:`.report`, with the statistics of :mod:`.stats`). The statistics and the report are
torch-free: this package imports its torch-using parts (config, runner) only when asked for.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from wherevit.train.study.config import StudyConfig

__all__ = ["StudyConfig", "StudyError", "VariantSpec", "load_study_config", "plan_runs", "run_study", "run_and_report"]

_LAZY = {"StudyConfig": "config", "StudyError": "config", "VariantSpec": "config", "load_study_config": "config",
         "plan_runs": "runner", "run_study": "runner"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"wherevit.train.study.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_and_report(cfg: StudyConfig, runs_dir: str | Path | None = None, out: str | Path | None = None, command: str = "",
                   progress: bool = False, echo: Callable[[str], None] = print, max_runs: int | None = None,
                   report_only: bool = False) -> dict[str, Path]:
    """Run the study's missing runs (at most ``max_runs``; none with ``report_only``) and write its report.

    Returns the paths written (results, table, plot). A report of an unfinished study says which
    runs are missing; calling again continues where it stopped.
    """
    from wherevit.base.config import to_dict
    from wherevit.train.evals.suite import metric_columns
    from wherevit.train.study.report import write_report
    from wherevit.train.study.runner import load_records, run_study

    runs_dir = Path(runs_dir or cfg.runs_dir)
    if not report_only:
        run_study(cfg, runs_dir, progress=progress, echo=echo, max_runs=max_runs)
    records, missing = load_records(cfg, runs_dir)
    tasks = set(cfg.evaluation.tasks)
    metrics = {k: m for k, m in metric_columns().items() if m[0] in tasks}
    labels = {v.name: v.label or v.name for v in cfg.variants}
    paths = write_report(Path(out or cfg.out), to_dict(cfg), records, [r.label for r in missing], metrics, command, labels)
    if missing:
        echo(f"{len(missing)} run(s) still missing: {', '.join(r.label for r in missing)}")
    for what, p in paths.items():
        echo(f"{what}: {p}")
    return paths
