"""Latency and throughput of every backend on the same weights, inputs and batch sizes.

Timing rules: warm-up runs are excluded (compilation, engine load, first-call allocation); each
measurement repeats until both a minimum count and a minimum duration are reached; work on a GPU
is synchronised before the clock stops; inputs rotate among several distinct random buffers (never
zeros) so caches do not flatter. Each row also carries parity against the PyTorch fp32 reference,
computed on generated scenes (quantised graphs are calibrated for images, not noise): relative L2
error for fp32/fp16 rows, per-sample cosine similarity for int8 and bf16 rows. The machine section
names the CPU's ISA and its measured GEMM peaks per dtype (``app/machine.py``); each row carries its
fraction of the peak of its dtype.

Precisions: fp32, fp16, bf16, int8 (static Q/DQ) and int8-dynamic (dynamic quantisation).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from wherevit.base.io import atomic_write_text
from wherevit.runtime.compare import compare

__all__ = ["BenchRow", "BenchRequest", "TimingConfig", "time_callable", "machine_info", "write_results", "format_table",
           "run_bench", "ALL_BACKENDS"]


@dataclass
class TimingConfig:
    warmup: int = 3
    min_iters: int = 10
    min_seconds: float = 1.0
    max_iters: int = 10_000
    n_buffers: int = 4


@dataclass
class BenchRow:
    backend: str
    precision: str
    batch: int
    status: str  # ok | skipped | failed
    reason: str = ""
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    throughput_ips: float | None = None
    iters: int | None = None
    rel_l2: float | None = None
    max_abs: float | None = None
    cos_min: float | None = None  # per-sample cosine to the PyTorch fp32 reference: the parity of int8 / bf16 rows
    cos_mean: float | None = None
    parity_ok: bool | None = None
    fraction_of_peak: float | None = None  # model GFLOP/s over the machine's GEMM peak of the row's dtype
    artifact: str | None = None
    artifact_bytes: int | None = None
    h2d_ms: float | None = None
    compute_ms: float | None = None
    d2h_ms: float | None = None
    extra: dict = field(default_factory=dict)


def time_callable(fn: Callable[[int], object], cfg: TimingConfig, sync: Callable[[], None] | None = None) -> dict:
    """Time ``fn(i)`` (i selects the input buffer): warm-up, then until min count and min time."""
    for i in range(cfg.warmup):
        fn(i % cfg.n_buffers)
    if sync:
        sync()
    times = []
    start = time.perf_counter()
    i = 0
    while (i < cfg.min_iters or time.perf_counter() - start < cfg.min_seconds) and i < cfg.max_iters:
        t0 = time.perf_counter()
        fn(i % cfg.n_buffers)
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
        i += 1
    ms = np.array(times) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "iters": int(ms.size)}


COSINE_ROWS = ("int8", "int8-dynamic", "bf16")  # parity by per-sample cosine rather than relative L2


def parity_fields(reference: dict[str, np.ndarray] | None, got: dict[str, np.ndarray], rtol: float | None,
                  min_cosine: float | None = None) -> dict:
    """rel_l2, max_abs and cosine figures; ``parity_ok`` by cosine when ``min_cosine`` is given, else by ``rtol``."""
    if reference is None:
        return {}
    from wherevit.runtime.compare import DEFAULT_MIN_COSINE

    ref = {k: v for k, v in reference.items() if k in got}
    cmp = compare(ref, got, rtol if rtol is not None else float("inf"), min_cosine=min_cosine or DEFAULT_MIN_COSINE)
    ok = bool(cmp) if min_cosine is not None else bool(compare(ref, got, rtol))
    return {"rel_l2": cmp.worst_rel_l2, "max_abs": max((o.max_abs for o in cmp.outputs), default=None),
            "cos_min": cmp.worst_cosine, "cos_mean": min((o.cos_mean for o in cmp.outputs), default=None), "parity_ok": ok}


def _versions() -> dict:
    out = {}
    for mod in ("numpy", "onnxruntime", "torch", "timm", "tensorrt", "tensorrt_rtx", "cv2"):
        try:
            m = __import__(mod)
            out[mod] = str(getattr(m, "__version__", "?"))
        except Exception:
            out[mod] = None
    return out


def machine_info(peaks: bool = False) -> dict:
    """Platform, versions, GPU; with ``peaks`` also the CPU's ISA and measured GEMM peaks (a few seconds)."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cores_available": len(os.sched_getaffinity(0)), "versions": _versions(), "gpu": None}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), info["cpu"])
    except OSError:
        pass
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
        if q.returncode == 0 and q.stdout.strip():
            info["gpu"] = q.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    from wherevit.base.cpu import cpu_isa

    info["isa"] = cpu_isa().to_dict()
    if peaks:
        from wherevit.app.machine import measure_peaks

        info.update(measure_peaks())
    return info


