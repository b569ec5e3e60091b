"""The CPU path side by side: OpenVINO and ONNX Runtime on the same artifacts, against PyTorch eager fp32.

For one model (a timm name or a checkpoint) at batch 1: exports the fp32 ONNX, our static Q/DQ INT8
(`--quant static`, the export default) and NNCF's INT8 (`--quant nncf`), each through the export's own
parity gate; runs each on ONNX Runtime's CPU provider and on OpenVINO (fp32 kept f32; bf16 inference
precision where the CPU has BF16 units; the INT8 graphs), with PyTorch eager fp32 (the baseline) and
bf16 autocast, in interleaved rounds. The machine is shared: each variant's latency is its best
round. With ``--threads 1`` the latency basis is the *process* CPU time per call (OpenVINO computes on
a worker thread, not the caller, so the calling thread's CPU time would miss it; with one compute
thread the process CPU time is the contention-free latency), and the GEMM peaks are measured the same
way; with more threads it is the fastest single call's wall-clock time (other processes only ever
add time; with them the p50 of a 2-thread call measures the neighbours: PyTorch's OpenMP barriers
wait for a preempted thread), p50s kept beside it. The load average is recorded per round.

Also: per-sample cosine against PyTorch fp32 on generated scenes disjoint from calibration; each
row's fraction of the measured GEMM peak of its dtype (best of ONNX Runtime, PyTorch and OpenVINO
kernels); the fp32 roofline; what ``runtime.load(path)`` picks for each artifact here; and where the
best OpenVINO artifact's time goes (OpenVINO's per-node profiling, ``PERF_COUNT``): GEMMs, the fused
attention subgraphs, everything else.

    python benchmarks/cpu_backends.py --model vit_small_patch16_224 --threads 1 --out benchmarks/results/cpu_backends_vits16_1thread.json
    python benchmarks/cpu_backends.py --model vit_tiny_patch16_224 --sweep-sizes 32,64,112,224 --out benchmarks/results/cpu_backends_size_sweep.json

Targets (issue 23, a benchmark, not a test): at batch 1 against PyTorch eager fp32, the best CPU
artifact >= 5x with cosine >= 0.99 on an AMX or AVX-512 VNNI CPU, >= 2.5x on an AVX2-only CPU; fp32
within 25% of its measured roofline.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from wherevit.app.bench import TimingConfig, machine_info, time_callable
from wherevit.app.machine import GemmPeak, model_gflops, openvino_gemm_peak, ort_gemm_peak
from wherevit.base.cpu import cpu_isa
from wherevit.base.sidecar import read_sidecar, sidecar_path
from wherevit.export.api import ExportRequest, export_artifacts
from wherevit.export.quantize import PARITY_SEED, QuantOptions, generated_images
from wherevit.runtime.backends import auto_order
from wherevit.runtime.backends.onnxruntime import OrtCpu
from wherevit.runtime.backends.openvino import OpenVino, auto_rule
from wherevit.runtime.compare import compare

EAGER, BF16 = "torch eager fp32", "torch eager bf16 (autocast)"


def _artifacts(model: str, out: Path, calib_count: int) -> dict[str, Path]:
    """fp32, static Q/DQ and NNCF INT8 ONNX, exported (with their parity gates) unless already there for this model."""
    paths = {"fp32": out / "model_fp32.onnx", "int8": out / "model_int8.onnx", "int8-nncf": out / "model_int8_nncf.onnx"}

    def have(p: Path) -> bool:
        return p.is_file() and sidecar_path(p).is_file() and read_sidecar(p, verify_hash=False).model.checkpoint == model

    for mode, key in (("static", "int8"), ("nncf", "int8-nncf")):
        if not have(paths[key]):
            res = export_artifacts(ExportRequest(model, out, precision="int8", batch=(1, 1, 8),
                                                 format_options={"int8": QuantOptions(mode=mode, calib_count=calib_count)}))
            paths["fp32"], paths[key] = res.onnx, res.int8
    return paths


def _cpu_ms(fn, seconds: float) -> float:
    """Median process CPU time per call (single-threaded runs: the contention-free latency)."""
    for _ in range(3):
        fn()
    ts, start = [], time.perf_counter()
    while len(ts) < 10 or time.perf_counter() - start < seconds:
        t0 = time.process_time()
        fn()
        ts.append(time.process_time() - t0)
    return float(np.median(ts) * 1e3)


def _cpu_stat() -> tuple[float, float, float]:
    """(wall seconds, CPU seconds used by everything on this machine except idle, steal seconds) from /proc/stat."""
    fields = [float(v) for v in open("/proc/stat").readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0.0
    return time.monotonic(), (sum(fields[:8]) - idle - steal) / tick, steal / tick


def _contention(before: tuple[float, float, float], after: tuple[float, float, float], own_cpu_s: float) -> dict:
    """Other processes' share of the cores and the hypervisor's steal over a round (1.0 = every core, whole round)."""
    wall, cores = after[0] - before[0], len(os.sched_getaffinity(0))
    return {"others_cpu_share": max(0.0, (after[1] - before[1] - own_cpu_s) / wall / cores),
            "steal_share": (after[2] - before[2]) / wall / cores, "seconds": wall}


def _wall_min_ms(fn, seconds: float) -> float:
    """Fastest single call, wall clock (multi-threaded runs: interference from other processes only ever adds time,
    so the minimum over many calls is the estimate of the latency on idle cores; the p50 is kept beside it)."""
    for _ in range(3):
        fn()
    ts, start = [], time.perf_counter()
    while len(ts) < 10 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(min(ts) * 1e3)


def _peaks(threads: int, clock) -> dict[str, dict]:
    """Each dtype's best GEMM kernel (ONNX Runtime, PyTorch, OpenVINO), measured on the latency basis's clock."""
    n = 1024
    cands: dict[str, list[GemmPeak]] = {"fp32": [], "int8": [], "bf16": []}
    for dtype in ("fp32", "int8"):
        cands[dtype].append(ort_gemm_peak(dtype, n, 5, threads, clock=clock))
    for dtype in cands:
        try:
            cands[dtype].append(openvino_gemm_peak(dtype, n, 5, threads, clock=clock))
        except ImportError:
            pass
    from wherevit.app.machine import _best_seconds

    m2 = torch.randn(2048, 2048)
    cands["fp32"].append(GemmPeak("fp32", f"torch {torch.__version__} mm 2048^3",
                                  2 * 2048**3 / _best_seconds(lambda: torch.mm(m2, m2), 3, clock) / 1e9, [2048] * 3, threads))
    if cpu_isa().bf16:
        b = torch.randn(n, n, dtype=torch.bfloat16)
        with torch.inference_mode():
            cands["bf16"].append(GemmPeak("bf16", f"torch {torch.__version__} mm bf16",
                                          2 * n**3 / _best_seconds(lambda: torch.mm(b, b), 5, clock) / 1e9, [n] * 3, threads))
    out = {}
    for dtype, cs in cands.items():
        ok = [c for c in cs if c.gflops]
        best = max(ok, key=lambda c: c.gflops) if ok else None
        out[dtype] = {"gflops": best.gflops if best else None, "kernel": best.kernel if best else None,
                      "all": [{"kernel": c.kernel, "gflops": c.gflops, "skipped": c.skipped} for c in cs]}
    return out


_GEMM = ("FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul", "Convolution", "Gemm")


def _profile(path: Path, threads: int, inference_precision: str, x: np.ndarray, n: int = 20) -> dict:
    """OpenVINO's per-node CPU time (PERF_COUNT) grouped: GEMMs, fused subgraphs (attention), everything else."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0].any_name: ov.PartialShape(list(x.shape))})
    c = core.compile_model(model, "CPU", {hints.inference_precision: ov.Type.bf16 if inference_precision == "bf16" else ov.Type.f32,
                                          props.inference_num_threads: threads, props.num_streams: 1, props.enable_profiling: True})
    r = c.create_infer_request()
    # what each executed node fused: a Subgraph holding a Softmax is an attention block, others are elementwise chains
    fused = {op.get_friendly_name(): op.get_rt_info()["originalLayersNames"].astype(str).lower()
             for op in c.get_runtime_model().get_ordered_ops()}
    by_type: dict[tuple[str, str], float] = collections.defaultdict(float)
    group = collections.defaultdict(float)
    for i in range(n + 3):
        r.infer({0: x})
        if i >= 3:
            for p in r.profiling_info:
                ms = p.real_time.total_seconds() * 1e3 / n
                node = p.node_type
                if node == "Subgraph" and "softmax" in fused.get(p.node_name, ""):
                    node = "Subgraph (attention)"
                by_type[(node, p.exec_type)] += ms
                group["GEMMs (FullyConnected, MatMul, Convolution)" if node in _GEMM else
                      "attention subgraphs (Q.K^T, softmax, A.V)" if node == "Subgraph (attention)" else
                      "elementwise subgraphs (quantize, add, GELU, SmoothQuant scales)" if node == "Subgraph" else
                      "LayerNorm (MVN)" if node == "MVN" else
                      "Transpose / Reshape / Reorder" if node in ("Transpose", "Reshape", "Reorder") else "everything else"] += ms
    total = sum(by_type.values())
    return {"total_ms": total, "groups_fraction": {k: v / total for k, v in group.items()},
            "top_nodes": [{"node": k[0], "kernel": k[1], "ms": v, "fraction": v / total}
                          for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])[:10]],
            "clock": "OpenVINO real_time per node, summed (wall clock inside the plugin)"}


