"""Does SP help? The same pretraining run with and without the SP plug-in, plus random weights,
scored by the spatial evaluation (patch-pair position/scale probe, 8-way relative location) on
held-out generated scenes. Same config, seed, data and budget; only `plugins` differs.

    python benchmarks/sp_vs_dino.py --config quickstart --out benchmarks/results
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
from wherevit.train.evals.spatial import SpatialEvalConfig, evaluate_spatial
from wherevit.train.loop import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="quickstart")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--runs", type=Path, default=Path("runs/sp_vs_dino"))
    ap.add_argument("--n-images", type=int, default=400)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args()
    rows = {}
    # patches as large as the SP views the run trained on (32 px for the quickstart)
    crop = load_train_config(a.config, a.overrides).plugins.get("sp", {}).get("crop_size", 32)
    for name in ("dino", "dino+sp"):
        cfg = load_train_config(a.config, a.overrides)
        if name == "dino":
            cfg.plugins = {}
        run = a.runs / name.replace("+", "_")
        t0 = time.perf_counter()
        if not (run / "backbone.safetensors").is_file():
            train(cfg, run, progress=False)
        train_s = time.perf_counter() - t0
        model, info = load_backbone(run)
        rows[name] = evaluate_spatial(model, SpatialEvalConfig(n_images=a.n_images, crop_size=crop))
        rows[name]["train_seconds"] = round(train_s, 1)
        print(name, json.dumps(rows[name]["position_scale"]), json.dumps(rows[name]["relative_location"]), flush=True)
    model, _ = load_backbone(a.runs / "dino", random_init=True)
    rows["random-init"] = evaluate_spatial(model, SpatialEvalConfig(n_images=a.n_images, crop_size=crop))
    print("random-init", json.dumps(rows["random-init"]["position_scale"]), flush=True)
    table = ["| backbone | MAE dx | MAE dy | MAE log-scale | R^2 dx | R^2 dy | R^2 log-scale | R^2 mean | 8-way acc |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        p, rl = r["position_scale"], r["relative_location"]
        table.append(f"| {name} | {p['mae_dx']:.4f} | {p['mae_dy']:.4f} | {p['mae_logscale']:.4f} | {p['r2_dx']:.3f} | {p['r2_dy']:.3f} | "
                     f"{p['r2_logscale']:.3f} | {p['r2_mean']:.3f} | {rl['acc_8way']:.3f} |")
    print("\n".join(table))
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"sp_vs_dino_{a.config}.json"
    path.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "rows": rows, "table_md": table}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
