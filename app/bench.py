"""Latency and throughput of every backend on the same weights, inputs and batch sizes.

Timing rules: warm-up runs are excluded (compilation, engine load, first-call allocation); each
measurement repeats until both a minimum count and a minimum duration are reached; work on a GPU
is synchronised before the clock stops; inputs rotate among several distinct random buffers (never
zeros) so caches do not flatter. Each row also carries parity against the PyTorch fp32 reference,
computed on generated scenes (quantised graphs are calibrated for images, not noise): relative L2
error for fp32/fp16 rows, per-sample cosine similarity for int8 and bf16 rows. The machine section
names the CPU's ISA and its measured GEMM peaks per dtype (``app/machine.py``); each CPU row carries
its fraction of the peak of its dtype.

Precisions: every name in ``base/precision.py`` (fp32, fp16, bf16, int8 static Q/DQ) and the row label
int8-dynamic (dynamic quantisation); a row is judged by per-sample cosine where its precision states a
cosine bound, else by relative L2. Backends are asked through their declarations (precisions,
``stages_inputs``) and optional abilities (``sync``, ``last_timings``, ``to_device``), never probed.
"""

from __future__ import annotations

import csv
import dataclasses
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

from wherevit.base.errors import WherevitError
from wherevit.base.io import atomic_write_text
from wherevit.base.precision import DEFAULT_MIN_COSINE, REFERENCE_PRECISION, get_precision, parse_precision_label, precision_label
from wherevit.base.sidecar import Sidecar, read_sidecar, sidecar_path
from wherevit.runtime.backends import Backend
from wherevit.runtime.backends.base import BACKENDS
from wherevit.runtime.compare import compare

__all__ = ["BenchRow", "BenchRequest", "TimingConfig", "time_callable", "machine_info", "write_results", "format_table",
           "run_bench", "bench_precision", "judged_by_cosine"]


def judged_by_cosine(label: str) -> bool:
    """A row of this precision label is judged by per-sample cosine (its precision states a cosine bound)."""
    return get_precision(parse_precision_label(label)[0]).min_cosine is not None


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
    fraction_of_peak: float | None = None  # CPU rows: model GFLOP/s over the machine's GEMM peak of the row's dtype
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


def parity_fields(reference: dict[str, np.ndarray] | None, got: dict[str, np.ndarray], rtol: float,
                  min_cosine: float | None = None) -> dict:
    """The row's parity against the PyTorch fp32 reference; outputs missing from ``got`` fail it.

    Cosine figures are always reported; ``parity_ok`` is judged by cosine when ``min_cosine`` is given, else by ``rtol``."""
    if not reference:
        return {}
    ref = {k: v for k, v in reference.items() if np.issubdtype(v.dtype, np.floating)}
    cmp = compare(ref, got, rtol, min_cosine=min_cosine or DEFAULT_MIN_COSINE)
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
    """Platform, versions, GPU and the CPU's ISA; with ``peaks`` also measured GEMM peaks per dtype (a few seconds)."""
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
        if judged_by_cosine(r.precision) and r.cos_min is not None:
            parity = f"cos {r.cos_min:.4f}".rjust(16)
        else:
            parity = f"rel_l2 {r.rel_l2:.2e}".rjust(16) if r.rel_l2 is not None else "-".rjust(16)
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


@dataclass
class BenchRequest:
    target: str  # an artifact (with sidecar) or a checkpoint / timm name
    out_dir: Path
    backends: tuple[str, ...] | None = None  # None: every registered backend
    batches: tuple[int, ...] = (1, 8)
    precisions: tuple[str, ...] = ("fp32",)
    reference: str | None = None  # checkpoint for PyTorch rows and parity (default: from the sidecar)
    include_copies: bool = True
    timing: TimingConfig = field(default_factory=TimingConfig)
    imgsz: int | None = None
    progress: bool = True
    weights: str | None = None  # a weights file for the timm model named by ``target`` (exported first)
    pretrained: bool = False  # or timm's own download of it


Artifacts = dict[tuple[str, str], tuple[Path, Sidecar]]  # (kind, precision) -> (file, its verified sidecar)


