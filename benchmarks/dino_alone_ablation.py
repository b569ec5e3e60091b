"""Can DINO alone beat random weights at quickstart scale? Pretrain DINO (no plug-ins) with
anti-collapse variants and score each backbone with the downstream table's quick columns.

Every variant is the quickstart preset with `plugins: {}` plus the listed overrides, same seed and
budget as `downstream_table.py`'s DINO row; "random" scores the untrained architecture. Each
variant writes `<out>/dino_alone/<variant>.json` (train curve + scores), so variants can run one
at a time:

    python benchmarks/dino_alone_ablation.py --variants ema,sinkhorn,random
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from wherevit.train.checkpoint import load_backbone
from wherevit.train.config import load_train_config
from wherevit.train.downstream.fit import HeadTrainConfig, fit_head
from wherevit.train.evals.probes import evaluate_probes
from wherevit.train.evals.spatial import SpatialEvalConfig, evaluate_spatial
from wherevit.train.loop import train

_SHARP = ["dino.centering=sinkhorn", "dino.koleo_weight=0.1", "data.crops.color_jitter_p=0.2", "data.crops.grayscale_p=0.0"]
VARIANTS: dict[str, list[str]] = {
    "ema": [],  # the preset: EMA centre, teacher temperature 0.04 -> 0.07
    "sinkhorn": ["dino.centering=sinkhorn"],
    "sinkhorn_koleo_lightcolour": _SHARP,
    "sinkhorn_koleo_lightcolour_tt002": _SHARP + ["dino.teacher_temp=0.02", "dino.warmup_teacher_temp=0.02"],
    "sinkhorn_koleo_lightcolour_tt002_1000steps": _SHARP + ["dino.teacher_temp=0.02", "dino.warmup_teacher_temp=0.02",
                                                            "total_steps=1000", "ckpt_every=1000"],
    "random": [],
}


def run_variant(name: str, runs: Path, config: str) -> dict:
    # "random" re-initialises the architecture of the "ema" run (seed 0), as the table's random row does
    run = runs / ("ema" if name == "random" else name)
    overrides = VARIANTS[name]
    train_s = None
    if not (run / "backbone.safetensors").is_file():
        cfg = load_train_config(config, overrides)
        cfg.plugins = {}
        t0 = time.perf_counter()
        train(cfg, run, progress=False)
        train_s = time.perf_counter() - t0
    curve = []
    if name != "random":
        for line in (run / "metrics.jsonl").read_text().splitlines():
            m = json.loads(line)
            if "loss/dino" in m:
                curve.append({k: m.get(k) for k in ("step", "loss/dino", "dino/teacher_entropy", "dino/teacher_batch_entropy")})
    model, info = load_backbone(run, random_init=name == "random")
    size = int(info["arch"]["img_size"][0])
    depth = fit_head("depth", model, HeadTrainConfig(n_train=400, n_test=150, size=size, epochs=20), progress=False)[1]
    spatial = evaluate_spatial(model, SpatialEvalConfig(n_images=400, crop_size=32))
    probes = evaluate_probes(model)
    scores = {"depth_rmse": depth["rmse"], "depth_abs_rel": depth["abs_rel"],
              "pos_scale_r2": spatial["position_scale"]["r2_mean"], "rel_loc_8way": spatial["relative_location"]["acc_8way"],
              "knn": probes["knn_acc"], "linear": probes["linear_acc"]}
    return {"variant": name, "overrides": overrides, "train_seconds": train_s, "curve": curve, "scores": scores}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")
    ap.add_argument("--config", default="quickstart")
    ap.add_argument("--runs", type=Path, default=Path("runs/dino_alone"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args()
    out = a.out / "dino_alone"
    out.mkdir(parents=True, exist_ok=True)
    for name in a.variants.split(","):
        if name not in VARIANTS:
            ap.error(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        r = run_variant(name, a.runs, a.config)
        r |= {"command": "python " + " ".join(sys.argv), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (out / f"{name}.json").write_text(json.dumps(r, indent=2))
        print(name, json.dumps({k: round(v, 3) for k, v in r["scores"].items()}), flush=True)


if __name__ == "__main__":
    main()
