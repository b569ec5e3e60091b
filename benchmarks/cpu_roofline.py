"""How fast can fp32 ViT inference possibly be on this CPU? A roofline bound for `wherevit bench`.

Measures the machine's fp32 matrix-multiply peak (large square SGEMM in PyTorch and NumPy, best of
several), counts the model's FLOPs with ``torch.utils.flop_counter`` (matmuls and attention; the
elementwise work is extra), and compares the floor ``FLOPs / peak`` with measured latencies from a
`wherevit bench` JSON. A backend cannot beat the floor at fp32, so the best possible speed-up over
PyTorch eager is ``eager_ms / floor_ms``.

    python benchmarks/cpu_roofline.py --bench benchmarks/results/bench_vits16_cpu/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode


def sgemm_peak(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` fp32 GFLOP/s for an n x n x n matmul, in PyTorch and in NumPy."""
    out = {}
    a = torch.randn(n, n)
    for name, mm, x in (("torch", torch.mm, a), ("numpy", np.matmul, a.numpy())):
        mm(x, x)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            mm(x, x)
            best = min(best, time.perf_counter() - t0)
        out[name] = 2 * n**3 / best / 1e9
    return out


def model_flops(model_name: str, img_size: int, batch: int) -> int:
    model = timm.create_model(model_name, pretrained=False, img_size=img_size).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.forward_features(torch.randn(batch, 3, img_size, img_size))
    return fc.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--imgsz", type=int, default=224)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--bench", type=Path, help="a `wherevit bench` JSON to compare against")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_roofline.json"))
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    peak = sgemm_peak()
    peak_gflops = max(peak.values())
    measured: dict[tuple[str, int], float] = {}
    if a.bench:
        for r in json.loads(a.bench.read_text())["rows"]:
            if r.get("status") == "ok" and r.get("precision") == "fp32":
                measured[(r["backend"], int(r["batch"]))] = float(r["p50_ms"])
    rows = []
    for b in (int(x) for x in a.batch.split(",")):
        flops = model_flops(a.model, a.imgsz, b)
        floor_ms = flops / (peak_gflops * 1e9) * 1e3
        row = {"batch": b, "gflops": flops / 1e9, "floor_ms_at_sgemm_peak": floor_ms}
        for (backend, bb), ms in measured.items():
            if bb == b:
                row[f"{backend}_p50_ms"] = ms
                row[f"{backend}_gflops_per_s"] = flops / 1e9 / (ms / 1e3)
                row[f"{backend}_fraction_of_peak"] = floor_ms / ms
        if ("torch-eager", b) in measured:
            row["max_possible_speedup_over_eager"] = measured[("torch-eager", b)] / floor_ms
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "numpy": np.__version__},
        "model": a.model, "imgsz": a.imgsz, "sgemm_peak_gflops": peak, "rows": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
