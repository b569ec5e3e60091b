"""The quickstart pipeline: pretrain -> evaluate -> export (ONNX + engine) -> bench, on generated data.

What `wherevit quickstart` runs; each step is the same library call the individual commands make.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["QuickstartResult", "quickstart"]


@dataclass
class QuickstartResult:
    run_dir: Path
    onnx: Path
    engine: Path | None
    bench_json: Path
    notes: list[str]


def quickstart(out: str | Path = "runs/quickstart", steps: int | None = None, progress: bool = True, echo=print) -> QuickstartResult:
    """Tiny DINO+SP pretraining on generated scenes, then export, engine build and benchmark."""
    from wherevit.app.bench import (
        BenchRequest,
        TimingConfig,
        format_table,
        run_bench,
    )
    from wherevit.export.api import ExportRequest, export_artifacts
    from wherevit.export.trt_builder import EngineBuildError, detect_flavour
    from wherevit.train.checkpoint import latest_checkpoint, load_backbone
    from wherevit.train.config import load_train_config
    from wherevit.train.evals.spatial import SpatialEvalConfig, evaluate_spatial
    from wherevit.train.loop import train

    out = Path(out)
    run = out / "run"
    notes: list[str] = []
    cfg = load_train_config("quickstart", [f"total_steps={steps}"] if steps else [])
    echo(f"[1/4] pretraining {cfg.model.name} (DINO + SP) for {cfg.total_steps} steps -> {run}")
    resume = latest_checkpoint(run) is not None
    if resume:
        echo("      (continuing the existing run)")
    train(cfg, run, resume=resume, progress=progress)

    echo("[2/4] spatial evaluation (frozen features, held-out scenes)")
    model, _ = load_backbone(run)
    ev = evaluate_spatial(model, SpatialEvalConfig(n_images=200))
    ps = ev["position_scale"]
    echo(f"      position/scale R^2 mean {ps['r2_mean']:.3f} (dx {ps['r2_dx']:.3f}, dy {ps['r2_dy']:.3f}, log-scale {ps['r2_logscale']:.3f}); "
         f"8-way relative location {ev['relative_location']['acc_8way']:.3f}")
    (out / "eval_spatial.json").write_text(json.dumps(ev, indent=2))

    art = out / "artifacts"
    try:
        flavour = detect_flavour("auto")
        fmt = "engine"
    except EngineBuildError as e:
        fmt, flavour = "onnx", None
        notes.append(f"no engine: {e}")
    echo(f"[3/4] export -> {art} (ONNX{', ' + flavour.module + ' ' + flavour.version + ' engine' if flavour else ''})")
    res = export_artifacts(ExportRequest(str(run), art, format=fmt, batch=(1, 4, 16)))
    echo(res.parity.summary() if res.parity is not None else "      (no parity report)")

    echo("[4/4] bench (ONNX Runtime vs PyTorch; engine rows run where a GPU is)")
    rows, paths = run_bench(BenchRequest(str(res.onnx), out / "bench", ("ort-cpu", "tensorrt", "torch-eager"), (1, 16),
                                         timing=TimingConfig(min_seconds=0.5), progress=progress))
    echo(format_table(rows))
    for n in notes:
        echo(f"note: {n}")
    echo(f"done: {out}")
    return QuickstartResult(run, res.onnx, res.engine, paths["json"], notes)