def format_table(rows: list[BenchRow]) -> str:
    head = (f"{'backend':<26}{'prec':<13}{'batch':>6}  {'status':<8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'img/s':>10}"
            f"{'parity':>16}{'peak':>7}  note")
    lines = [head, "-" * len(head)]
    f = lambda v, fmt: format(v, fmt) if v is not None else "-".rjust(int(fmt.split(".")[0]))
    for r in rows:
        note = r.reason if r.status != "ok" else ("PARITY FAIL" if r.parity_ok is False else "")
        if r.precision in COSINE_ROWS and r.cos_min is not None:
            parity = f"cos {r.cos_min:.4f}".rjust(16)
        else:
            parity = ("rel_l2 " + format(r.rel_l2, ".2e")).rjust(16) if r.rel_l2 is not None else "-".rjust(16)
        peak = f"{100 * r.fraction_of_peak:6.0f}%" if r.fraction_of_peak is not None else "-".rjust(7)
        lines.append(f"{r.backend:<26}{r.precision:<13}{r.batch:>6}  {r.status:<8}{f(r.p50_ms, '9.3f')}{f(r.p90_ms, '9.3f')}"
                     f"{f(r.p99_ms, '9.3f')}{f(r.throughput_ips, '10.1f')}{parity}{peak}  {note}")
    return "\n".join(lines)