def sweep(model: str, sizes: list[int], threads_list: list[int], out_dir: Path, seconds: float, rounds: int) -> dict:
    """fp32 ONNX Runtime vs OpenVINO as the work per call shrinks (one model at several input sizes): where OpenVINO's
    per-call overhead (dynamic-shape bookkeeping, thread hand-off) outweighs its faster kernels -- the size term of
    ``auto_rule``."""
    from wherevit.runtime.backends.openvino import estimated_gflops

    rows = []
    for size in sizes:
        res = export_artifacts(ExportRequest(model, out_dir / f"{model}_{size}", batch=(1, 1, 8), imgsz=size))
        meta = read_sidecar(res.onnx)
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        for threads in threads_list:
            runs = {"ort-cpu": OrtCpu(res.onnx, meta, threads=threads).activate(),
                    "openvino": OpenVino(res.onnx, meta, threads=threads).activate()}
            ms: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(rounds):
                for k, b in runs.items():
                    fn = lambda b=b: b.infer({"images": x})  # noqa: E731
                    ms[k].append(_cpu_ms(fn, seconds) if threads == 1 else
                                 time_callable(lambda i: fn(), TimingConfig(min_seconds=seconds))["p50_ms"])
            best = {k: min(v) for k, v in ms.items()}
            rows.append({"imgsz": size, "threads": threads, "estimated_gflops": estimated_gflops(meta),
                         "ms": best, "openvino_over_ort": best["openvino"] / best["ort-cpu"],
                         "auto_rule": auto_rule(meta)[1], "loadavg": os.getloadavg(),
                         "basis": "process CPU time" if threads == 1 else "wall-clock p50"})
            print(rows[-1], flush=True)
    return {"model": model, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_small_patch16_224", help="timm name (random weights) or a checkpoint")
    ap.add_argument("--artifacts", type=Path, default=Path("/tmp/wherevit_cpu_backends"))
    ap.add_argument("--calib-count", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per variant per round (each clock)")
    ap.add_argument("--parity-images", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of every runtime and of PyTorch")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_backends_vits16_1thread.json"))
    ap.add_argument("--sweep-sizes", default=None, help="instead: fp32 ORT vs OpenVINO over these input sizes, e.g. 32,64,112,224")
    ap.add_argument("--sweep-threads", default="1,2")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    if a.sweep_sizes:
        res = sweep(a.model, [int(s) for s in a.sweep_sizes.split(",")], [int(t) for t in a.sweep_threads.split(",")],
                    a.artifacts, a.seconds, a.rounds)
        res.update(command="python " + " ".join(sys.argv), date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   machine=machine_info(peaks=False))
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {a.out}")
        return
    torch.set_num_threads(a.threads)
    isa = cpu_isa()
    load_start = os.getloadavg()
    paths = _artifacts(a.model, a.artifacts, a.calib_count)
    metas = {k: read_sidecar(p) for k, p in paths.items()}
    from wherevit.app.torch_backend import reference_model

    ref = reference_model(dataclasses.replace(metas["fp32"], precision="fp32"))
    pre = metas["fp32"].input_preprocess()
    x1 = pre(generated_images(pre.size, 1, PARITY_SEED + 5000))
    parity_x = pre(generated_images(pre.size, a.parity_images, PARITY_SEED + 6000))

    backends = {}  # name -> runtime backend (activated)
    for key in ("fp32", "int8", "int8-nncf"):
        backends[f"ort-cpu {key}"] = OrtCpu(paths[key], metas[key], threads=a.threads).activate()
    backends["openvino fp32"] = OpenVino(paths["fp32"], metas["fp32"], threads=a.threads).activate()
    if isa.bf16:
        backends["openvino bf16 (fp32 graph, bf16 inference precision)"] = OpenVino(
            paths["fp32"], metas["fp32"], threads=a.threads, inference_precision="bf16").activate()
    for key in ("int8", "int8-nncf"):
        backends[f"openvino {key}"] = OpenVino(paths[key], metas[key], threads=a.threads).activate()
    backends["openvino int8-nncf, static batch-1 shapes"] = OpenVino(paths["int8-nncf"], metas["int8-nncf"], threads=a.threads,
                                                                     static_shapes=True).activate()
    runners = {EAGER: lambda: ref(torch.from_numpy(x1))}
    if isa.bf16:
        def bf16_run(x=x1):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return ref(torch.from_numpy(x))
        runners[BF16] = bf16_run
    for name, b in backends.items():
        runners[name] = (lambda b: (lambda: b.infer({"images": x1})))(b)

    timing = TimingConfig(warmup=3, min_iters=10, min_seconds=a.seconds)
    wall: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    loads, shares = [], []
    for _ in range(a.rounds):  # interleaved, so a burst of load from other users hits every variant
        loads.append(os.getloadavg())
        before, own = _cpu_stat(), time.process_time()
        for name, fn in runners.items():
            wall[name].append(time_callable(lambda i: fn(), timing)["p50_ms"])
            cpu[name].append(_cpu_ms(fn, a.seconds / 2) if a.threads == 1 else _wall_min_ms(fn, a.seconds))
        shares.append(_contention(before, _cpu_stat(), time.process_time() - own))
    basis_name = ("process CPU time per call (median), best round" if a.threads == 1 else
                  "wall clock, fastest single call over all rounds (interference only adds time); p50 per round kept")
    basis = {k: min(cpu[k]) for k in runners}

    # parity: per-sample cosine against PyTorch fp32 on calibration-disjoint scenes, batches of 8 as served
    reference = {k: v.numpy() for k, v in zip(ref.output_names, ref(torch.from_numpy(parity_x)))}
    cos = {}
    for name, b in backends.items():
        got: dict[str, list] = collections.defaultdict(list)
        for i in range(0, a.parity_images, 8):
            for k, v in b.infer({"images": parity_x[i:i + 8]}).items():
                got[k].append(v)
        cmp = compare({k: reference[k] for k in got}, {k: np.concatenate(v) for k, v in got.items()}, min_cosine=0.99)
        cos[name] = {o.name: {"cos_mean": o.cos_mean, "cos_min": o.cos_min, "rel_l2": o.rel_l2} for o in cmp.outputs}
    if BF16 in runners:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ref(torch.from_numpy(parity_x))
        cmp = compare(reference, {k: t.float().numpy() for k, t in zip(ref.output_names, out)}, min_cosine=0.99)
        cos[BF16] = {o.name: {"cos_mean": o.cos_mean, "cos_min": o.cos_min, "rel_l2": o.rel_l2} for o in cmp.outputs}

    clock = time.process_time if a.threads == 1 else time.perf_counter
    peaks = _peaks(a.threads, clock)
    gflops = model_gflops(ref, (1, 3, *pre.size))
    eager = basis[EAGER]

    def dtype_of(name: str) -> str:
        return "int8" if "int8" in name else "bf16" if "bf16" in name else "fp32"

    rows = []
    for name in runners:
        d = dtype_of(name)
        c = cos.get(name)
        rows.append({"variant": name, "dtype": d, "latency_ms": basis[name], "wall_p50_ms_rounds": wall[name],
                     "basis_ms_rounds": cpu[name], "speedup_vs_torch_eager_fp32": eager / basis[name],
                     "model_gflops_per_s": gflops / (basis[name] / 1e3),
                     "fraction_of_peak": gflops / (basis[name] / 1e3) / peaks[d]["gflops"] if peaks[d]["gflops"] else None,
                     "peak_used": peaks[d]["kernel"], "cosine_vs_torch_fp32": c,
                     "min_cosine": min(v["cos_min"] for v in c.values()) if c else (1.0 if name == EAGER else None),
                     "backend_info": backends[name].describe() if name in backends else None})
    ok = [r for r in rows if r["variant"] != EAGER and r["min_cosine"] is not None and r["min_cosine"] >= 0.99]
    best = max(ok, key=lambda r: r["speedup_vs_torch_eager_fp32"])
    target = 5.0 if (isa.vnni or isa.amx_tile) else 2.5
    fp32_rows = [r for r in rows if r["dtype"] == "fp32" and r["variant"] != EAGER]
    fp32_best = min(fp32_rows, key=lambda r: r["latency_ms"])
    floor_ms = gflops / peaks["fp32"]["gflops"] * 1e3
    best_ov = min((r for r in rows if r["variant"].startswith("openvino") and r in ok), key=lambda r: r["latency_ms"])
    ov_key = next(k for k in ("int8-nncf", "int8", "fp32") if k in best_ov["variant"])
    profile = {"artifact": paths[ov_key].name, "best_openvino": _profile(paths[ov_key], a.threads, "f32", x1)}
    if isa.bf16:
        profile["openvino_bf16"] = _profile(paths["fp32"], a.threads, "bf16", x1)
    profile["openvino_fp32"] = _profile(paths["fp32"], a.threads, "f32", x1)
    int8_floor_ms = gflops / peaks["int8"]["gflops"] * 1e3
    by_variant = {r["variant"]: r for r in rows}
    auto = {}
    for key, meta in metas.items():
        order = [n for n in auto_order(meta) if n in ("openvino", "ort-cpu")]
        prefer, why = auto_rule(meta, isa)
        measured = {n: by_variant[f"{n} {key}"]["latency_ms"] for n in ("ort-cpu", "openvino") if f"{n} {key}" in by_variant}
        auto[key] = {"auto_picks": order[0], "rule": why, "measured_ms": measured,
                     "measured_fastest": min(measured, key=measured.get)}
    verdict = {
        "isa": isa.summary,
        "target": f">= {target:g}x PyTorch eager fp32 with cosine >= 0.99 ({'AMX/AVX-512 VNNI' if target == 5 else 'AVX2-only'} CPU)",
        "best": best["variant"], "best_speedup": best["speedup_vs_torch_eager_fp32"], "best_min_cosine": best["min_cosine"],
        "target_met": best["speedup_vs_torch_eager_fp32"] >= target,
        "int8_gemm_floor_ms (model GFLOPs at the int8 peak)": int8_floor_ms,
        "speedup_if_all_at_int8_peak": eager / int8_floor_ms,
        "fp32_floor_ms_at_peak": floor_ms, "fp32_best": fp32_best["variant"], "fp32_best_ms": fp32_best["latency_ms"],
        "fp32_best_over_floor": fp32_best["latency_ms"] / floor_ms,
        "fp32_roofline_target_met (within 25%)": fp32_best["latency_ms"] <= 1.25 * floor_ms,
        "nncf_vs_static_on_openvino": {
            "ms": [by_variant["openvino int8-nncf"]["latency_ms"], by_variant["openvino int8"]["latency_ms"]],
            "min_cosine": [by_variant["openvino int8-nncf"]["min_cosine"], by_variant["openvino int8"]["min_cosine"]]},
    }
    result = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": a.model, "input": [3, *pre.size], "batch": 1, "model_gflops_per_image": gflops, "threads": a.threads,
        "latency_basis": basis_name,
        "contention": {"loadavg_at_start": load_start, "loadavg_per_round": loads, "loadavg_at_end": os.getloadavg(),
                       "per_round": shares,
                       "cores": os.cpu_count(),
                       "note": "2 cores shared with other sessions; per round: other processes' CPU share and steal "
                               "(/proc/stat); each variant's best round"},
        "machine": machine_info(peaks=False), "peaks": peaks, "rows": rows, "verdict": verdict, "auto": auto, "profile": profile,
        "quantization": {k: dataclasses.asdict(metas[k].quantization) for k in ("int8", "int8-nncf")},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2, default=str))
    for r in rows:
        cs = f"{r['min_cosine']:.4f}" if r["min_cosine"] is not None else "-"
        fp = f"{100 * r['fraction_of_peak']:5.1f}% {r['dtype']}" if r["fraction_of_peak"] else "-"
        print(f"{r['variant']:<52} {r['latency_ms']:8.2f} ms  x{r['speedup_vs_torch_eager_fp32']:5.2f}  {fp:>12}  min cos {cs}")
    print(json.dumps({"verdict": verdict, "auto": auto}, indent=1, default=str))
    for k, p in profile.items():
        if isinstance(p, dict):
            print(k, {g: f"{100 * f:.0f}%" for g, f in p["groups_fraction"].items()})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
