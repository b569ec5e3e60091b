"""Can DINO alone beat random weights at quickstart scale? Pretrain DINO (no plug-ins) with
anti-collapse variants and score each backbone with the downstream table's quick columns.

Every variant is the quickstart preset with `plugins: {}` plus the listed overrides, same seed and
budget as `downstream_table.py`'s DINO row; "random" scores the untrained architecture. Scores: the
table's depth, segmentation and pose heads, position/scale and 8-way, k-NN and linear probes. Each
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
from wherevit.train.evals.suite import SuiteConfig, evaluate_suite, headline_scores
from wherevit.train.loop import train

_SHARP = ["dino.centering=sinkhorn", "dino.koleo_weight=0.1", "data.crops.color_jitter_p=0.2", "data.crops.grayscale_p=0.0"]
TASKS = ("depth", "seg", "pose", "spatial", "probes")  # the table's columns without jigsaw
VARIANTS: dict[str, list[str]] = {
    "ema": [],  # the preset: EMA centre, teacher temperature 0.04 -> 0.07
    "sinkhorn": ["dino.centering=sinkhorn"],
    "sinkhorn_koleo_lightcolour": _SHARP,
    "sinkhorn_koleo_lightcolour_tt002": _SHARP + ["dino.teacher_temp=0.02", "dino.warmup_teacher_temp=0.02"],
    "sinkhorn_koleo_lightcolour_tt002_1000steps": _SHARP + ["dino.teacher_temp=0.02", "dino.warmup_teacher_temp=0.02",
                                                            "total_steps=1000", "ckpt_every=1000"],
    # pretrain on views of the downstream 3-D scenes instead of the 2-D scenes
    "scenes3d_sinkhorn_koleo_lightcolour_tt002": ["data.source=scenes3d"] + _SHARP
    + ["dino.teacher_temp=0.02", "dino.warmup_teacher_temp=0.02"],
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
    results = evaluate_suite(model, SuiteConfig(size=int(info["arch"]["img_size"][0]), tasks=TASKS))
    scores = headline_scores(results)
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
        prev = out / f"{name}.json"
        if r["train_seconds"] is None and prev.is_file():  # re-scored an existing run: keep its training time
            r["train_seconds"] = json.loads(prev.read_text()).get("train_seconds")
        r |= {"command": "python " + " ".join(sys.argv), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (out / f"{name}.json").write_text(json.dumps(r, indent=2))
        print(name, json.dumps({k: round(v, 3) for k, v in r["scores"].items()}), flush=True)


if __name__ == "__main__":
    main()