def write_results(rows: list[BenchRow], out_dir: Path, meta: dict) -> dict[str, Path]:
    """bench.json (rows + machine + settings), bench.csv, and bench.png when matplotlib is present."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "csv": out_dir / "bench.csv"}
    atomic_write_text(paths["json"], json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=2))
    fields = [k for k in asdict(rows[0]) if k != "extra"] if rows else []
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(asdict(r))
    atomic_write_text(paths["csv"], buf.getvalue())
    png = _plot(rows, out_dir / "bench.png")
    if png:
        paths["png"] = png
    return paths


def _plot(rows: list[BenchRow], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [r for r in rows if r.status == "ok"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key in sorted({(r.backend, r.precision) for r in ok}):
        pts = sorted((r.batch, r.p50_ms, r.throughput_ips) for r in ok if (r.backend, r.precision) == key)
        b = [p[0] for p in pts]
        ax1.plot(b, [p[1] for p in pts], marker="o", label=f"{key[0]} {key[1]}")
        ax2.plot(b, [p[2] for p in pts], marker="o", label=f"{key[0]} {key[1]}")
    for ax, title, ylabel in ((ax1, "latency (p50)", "ms"), (ax2, "throughput", "images / s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# -- orchestration ------------------------------------------------------------------------------

RUNTIME_BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "tensorrt")
TORCH_BACKENDS = ("torch-eager", "torch-compile", "torch-compile-cudagraphs")
ALL_BACKENDS = RUNTIME_BACKENDS + TORCH_BACKENDS


@dataclass
class BenchRequest:
    target: str  # an artifact (.onnx/.engine with sidecar) or a checkpoint / timm name
    out_dir: Path
    backends: tuple[str, ...] = ALL_BACKENDS
    batches: tuple[int, ...] = (1, 8)
    precisions: tuple[str, ...] = ("fp32",)
    reference: str | None = None  # checkpoint for PyTorch rows and parity (default: from the sidecar)
    include_copies: bool = True
    timing: TimingConfig = field(default_factory=TimingConfig)
    imgsz: int | None = None
    progress: bool = True


def _torch_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _artifacts_for(req: BenchRequest, notes: list[str]) -> tuple[dict[tuple[str, str], tuple[Path, dict]], str | None]:
    """(kind, precision) -> (artifact path, its verified sidecar), and the checkpoint for PyTorch rows.

    Each sidecar is read (and its artifact hashed) once here; the rows reuse it."""
    from wherevit.base.sidecar import read_sidecar, sidecar_path

    target = Path(req.target)
    if target.is_file() and sidecar_path(target).is_file():
        meta = read_sidecar(target)
        arts = {(meta["kind"], bench_precision(meta)): (target, meta)}
        for other in sorted(target.parent.glob("model_*.*")):  # siblings exported together
            if other != target and sidecar_path(other).is_file() and other.suffix in (".onnx", ".engine"):
                m = read_sidecar(other)
                arts.setdefault((m["kind"], bench_precision(m)), (other, m))
        ckpt = req.reference or meta.get("model", {}).get("checkpoint")
        return arts, ckpt
    # A checkpoint: export what the requested backends need into out_dir/artifacts.
    from wherevit.export.api import ExportRequest, export_artifacts

    arts = {}
    hi = max(req.batches)
    batch = (1, min(8, hi), hi)
    want_engine = "tensorrt" in req.backends and _torch_device() == "cuda"
    from wherevit.export.quantize import QuantOptions

    for p in req.precisions:
        fmt = "engine" if want_engine else "onnx"
        prec, quant = ("int8", QuantOptions(mode="dynamic" if p == "int8-dynamic" else "static")) if p.startswith("int8") else (p, QuantOptions())
        try:
            res = export_artifacts(ExportRequest(req.target, req.out_dir / "artifacts", format=fmt, precision=prec, batch=batch,
                                                 imgsz=req.imgsz, quant=quant))
        except Exception as e:
            if fmt == "engine":
                res = export_artifacts(ExportRequest(req.target, req.out_dir / "artifacts", precision=prec, batch=batch, imgsz=req.imgsz,
                                                     quant=quant))
                notes.append(f"{p} engine build failed: {e}")
            else:
                raise
        notes += res.notes
        if res.int8 is not None:
            arts.setdefault(("onnx", "fp32"), (res.onnx, read_sidecar(res.onnx)))
            arts[("onnx", p)] = (res.int8, read_sidecar(res.int8))
        else:
            arts[("onnx", p)] = (res.onnx, read_sidecar(res.onnx))
        if res.engine:
            arts[("engine", p)] = (res.engine, read_sidecar(res.engine))
    return arts, req.reference or req.target


def bench_precision(meta: dict) -> str:
    """A row's precision label: the sidecar's, with dynamic INT8 told apart from static Q/DQ."""
    q = meta.get("quantization") or {}
    return "int8-dynamic" if meta.get("precision") == "int8" and q.get("mode") == "dynamic" else meta["precision"]


def run_bench(req: BenchRequest) -> tuple[list[BenchRow], dict[str, Path]]:
    """Benchmark every (backend, precision, batch); returns rows and the written files."""
    from tqdm import tqdm

    from wherevit.runtime.backends import registered_backends
    from wherevit.runtime.compare import DEFAULT_MIN_COSINE, DEFAULT_RTOL
    unknown = set(req.backends) - set(ALL_BACKENDS)
    if unknown:
        raise ValueError(f"unknown backend(s) {sorted(unknown)}; choose from {', '.join(ALL_BACKENDS)}")
    notes: list[str] = []
    arts, ckpt = _artifacts_for(req, notes)
    meta0 = next(iter(arts.values()))[1]
    c, h, w = [int(d) for d in meta0["inputs"][0]["shape"][1:]]
    rng = np.random.default_rng(0)
    buffers = {b: [rng.standard_normal((b, c, h, w)).astype(np.float32) for _ in range(req.timing.n_buffers)] for b in req.batches}
    scenes = _parity_batches(meta0, req.batches)

    # The PyTorch fp32 reference, once per batch size.
    ref_out, torch_reason = {}, None
    try:
        from wherevit.app.torch_backend import TorchRunner, torch_unavailable_reason
    except ImportError as e:
        torch_reason = f"PyTorch is not installed ({e.name}); pip install 'wherevit[export]'"
    if torch_reason is None and not ckpt:
        torch_reason = "no checkpoint for the PyTorch reference (pass --reference)"
    if torch_reason is None:
        try:
            ref_runner = TorchRunner(ckpt, "torch-eager", "fp32", "cpu", imgsz=(h, w) if (h, w) != (224, 224) else None)
            ref_out = {b: ref_runner.infer({"images": scenes[b]}) for b in req.batches}
        except Exception as e:
            torch_reason = f"cannot load the PyTorch reference {ckpt!r}: {e}"
    device = _torch_device()
    rows: list[BenchRow] = []
    combos = [(p, be) for p in req.precisions for be in req.backends]
    bar = tqdm(total=len(combos) * len(req.batches), desc="bench", unit="row", disable=not req.progress)
    for prec, name in combos:
        rtol = DEFAULT_RTOL.get(prec)
        min_cos = DEFAULT_MIN_COSINE if prec in COSINE_ROWS else None

        def skip(reason: str) -> None:
            for b in req.batches:
                rows.append(BenchRow(name, prec, b, "skipped", reason))
                bar.update()

        if name in TORCH_BACKENDS:
            if torch_reason:
                skip(torch_reason)
                continue
            reason = torch_unavailable_reason(name, prec, device)
            if reason:
                skip(reason)
                continue
            try:
                runner = TorchRunner(ckpt, name, prec, device, imgsz=(h, w) if (h, w) != (224, 224) else None)
            except Exception as e:
                skip(f"failed to build: {type(e).__name__}: {e}")
                continue
            for b in req.batches:
                rows.append(_bench_torch(runner, name, prec, b, buffers[b], ref_out.get(b), rtol, req, device, scenes[b], min_cos))
                bar.update()
            continue

        cls = registered_backends()[name]
        kind = cls.kinds[0]
        art, meta = arts.get((kind, prec), (None, None))
        if art is None:
            skip(f"no {prec} {kind} artifact (export one with --format {'engine' if kind == 'engine' else 'onnx'} --precision {prec})")
            continue
        reason = cls.unavailable_reason(meta)
        if reason:
            skip(reason)
            continue
        try:
            backend = cls(art, meta).activate()
        except Exception as e:
            skip(f"failed to load: {type(e).__name__}: {e}")
            continue
        try:
            for b in req.batches:
                if not meta["batch"]["min"] <= b <= meta["batch"]["max"]:
                    rows.append(BenchRow(name, prec, b, "skipped", f"batch {b} outside the artifact's {meta['batch']['min']}..{meta['batch']['max']}"))
                else:
                    rows.append(_bench_backend(backend, name, prec, b, buffers[b], ref_out.get(b), rtol, art, req.timing, scenes[b], min_cos))
                bar.update()
        finally:
            backend.deactivate()
    bar.close()
    settings = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "target": str(req.target), "reference": ckpt, "batches": list(req.batches), "precisions": list(req.precisions),
                "include_copies": req.include_copies, "timing": asdict(req.timing), "input_shape": [c, h, w],
                "torch_device": device, "notes": notes,
                "parity_inputs": "generated scenes (seed 61000+), preprocessed per the sidecar; timing on random buffers"}
    machine = machine_info(peaks=True)
    if ref_out:
        from wherevit.app.machine import annotate_fractions, model_gflops

        gflops = model_gflops(ref_runner.model, (1, c, h, w))
        settings["model_gflops_per_image"] = gflops
        annotate_fractions(rows, gflops, machine.get("peaks", {}), cpu_rows=lambda r: _on_cpu(r.backend, device))
    return rows, write_results(rows, req.out_dir, {"machine": machine, "settings": settings})


def _on_cpu(backend: str, torch_device: str) -> bool:
    from wherevit.runtime.backends import registered_backends

    cls = registered_backends().get(backend)
    return cls.device == "cpu" if cls is not None else torch_device == "cpu"


def _parity_batches(meta: dict, batches) -> dict[int, np.ndarray]:
    """Generated scenes (disjoint from INT8 calibration seeds), preprocessed as the artifact's sidecar says."""
    from wherevit.base.image import Preprocess
    from wherevit.export.quantize import PARITY_SEED, generated_images

    pre = Preprocess.from_dict(meta["preprocess"])
    return {b: pre(generated_images(pre.size, b, PARITY_SEED + 1000)) for b in batches}


