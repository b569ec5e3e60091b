"""The downstream table: DINO vs DINO + SP vs DINO + iBOT vs DINO + iBOT + posfield vs DINO + SCRL vs
DINO + GTSA vs DINO + equivariance vs all five together (same budget and seeds) vs random weights,
on generated data.

Pretrains the backbones with the quickstart preset if `--runs` does not hold them yet (the DINO and
DINO + SP runs are the ones `sp_vs_dino.py` makes; the others differ from DINO only in their
`ibot` / `plugins` sections; SCRL, GTSA and equivariance take their sections from the
`--plugin-sections` preset, sized for the quickstart model), then for each backbone: depth, segmentation and relative-pose heads on
frozen features (generated 3-D scene pairs), the patch-pair position/scale task, jigsaw, k-NN and
linear probes. Writes JSON and a Markdown table.

    python benchmarks/downstream_table.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from wherevit.train.checkpoint import load_backbone
from wherevit.train.config import load_train_config
from wherevit.train.evals.suite import SuiteConfig, evaluate_suite, headline_scores
from wherevit.train.loop import train

# (headline_scores key, column title, format): the table's columns, in order
COLUMNS = [
    ("depth_rmse", "depth RMSE (m)", ".3f"), ("depth_abs_rel", "depth AbsRel", ".3f"), ("seg_miou", "seg mIoU", ".3f"),
    ("pose_rot_err_deg", "pose rot. err (deg)", ".2f"), ("pose_trans_dir_err_deg", "pose transl. dir. err (deg)", ".1f"),
    ("pos_scale_r2", "pos/scale R^2", ".3f"), ("rel_loc_8way", "8-way rel. loc.", ".3f"),
    ("jigsaw_per_tile", "jigsaw per-tile", ".3f"), ("jigsaw_full_perm", "jigsaw full perm.", ".3f"),
    ("knn", "k-NN", ".3f"), ("linear", "linear", ".3f"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="quickstart")
    ap.add_argument("--runs", type=Path, default=Path("runs/sp_vs_dino"))
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-test", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--plugin-sections", default="quickstart_all",
                    help="preset whose plugins.* sections configure the SCRL, GTSA, equivariance and all-five rows")
    a = ap.parse_args()
    sections = load_train_config(a.plugin_sections).plugins
    pick = lambda *names: {n: sections.get(n) or {} for n in names}  # noqa: E731
    variants = {  # run name -> (table label, plug-ins (None: the preset's), iBOT on)
        "dino": ("DINO", {}, False),
        "dino_sp": ("DINO + SP", None, False),
        "dino_ibot": ("DINO + iBOT", {}, True),
        "dino_ibot_posfield": ("DINO + iBOT + posfield", {"posfield": {}}, True),
        "dino_scrl": ("DINO + SCRL", pick("scrl"), False),
        "dino_gtsa": ("DINO + GTSA", pick("gtsa"), False),
        "dino_equivariance": ("DINO + equivariance", pick("equivariance"), False),
        "all_five": ("DINO + iBOT + SP, posfield, SCRL, GTSA, equivariance",
                     pick("sp", "posfield", "scrl", "gtsa", "equivariance"), True),
    }
    for name, (_, plugins, ibot) in variants.items():
        run = a.runs / name
        if not (run / "backbone.safetensors").is_file():
            cfg = load_train_config(a.config)
            if plugins is not None:
                cfg.plugins = plugins
            cfg.ibot.enabled = ibot
            train(cfg, run, progress=False)
    rows = {}
    for label, spec, rnd in [(lab, name, False) for name, (lab, _, _) in variants.items()] + [("random weights", "dino", True)]:
        model, info = load_backbone(a.runs / spec, random_init=rnd)
        size = int(info["arch"]["img_size"][0])
        r = evaluate_suite(model, SuiteConfig(size=size, n_train=a.n_train, n_test=a.n_test, epochs=a.epochs))
        rows[label] = r
        print(label, json.dumps({k: {kk: vv for kk, vv in v.items() if isinstance(vv, (int, float))} for k, v in r.items()}), flush=True)
    head = "| backbone | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    table = [head, "|" + " --- |" * (len(COLUMNS) + 1)]
    for label, r in rows.items():
        scores = headline_scores(r)
        table.append(f"| {label} | " + " | ".join(format(scores[key], fmt) for key, _, fmt in COLUMNS) + " |")
    r0 = rows["DINO"]
    table.append(f"| chance / baseline | {r0['depth']['baseline']['rmse']:.3f} | {r0['depth']['baseline']['abs_rel']:.3f} | "
                 f"{r0['seg']['baseline']['miou']:.3f} | {r0['pose']['baseline']['rot_err_median_deg']:.2f} | "
                 f"{r0['pose']['baseline']['trans_dir_err_median_deg']:.1f} | 0 | 0.125 | 0.111 | 0 | "
                 f"{r0['probes']['chance']:.3f} | {r0['probes']['chance']:.3f} |")
    print("\n".join(table))
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"downstream_{a.config}.json"
    path.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "rows": rows, "table_md": table}, indent=2, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
