"""Training throughput of DINO alone, + SP, + iBOT, + iBOT + posfield, + SCRL, + GTSA, + equivariance and all
five together: images/s, step time, FLOPs, MFU.

One process, one run, all configurations back to back, so each plug-in's overhead (step time and
FLOPs vs DINO; posfield also vs DINO + iBOT, its base) is a ratio measured under the same conditions. Model compute only: batches are generated once and kept on the device
(data loading is measured separately by the training log's img/s). FLOPs per step are counted by
torch.utils.flop_counter on one real step (student forward + backward, teacher forward, plug-ins).

    python benchmarks/train_throughput.py --config vit_s16_dino_sp --batch 128 --steps 30     # on a GPU
    python benchmarks/train_throughput.py --config quickstart --steps 10                        # on a CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from wherevit.app.bench import machine_info
from wherevit.train.config import load_train_config
from wherevit.train.data.dataset import MultiCrop, hook_rng
from wherevit.train.data.synthetic import render_scene
from wherevit.train.data.views import ViewSpec
from wherevit.train.loop import build_optimizer
from wherevit.train.meta_arch import SSLMetaArch


def make_batch(meta: SSLMetaArch, cfg, n: int, device) -> dict:
    c = cfg.data.crops
    mc = MultiCrop(ViewSpec(c.global_size, c.global_scale), c.n_global, ViewSpec(c.local_size, c.local_scale), c.n_local,
                   meta.view_samplers())
    rng = np.random.default_rng(0)
    size = max(c.global_size, 128)
    hooks = meta.data_hooks()  # iBOT masks, posfield positions: as the data workers make them
    samples = []
    for i in range(n):
        img = render_scene(i, size)
        sample = mc(img, rng)
        for name, hook in hooks.items():
            hook(sample, img, hook_rng(i, name), i)
        samples.append(sample)
    batch = {}
    for g in samples[0]:
        batch[g] = {k: torch.from_numpy(np.stack([s[g][k] for s in samples])).to(device) for k in samples[0][g]}
    return batch


def measure(cfg, steps: int, warmup: int, device, peak_tflops: float | None) -> dict:
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg).to(device)
    opt = build_optimizer(meta.student, cfg)
    for g in opt.param_groups:
        g["lr"] = 1e-4
    if cfg.compile:  # as the training loop does: the token-level path calls the blocks
        meta.student.backbone.blocks.compile()
        meta.teacher.backbone.blocks.compile()
    batch = make_batch(meta, cfg, cfg.data.global_batch_size, device)
    bf16 = device.type == "cuda" and cfg.precision in ("auto", "bf16")
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else (lambda: torch.autocast("cpu", enabled=False))

    def step():
        with ctx():
            total, _ = meta.forward_losses(batch, 0.04)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(meta.student.parameters(), 3.0)
        opt.step()
        meta.update_teacher(0.996)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    res = {"step_s": dt, "img_per_s": cfg.data.global_batch_size / dt, "flops_per_step": flops,
           "achieved_tflops": flops / dt / 1e12, "plugins": sorted(cfg.plugins), "ibot": cfg.ibot.enabled}
    if peak_tflops:
        res["mfu"] = res["achieved_tflops"] / peak_tflops
    if device.type == "cuda":
        res["max_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="quickstart")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--batch", type=int, default=None, help="global batch (one process)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile", choices=["on", "off", "config"], default="config")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (H100 measured: ~800)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ov = list(a.overrides) + (["data.global_batch_size=%d" % a.batch] if a.batch else [])
    if a.compile != "config":
        ov.append(f"compile={'true' if a.compile == 'on' else 'false'}")
    variants = {  # name -> (plug-ins, iBOT on)
        "dino": ({}, False),
        "dino+sp": (None, False),  # None: the config's SP section (or SP defaults)
        "dino+ibot": ({}, True),
        "dino+ibot+posfield": ({"posfield": {}}, True),
        "dino+scrl": (["scrl"], False),  # a list: these sections of the config (or their defaults)
        "dino+gtsa": (["gtsa"], False),
        "dino+equivariance": (["equivariance"], False),
        "all five": (["sp", "posfield", "scrl", "gtsa", "equivariance"], True),
    }
    peak = a.peak_tflops or (800.0 if device.type == "cuda" else None)
    rows, cfgs = {}, {}
    for name, (plugins, ibot) in variants.items():
        cfg = load_train_config(a.config, ov)
        if plugins is None:
            plugins = ["sp"]
        cfg.plugins = {p: cfg.plugins.get(p) or {} for p in plugins} if isinstance(plugins, list) else plugins
        cfg.ibot.enabled = ibot
        cfgs[name] = cfg
        rows[name] = measure(cfg, a.steps, a.warmup, device, peak)
        print(name, json.dumps(rows[name]), flush=True)
    overhead = {}
    for name, base in (("dino+sp", "dino"), ("dino+ibot", "dino"), ("dino+ibot+posfield", "dino"),
                       ("dino+ibot+posfield", "dino+ibot"), ("dino+scrl", "dino"), ("dino+gtsa", "dino"),
                       ("dino+equivariance", "dino"), ("all five", "dino")):
        overhead[f"{name} vs {base}"] = {
            "step_time": rows[name]["step_s"] / rows[base]["step_s"] - 1,
            "flops": rows[name]["flops_per_step"] / rows[base]["flops_per_step"] - 1,
        }
    rows["overhead"] = overhead
    rows["sp_overhead_step_time"] = overhead["dino+sp vs dino"]["step_time"]  # kept for older readers
    ref = cfgs["dino"]
    result = {"command": "python " + " ".join(sys.argv), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": str(device), "config": a.config, "global_batch": ref.data.global_batch_size,
              "compile": ref.compile, "machine": machine_info(), "results": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if device.type == "cuda" else "cpu"
    path = a.out / f"train_throughput_{a.config}_{tag}.json"
    path.write_text(json.dumps(result, indent=2))
    for k, v in overhead.items():
        print(f"{k}: step time {100 * v['step_time']:+.1f}%, FLOPs {100 * v['flops']:+.1f}%")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