def _artifacts_for(req: BenchRequest, notes: list[str]) -> Artifacts:
    """The artifacts to bench, each sidecar read (and its artifact hashed) once.

    An artifact brings its siblings exported with it; a checkpoint is exported first, to what the
    requested backends can run here (an engine only where a GPU is)."""
    target = Path(req.target)
    if target.is_file() and sidecar_path(target).is_file():
        meta = read_sidecar(target)
        arts = {(meta.kind, bench_precision(meta)): (target, meta)}
        for other in sorted(target.parent.iterdir()):  # siblings exported together (same model, same task)
            if other != target and sidecar_path(other).is_file():
                m = read_sidecar(other)
                if m.task == meta.task and m.model.checkpoint == meta.model.checkpoint:
                    arts.setdefault((m.kind, bench_precision(m)), (other, m))
        return _with_reference(arts, req.reference)
    from wherevit.export.api import ExportRequest, export_artifacts
    from wherevit.export.quant_step import QuantizeStep
    from wherevit.export.quantize import QuantOptions

    arts: Artifacts = {}
    hi = max(req.batches)
    batch = (1, min(8, hi), hi)
    want_engine = "tensorrt" in (req.backends or ("tensorrt",)) and torch_device() == "cuda"
    for p in req.precisions:
        fmt = "engine" if want_engine else "onnx"
        prec, mode = parse_precision_label(p)
        options = {QuantizeStep.name: QuantOptions(mode=mode)} if mode else {}
        try:
            res = export_artifacts(ExportRequest(req.target, req.out_dir / "artifacts", format=fmt, precision=prec, batch=batch,
                                                 imgsz=req.imgsz, format_options=options,
                                                 weights=req.weights, pretrained=req.pretrained))
        except WherevitError as e:
            if fmt != "engine":
                raise
            res = export_artifacts(ExportRequest(req.target, req.out_dir / "artifacts", precision=prec, batch=batch, imgsz=req.imgsz,
                                                 format_options=options, weights=req.weights, pretrained=req.pretrained))
            notes.append(f"{p} engine build failed: {e}")
        notes += res.notes
        for path in res.artifacts.values():
            m = read_sidecar(path)
            arts.setdefault((m.kind, bench_precision(m)), (path, m))
    return _with_reference(arts, req.reference)


def bench_precision(meta: Sidecar) -> str:
    """A row's precision label: the sidecar's, with dynamic INT8 told apart from static Q/DQ."""
    return precision_label(meta.precision, meta.quantization.mode if meta.quantization else None)


def _with_reference(arts: Artifacts, reference: str | None) -> Artifacts:
    """--reference overrides the checkpoint the PyTorch rows and the parity reference rebuild."""
    if not reference:
        return arts
    return {k: (p, dataclasses.replace(m, model=dataclasses.replace(m.model, checkpoint=reference))) for k, (p, m) in arts.items()}