def _bench_backend(backend, name, prec, b, bufs, ref, rtol, art: Path, timing: TimingConfig, parity_x: np.ndarray,
                   min_cos: float | None = None) -> BenchRow:
    feed = lambda i: backend.infer({backend.meta["inputs"][0]["name"]: bufs[i]})
    try:
        t = time_callable(feed, timing)
        out = backend.infer({backend.meta["inputs"][0]["name"]: parity_x})
    except Exception as e:
        return BenchRow(name, prec, b, "failed", f"{type(e).__name__}: {e}")
    row = BenchRow(name, prec, b, "ok", **t, throughput_ips=b * 1000 / t["mean_ms"], artifact=str(art),
                   artifact_bytes=art.stat().st_size, **parity_fields(ref, out, rtol, min_cos))
    split = getattr(backend, "last_timings", None)
    if split:
        row.h2d_ms, row.compute_ms, row.d2h_ms = split.get("h2d_ms"), split.get("compute_ms"), split.get("d2h_ms")
    return row


def _bench_torch(runner, name, prec, b, bufs, ref, rtol, req: BenchRequest, device: str, parity_x: np.ndarray,
                 min_cos: float | None = None) -> BenchRow:
    import torch

    try:
        if req.include_copies:
            fn = lambda i: runner.infer({"images": bufs[i]})
        else:
            dev = [torch.from_numpy(x).to(device) for x in bufs]
            fn = lambda i: runner.infer_device(dev[i])
        t = time_callable(fn, req.timing, sync=runner.sync)
        out = runner.infer({"images": parity_x})
    except Exception as e:
        return BenchRow(name, prec, b, "failed", f"{type(e).__name__}: {str(e)[:300]}")
    return BenchRow(name, prec, b, "ok", **t, throughput_ips=b * 1000 / t["mean_ms"], **parity_fields(ref, out, rtol, min_cos))