def torch_device() -> str:
    """Where the PyTorch rows run ("cpu" without torch or a GPU)."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_missing() -> str | None:
    """Why the PyTorch rows (and the parity reference) cannot run here, or None."""
    import importlib.util

    return None if importlib.util.find_spec("torch") else "PyTorch is not installed; pip install 'wherevit[export]'"


def _pick(arts: Artifacts, cls: type[Backend], precision: str) -> tuple[Path, Sidecar] | None:
    """The artifact a backend runs at ``precision``: one of its kinds, or (PyTorch backends, which
    rebuild the source model) any artifact, re-labelled with that precision."""
    for kind in cls.kinds:
        if (kind, precision) in arts:
            return arts[(kind, precision)]
    if not cls.kinds and arts:
        path, meta = next(iter(arts.values()))
        return path, dataclasses.replace(meta, precision=precision)
    return None


def _references(arts: Artifacts, parity: dict[int, dict[str, np.ndarray]]) -> tuple[dict[int, dict], str | None]:
    """PyTorch fp32 eager outputs per batch size on the parity inputs: the reference of every row."""
    path, meta = next(iter(arts.values()))
    meta = dataclasses.replace(meta, precision=REFERENCE_PRECISION)
    reason = _torch_missing()
    if reason:
        return {}, reason
    TorchEager = BACKENDS.get("torch-eager")  # the entry point, imported by name
    reason = TorchEager.unavailable_reason(meta)
    if reason:
        return {}, reason
    try:
        with TorchEager(path, meta, device="cpu") as ref:
            return {b: ref.infer(x) for b, x in parity.items()}, None
    except Exception as e:  # noqa: BLE001 -- a broken reference disables parity, it does not stop the bench
        return {}, f"cannot run the PyTorch reference {meta.model.checkpoint!r}: {type(e).__name__}: {e}"


def _input_buffers(meta: Sidecar, batches: tuple[int, ...], n: int) -> dict[int, list[dict[str, np.ndarray]]]:
    """Distinct random inputs per batch size (never zeros, so caches do not flatter)."""
    rng = np.random.default_rng(0)
    size = meta.input_preprocess().size
    shapes = {t.name: [d if d > 0 else s for d, s in zip(t.shape[1:], (3, *size))] for t in meta.inputs}
    return {b: [{k: rng.standard_normal((b, *shape)).astype(np.float32) for k, shape in shapes.items()} for _ in range(n)]
            for b in batches}


def _parity_inputs(meta: Sidecar, batches: tuple[int, ...]) -> dict[int, dict[str, np.ndarray]]:
    """Generated scenes (disjoint from INT8 calibration seeds), preprocessed as the sidecar says, per batch size."""
    from wherevit.export.quantize import PARITY_SEED, generated_images

    pre = meta.input_preprocess()
    return {b: {n: pre(generated_images(pre.size, b, PARITY_SEED + 1000 * (k + 1))) for k, n in enumerate(meta.input_names)}
            for b in batches}


def _peak_fractions(rows: list[BenchRow], first: Sidecar, machine: dict, settings: dict) -> None:
    """Each CPU row's model GFLOP/s over its dtype's peak (needs PyTorch to count the model's FLOPs)."""
    if _torch_missing() is not None or not first.model.checkpoint:
        return
    from wherevit.app.machine import annotate_fractions, model_gflops
    from wherevit.app.torch_backend import reference_model

    try:
        model = reference_model(dataclasses.replace(first, precision=REFERENCE_PRECISION))
    except Exception as e:  # noqa: BLE001 -- no FLOP count means no fraction column, not a failed bench
        settings["notes"].append(f"no fraction-of-peak column: {type(e).__name__}: {e}")
        return
    size = first.input_preprocess().size
    gflops = model_gflops(model, (1, 3, *size), len(first.input_names))
    settings["model_gflops_per_image"] = gflops
    backends = BACKENDS.items()

    def on_cpu(row: BenchRow) -> bool:  # PyTorch backends (no artifact kind) run where torch_device() says
        cls = backends.get(row.backend)
        return cls is not None and (cls.device == "cpu" if cls.kinds else torch_device() == "cpu")

    annotate_fractions(rows, gflops, machine.get("peaks", {}), cpu_rows=on_cpu)


def run_bench(req: BenchRequest) -> tuple[list[BenchRow], dict[str, Path]]:
    """Benchmark every (backend, precision, batch); returns rows and the written files."""
    from tqdm import tqdm

    torch_missing = _torch_missing()
    names = req.backends or tuple(BACKENDS.items())  # every backend, entry points included (importing them imports no torch)
    backends = {name: BACKENDS.get(name) for name in names}  # an unknown name names the registered ones
    for p in req.precisions:
        parse_precision_label(p)  # an unknown precision names the known ones, before anything is exported
    notes: list[str] = [torch_missing] if torch_missing else []
    arts = _artifacts_for(req, notes)
    first = next(iter(arts.values()))[1]
    buffers = _input_buffers(first, req.batches, req.timing.n_buffers)
    parity = _parity_inputs(first, req.batches)
    ref_out, ref_reason = _references(arts, parity)
    if ref_reason:
        notes.append(f"no parity column: {ref_reason}")
    rows: list[BenchRow] = []
    bar = tqdm(total=len(names) * len(req.precisions) * len(req.batches), desc="bench", unit="row", disable=not req.progress)
    for prec in req.precisions:
        for name in names:
            rows += _bench_one(backends[name], prec, arts, buffers, ref_out, req, parity)
            bar.update(len(req.batches))
    bar.close()
    c, h, w = (int(d) for d in buffers[req.batches[0]][0][first.input_names[0]].shape[1:])
    settings = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "target": str(req.target),
                "reference": first.model.checkpoint, "batches": list(req.batches), "precisions": list(req.precisions),
                "include_copies": req.include_copies, "timing": asdict(req.timing), "input_shape": [c, h, w],
                "torch_device": torch_device(), "notes": notes,
                "parity_inputs": "generated scenes (seeds 61000+), preprocessed per the sidecar; timing on random buffers"}
    machine = machine_info(peaks=True)
    _peak_fractions(rows, first, machine, settings)
    return rows, write_results(rows, req.out_dir, {"machine": machine, "settings": settings})


def _bench_one(cls: type[Backend], prec: str, arts: Artifacts, buffers, ref_out: dict, req: BenchRequest,
               parity: dict[int, dict[str, np.ndarray]]) -> list[BenchRow]:
    """One backend at one precision: a row per batch size (skipped rows say why)."""
    skip = lambda reason: [BenchRow(cls.name, prec, b, "skipped", reason) for b in req.batches]
    picked = _pick(arts, cls, prec)
    if picked is None:
        precision, mode = parse_precision_label(prec)
        if precision not in cls.precisions:
            return skip(cls.precision_reason(precision))
        how = f"--precision {precision}" + (f" --quant {mode}" if mode and mode != get_precision(precision).quant_modes[0] else "")
        return skip(f"no {prec} {'/'.join(cls.kinds)} artifact (export one with --format {cls.kinds[0]} {how})")
    art, meta = picked
    reason = cls.unavailable_reason(meta)
    if reason:
        return skip(reason)
    try:
        backend = cls(art, meta).activate()
    except Exception as e:  # noqa: BLE001 -- one backend failing to load is a row, not the end of the bench
        return skip(f"failed to load: {type(e).__name__}: {str(e)[:300]}")
    p = get_precision(parse_precision_label(prec)[0])
    rtol = p.rtol if p.rtol is not None else get_precision(REFERENCE_PRECISION).rtol
    min_cos = p.min_cosine
    rows = []
    try:
        for b in req.batches:
            if b not in meta.batch:
                rows.append(BenchRow(cls.name, prec, b, "skipped", f"batch {b} outside the artifact's {meta.batch.min}..{meta.batch.max}"))
            else:
                rows.append(_bench_backend(backend, prec, b, buffers[b], ref_out.get(b), rtol, art, req, parity[b], min_cos))
    finally:
        backend.deactivate()
    return rows


def _bench_backend(backend: Backend, prec: str, b: int, bufs: list[dict], ref, rtol, art: Path, req: BenchRequest,
                   parity_x: dict[str, np.ndarray], min_cos: float | None = None) -> BenchRow:
    name, extra = backend.name, {}
    if not req.include_copies and backend.stages_inputs:  # inputs placed on the device once, outside the clock
        staged = [backend.to_device(x) for x in bufs]
        fn = lambda i: backend.infer_device(staged[i])
        extra["copies"] = "excluded: inputs staged on the device before timing"
    else:
        fn = lambda i: backend.infer(bufs[i])
        extra["copies"] = "included" if req.include_copies else "included: this backend takes host arrays only"
    try:
        t = time_callable(fn, req.timing, sync=backend.sync)
        out = backend.infer(parity_x)
    except Exception as e:  # noqa: BLE001 -- a failed run is a row with the reason
        return BenchRow(name, prec, b, "failed", f"{type(e).__name__}: {str(e)[:300]}")
    row = BenchRow(name, prec, b, "ok", **t, throughput_ips=b * 1000 / t["mean_ms"], artifact=str(art),
                   artifact_bytes=art.stat().st_size if art.is_file() else None, extra=extra, **parity_fields(ref, out, rtol, min_cos))
    split = backend.last_timings()
    if split:
        row.h2d_ms, row.compute_ms, row.d2h_ms = split.get("h2d_ms"), split.get("compute_ms"), split.get("d2h_ms")
    return row
