"""The GPU day in one run: what needs a CUDA GPU, checked end to end on a lent H100/H200, into one JSON.

    bash scripts/gpu_check.sh                     # on the GPU box (<= 10 min); writes benchmarks/results/gpu_check/<date>_<gpu>.json
    bash scripts/gpu_check.sh --dry-run           # anywhere: which steps could run here, and why not

Steps, in order (each records ok, skipped with the reason, or failed with the error; none stops the
others, and the JSON is rewritten after each, so a run cut off by its time limit keeps what it did):

1. ``env``          GPU, compute capability, driver, torch/CUDA, ONNX Runtime providers, TensorRT-RTX, tools.
2. ``train``        a few bf16 + ``torch.compile`` training steps of the quickstart model with every plug-in
                    and iBOT (``configs/quickstart_all.yaml``) through the real training loop.
3. ``onnx_cuda``    the trained backbone exported to ONNX (fp32 and fp16) and run on ONNX Runtime's CUDA
                    provider, with parity against PyTorch fp32 (fp32 with TF32 off: 1e-4; fp16: 1e-2).
4. ``pt2_cpp_cuda`` a CUDA AOTInductor package of it, run by the C++ app ``wherevit_aoti --device cuda``
                    (built here with CMake against this torch), compared with PyTorch fp32.
5. ``tensorrt_rtx`` a TensorRT-RTX engine built and run where the compute capability allows; on 9.0
                    (H100/H200) the refusal is recorded, with TensorRT-RTX's own words when it is installed.
6. ``bench``        ViT-S/16 at 224, batches 1/8/64: PyTorch eager and compiled, ONNX Runtime CUDA, inputs
                    on the device, each row beside the matching anchor (``benchmarks/anchors/``) and its ratio.

``--rehearse-on-cpu`` runs the same steps on a CPU with CPU stand-ins (device cpu, no compile, ONNX
Runtime's CPU provider, a CPU .pt2, compute capability taken as 9.0, a tiny bench), so the code that
will meet the GPU has run before the GPU minutes are spent; its numbers are not GPU results.

Packages the box lacks travel as wheels (``--site DIR`` goes first on ``sys.path``; see
scripts/gpu_check.sh); a step whose package is missing is skipped and says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ANCHORS = REPO / "benchmarks" / "anchors"
FORMAT = "wherevit.gpu_check/1"
STEP_NAMES = ("env", "train", "onnx_cuda", "pt2_cpp_cuda", "tensorrt_rtx", "bench")
RTX_CCS = ("8.0", "8.6", "8.7", "8.9", "12.0")  # what TensorRT-RTX runs on (not 9.0, Hopper)


@dataclass
class Context:
    work: Path  # scratch: runs, artifacts, builds (not committed)
    dry_run: bool
    deadline: float  # time.monotonic() after which no step starts
    cpp_deps: Path | None = None
    train_steps: int = 20
    rehearse: bool = False  # CPU stand-ins for every GPU part (see the module docstring)
    trained_run: Path | None = None  # set by `train`, used by the steps after it
    facts: dict = field(default_factory=dict)

    @property
    def device(self) -> str:
        return "cpu" if self.rehearse else "cuda"


@dataclass
class Step:
    name: str
    what: str
    budget_s: int  # a step starts only with this much time left
    check: Callable[[Context], str | None]  # why it cannot run here, or None
    run: Callable[[Context], dict]


# --- availability ---------------------------------------------------------------------------------

def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError as e:
        return f"PyTorch is not installed ({e})"
    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    return None


def _ort_cuda_reason() -> str | None:
    try:
        import onnxruntime as ort
    except ImportError as e:
        return f"onnxruntime is not installed ({e})"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: {', '.join(ort.get_available_providers())}): "
                "the CPU build; carry onnxruntime-gpu and pass --site (scripts/gpu_check.sh --help)")
    return None


_GPU_CHECKS = {"_cuda_reason", "_ort_cuda_reason"}  # what a CPU rehearsal stands in for


def _needs(*checks: Callable[[], str | None]) -> Callable[[Context], str | None]:
    def check(ctx: Context) -> str | None:
        todo = [c for c in checks if not (ctx.rehearse and c.__name__ in _GPU_CHECKS)]
        return next((r for r in (c() for c in todo) if r), None)

    return check


def _device_cc(ctx: Context) -> str:
    if ctx.rehearse:
        return "9.0"  # an H100's: the refusal path is the one a lent GPU takes
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


# --- steps ------------------------------------------------------------------------------------------

def step_env(ctx: Context) -> dict:
    out: dict = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("torch", "timm", "onnx", "onnxruntime", "tensorrt_rtx", "tensorrt", "cv2", "numpy"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001 -- a broken install is a fact to record
            out[mod] = f"missing: {type(e).__name__}: {e}"[:200]
    try:
        import onnxruntime as ort

        out["ort_providers"] = ort.get_available_providers()
    except Exception:  # noqa: BLE001
        pass
    try:
        import torch

        out["cuda_available"] = torch.cuda.is_available()
        out["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            out.update(gpu=p.name, compute_capability=_device_cc(ctx), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                       multiprocessors=p.multi_processor_count)
    except ImportError:
        pass
    for tool, args in (("nvidia-smi", ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]),
                       ("nvcc", ["--version"]), ("cmake", ["--version"]), ("c++", ["--version"])):
        exe = shutil.which(tool)
        if exe is None:
            out[tool] = "missing"
            continue
        try:
            r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)
            out[tool] = (r.stdout.strip().splitlines() or [""])[-1 if tool == "nvcc" else 0][:200]
        except (OSError, subprocess.TimeoutExpired) as e:
            out[tool] = f"failed: {e}"
    try:
        from wherevit.app.bench import machine_info

        out["host"] = machine_info(peaks=False)  # CPU model and ISA, package versions
    except Exception as e:  # noqa: BLE001
        out["host"] = f"unknown: {type(e).__name__}: {e}"
    ctx.facts.update(out)
    return {"recorded_in": "machine", "fields": sorted(out)}


def step_train(ctx: Context) -> dict:
    from wherevit.train.config import load_train_config
    from wherevit.train.loop import train
    from wherevit.train.plugins import registered_plugins

    n = ctx.train_steps
    gpu = not ctx.rehearse
    overrides = [f"total_steps={n}", f"device={ctx.device}", f"precision={'bf16' if gpu else 'fp32'}", f"compile={str(gpu).lower()}",
                 f"log_every={max(1, n // 4)}", f"ckpt_every={n}", f"data.num_workers={4 if gpu else 0}", "data.synthetic_count=512"]
    cfg = load_train_config("quickstart_all", overrides)
    missing = sorted(set(registered_plugins()) - set(cfg.plugins))
    run_dir = ctx.work / "train_quickstart_all"
    t0 = time.perf_counter()
    res = train(cfg, run_dir, progress=False)
    wall = time.perf_counter() - t0
    logs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    logs = [r for r in logs if "loss" in r]
    ctx.trained_run = run_dir
    finite = all(np.isfinite(r["loss"]) for r in logs)
    return {
        "config": "quickstart_all", "overrides": overrides, "plugins": sorted(cfg.plugins), "ibot": cfg.ibot.enabled,
        "plugins_not_in_config": missing, "steps": res.step, "wall_s": round(wall, 1),
        "first_log_interval_s": round(logs[0]["step_time"] * (logs[0]["step"]), 2) if logs else None,  # includes compiling
        "losses": [{k: r[k] for k in r if k in ("step", "loss", "loss/dino", "step_time", "img/s") or k.startswith("loss/")}
                   for r in logs],
        "last_img_per_s": logs[-1]["img/s"] if logs else None,
        "passed": bool(logs) and finite and res.step == n and not missing,
    }


def _source(ctx: Context) -> str:
    """What the export steps start from: this run's trained backbone, else the quickstart ViT's timm name."""
    return str(ctx.trained_run) if ctx.trained_run else "vit_tiny_patch16_224"


def _parity_batch(meta, count: int = 8) -> dict[str, np.ndarray]:
    from wherevit.export.quantize import PARITY_SEED, generated_images

    pre = meta.input_preprocess()
    return {n: pre(generated_images(pre.size, count, PARITY_SEED + 7 + k)) for k, n in enumerate(meta.input_names)}


def _reference(meta, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch fp32 on the CPU: the reference every parity below is measured against."""
    from wherevit.app.torch_backend import reference_model
    from wherevit.export.parity import torch_reference

    return torch_reference(reference_model(dataclasses.replace(meta, precision="fp32")), feeds)


def step_onnx_cuda(ctx: Context) -> dict:
    from wherevit import runtime
    from wherevit.base.sidecar import read_sidecar
    from wherevit.export.api import ExportRequest, export_artifacts
    from wherevit.runtime.compare import DEFAULT_RTOL, compare

    out = {"source": _source(ctx)}
    precisions = ("fp32",) if ctx.rehearse else ("fp32", "fp16")  # ONNX Runtime's CPU provider has no fp16 MatMul
    backend = "ort-cpu" if ctx.rehearse else "ort-cuda"
    for precision in precisions:
        art = export_artifacts(ExportRequest(_source(ctx), ctx.work / "onnx", precision=precision, batch=(1, 8, 64))).onnx
        meta = read_sidecar(art)
        feeds = _parity_batch(meta)
        ref = _reference(meta, feeds)
        rows = {}
        # TF32 off: strict fp32 (ONNX Runtime's CUDA provider enables TF32 by default); on: what users get.
        variants = {"tf32_off": {"use_tf32": "0"}, "default": {}} if precision == "fp32" else {"default": {}}
        if ctx.rehearse:
            variants = {"tf32_off": {}}
        for label, opts in variants.items():
            with runtime.load(art, backend=backend, provider_options=opts) as m:
                got = m.run_inputs(feeds).outputs
            floats = {k: v for k, v in ref.items() if np.issubdtype(v.dtype, np.floating)}
            rtol = DEFAULT_RTOL[precision] if label != "default" or precision == "fp16" else 2e-3
            cmp = compare(floats, got, rtol)
            rows[label] = {"rtol": rtol, **cmp.to_dict()}
        out[precision] = {"artifact": art.name, "export_parity_cpu": meta.parity.get("passed") if meta.parity else None,
                          "backend": backend, "ort": rows}
    out["passed"] = all(r["passed"] for p in precisions for r in out[p]["ort"].values())
    return out


def _cpp_deps_prefix(ctx: Context) -> Path | None:
    """Carried .deb files (nlohmann-json3-dev: header-only, any distribution) unpacked into a prefix."""
    if ctx.cpp_deps is None:
        return None
    debs = sorted(ctx.cpp_deps.rglob("*.deb"))
    prefix = ctx.work / "cpp_deps"
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(prefix)], check=True, timeout=120)
    return prefix / "usr" if debs else ctx.cpp_deps


def _cpp_reason() -> str | None:
    missing = [t for t in ("cmake", "c++") if shutil.which(t) is None]
    return f"no {', '.join(missing)} on this machine" if missing else None


def step_pt2_cpp_cuda(ctx: Context) -> dict:
    import torch.utils

    import wherevit.app.pt2_backend  # noqa: F401 -- registers the pt2 backend (no installed entry points on a bare tree)
    from wherevit import runtime
    from wherevit.base.sidecar import read_sidecar
    from wherevit.export.api import ExportRequest, export_artifacts
    from wherevit.runtime.compare import DEFAULT_RTOL, compare

    t0 = time.perf_counter()
    pkg = export_artifacts(ExportRequest(_source(ctx), ctx.work / "pt2", format="pt2", batch=(1, 4, 8),
                                         format_options={"pt2": {"device": ctx.device}})).pt2
    export_s = time.perf_counter() - t0
    meta = read_sidecar(pkg)
    build = ctx.work / "cpp_build"
    prefixes = [torch.utils.cmake_prefix_path] + ([str(p)] if (p := _cpp_deps_prefix(ctx)) else [])
    cfg = subprocess.run(["cmake", "-S", str(REPO / "examples" / "cpp"), "-B", str(build), f"-DCMAKE_PREFIX_PATH={';'.join(prefixes)}"],
                         capture_output=True, text=True, timeout=300)
    if cfg.returncode != 0:
        raise RuntimeError("cmake configure failed (nlohmann-json missing? pass --cpp-deps with nlohmann-json3-dev's .deb):\n"
                           + (cfg.stdout + cfg.stderr)[-2000:])
    t1 = time.perf_counter()
    b = subprocess.run(["cmake", "--build", str(build), "--target", "wherevit_aoti", "-j", str(os.cpu_count() or 4)],
                       capture_output=True, text=True, timeout=600)
    if b.returncode != 0:
        raise RuntimeError("building wherevit_aoti failed:\n" + (b.stdout + b.stderr)[-3000:])
    build_s = time.perf_counter() - t1
    feeds = _parity_batch(meta, 6)  # one batch inside the package's 1..8
    npys = []
    for name, x in feeds.items():
        npys += ["--input-npy", str(ctx.work / f"pt2_in_{name}.npy")]
        np.save(ctx.work / f"pt2_in_{name}.npy", x)
    out_dir = ctx.work / "pt2_out"
    r = subprocess.run([str(build / "wherevit_aoti"), str(pkg), "--device", ctx.device, "--out", str(out_dir), *npys],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"wherevit_aoti --device {ctx.device} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    cpp = {k: np.load(out_dir / f"{k}.npy") for k in meta.output_names}
    ref = _reference(meta, feeds)
    with runtime.load(pkg, backend="pt2") as m:
        py = m.run_inputs(feeds).outputs
    floats = lambda d: {k: v for k, v in d.items() if np.issubdtype(v.dtype, np.floating)}
    vs_torch = compare(floats(ref), cpp, DEFAULT_RTOL["fp32"])
    vs_python = compare(floats(py), cpp, DEFAULT_RTOL["fp32"])
    return {"source": _source(ctx), "package": pkg.name, "package_mb": round(pkg.stat().st_size / 2**20, 1),
            "export_s": round(export_s, 1), "cpp_build_s": round(build_s, 1),
            "device": ctx.device, "opencv": "OpenCV (C++) not found" not in cfg.stdout, "app_stdout": r.stdout.strip().splitlines()[-1:],
            "cpp_vs_pytorch_fp32_cpu": vs_torch.to_dict(), "cpp_vs_python_pt2_cuda": vs_python.to_dict(),
            "passed": bool(vs_torch) and bool(vs_python)}


def step_tensorrt_rtx(ctx: Context) -> dict:
    """Build and run a TensorRT-RTX engine where it runs; on other compute capabilities record the refusal."""
    from wherevit.base.errors import WherevitError

    cc = _device_cc(ctx)
    rtx = None
    try:
        import tensorrt_rtx as rtx  # noqa: F811
    except ImportError as e:
        rtx_missing = f"tensorrt_rtx is not installed ({e})"
    if cc not in RTX_CCS:
        out = {"compute_capability": cc, "status": "refused"}
        from wherevit.export.trt_builder import TrtFlavour, plan_build

        try:  # wherevit's own refusal, before anything is built
            plan_build(TrtFlavour("tensorrt_rtx", getattr(rtx, "__version__", "1.0")), "fp16", (f"SM{cc.replace('.', '')}",))
            out["wherevit"] = f"wherevit's build plan accepts SM{cc.replace('.', '')}; TensorRT-RTX itself decides"
        except WherevitError as e:
            out["wherevit"] = str(e)
        if rtx is not None:  # TensorRT-RTX's own words: an engine built for a supported target, loaded on this GPU
            out["tensorrt_rtx"] = _rtx_refusal(ctx, rtx)
        else:
            out["tensorrt_rtx"] = rtx_missing
        out["passed"] = True  # the refusal is the expected result on this GPU
        return out
    if rtx is None:
        raise RuntimeError(rtx_missing + "; carry the tensorrt-rtx wheel (--site)")
    from wherevit import runtime
    from wherevit.base.sidecar import read_sidecar
    from wherevit.export.api import ExportRequest, export_artifacts
    from wherevit.runtime.compare import DEFAULT_RTOL, compare

    engine = export_artifacts(ExportRequest(_source(ctx), ctx.work / "rtx", format="engine", precision="fp16", batch=(1, 8, 8),
                                            format_options={"engine": {"trt_lib": "tensorrt_rtx",
                                                                       "compute_capabilities": (f"SM{cc.replace('.', '')}",)}})).engine
    meta = read_sidecar(engine)
    feeds = _parity_batch(meta)
    with runtime.load(engine, backend="tensorrt") as m:
        got = m.run_inputs(feeds).outputs
    cmp = compare({k: v for k, v in _reference(meta, feeds).items() if np.issubdtype(v.dtype, np.floating)}, got, DEFAULT_RTOL["fp16"])
    return {"compute_capability": cc, "engine": engine.name, "tensorrt_rtx": rtx.__version__, "parity_fp16": cmp.to_dict(),
            "passed": bool(cmp)}


def _rtx_refusal(ctx: Context, rtx) -> str:
    from wherevit.export.api import ExportRequest, export_artifacts

    try:
        engine = export_artifacts(ExportRequest(_source(ctx), ctx.work / "rtx_refusal", format="engine", precision="fp16",
                                                batch=(1, 1, 1), format_options={"engine": {"trt_lib": "tensorrt_rtx",
                                                                                          "compute_capabilities": ("SM89",)}})).engine
    except Exception as e:  # noqa: BLE001 -- the build's own error is the record
        return f"build for SM89 failed: {type(e).__name__}: {e}"[:1000]
    messages: list[str] = []

    class Logger(rtx.ILogger):
        def log(self, severity, msg):  # noqa: D401 -- TensorRT's callback
            messages.append(f"{severity}: {msg}")

    logger = Logger()
    rt = rtx.Runtime(logger)
    eng = rt.deserialize_cuda_engine(engine.read_bytes())
    if eng is None:
        return "deserialize_cuda_engine returned None: " + " | ".join(messages)[-1000:]
    ctx_ = eng.create_execution_context()
    return ("deserialised and created a context (no refusal)" if ctx_ is not None else "no execution context: ") + " | ".join(messages)[-1000:]


# Our bench rows -> the anchor of the same configuration (file, section, key); 224 px, inputs on the device.
def _anchor_key(model: str, backend: str, precision: str, batch: int) -> tuple[str, str, str] | None:
    table = {
        ("torch-eager", "fp32"): ("h100-probe-torch.json", "torch_eager", f"{model}|fp32|b{batch}"),
        ("torch-eager", "fp16"): ("h100-probe-torch.json", "torch_eager", f"{model}|fp16|b{batch}"),
        ("torch-compile", "fp16"): ("h100-probe-torch.json", "torch_compile", f"{model}|fp16|default|b{batch}"),
        ("torch-compile-cudagraphs", "fp16"): ("h100-probe-torch.json", "torch_compile", f"{model}|fp16|reduce-overhead|b{batch}"),
        ("ort-cuda", "fp32"): ("h100-probe-ort-cuda.json", "", f"{model}|fp32|b{batch}"),
        ("ort-cuda", "fp16"): ("h100-probe-ort-cuda.json", "", f"{model}|fp16|b{batch}"),
    }
    return table.get((backend, precision))


def anchor_for(backend: str, precision: str, batch: int, model: str = "vit_small_patch16_224",
               anchors: Path = ANCHORS) -> dict | None:
    """The anchor reading (ms) of the same model and configuration at 224 px, or None where the anchors have none."""
    key = _anchor_key(model, backend, precision, batch)
    if key is None or not (anchors / key[0]).is_file():
        return None
    data = json.loads((anchors / key[0]).read_text())
    section = data.get(key[1], {}) if key[1] else data
    value = section.get(key[2])
    return {"file": key[0], "key": f"{key[1]}[{key[2]}]" if key[1] else key[2], "ms": value} if isinstance(value, (int, float)) else None


def step_bench(ctx: Context) -> dict:
    from wherevit.app.bench import BenchRequest, TimingConfig, run_bench

    timing = TimingConfig(warmup=5, min_iters=30, min_seconds=0.5)
    rows = []
    plans = [  # eager and ONNX Runtime at both precisions; compiled PyTorch at fp16, as the anchors have it
        (("torch-eager", "ort-cuda"), ("fp32", "fp16"), (1, 8, 64)),
        (("torch-compile", "torch-compile-cudagraphs"), ("fp16",), (1, 64)),
    ]
    target = "vit_small_patch16_224"
    if ctx.rehearse:  # the same calls, small: the trained quickstart model on the CPU
        timing = TimingConfig(warmup=1, min_iters=3, min_seconds=0.05)
        plans = [(("torch-eager", "ort-cpu"), ("fp32",), (1, 2))]
        target = _source(ctx)
    for backends, precisions, batches in plans:
        got, _ = run_bench(BenchRequest(target, ctx.work / "bench" / backends[0], backends=backends, batches=batches,
                                        precisions=precisions, include_copies=False, timing=timing, progress=False))
        rows += got
    out = []
    for r in rows:
        row = {k: v for k, v in dataclasses.asdict(r).items() if v not in (None, {}, "")}
        a = None if ctx.rehearse else anchor_for(r.backend, r.precision, r.batch, model=target)
        if a is not None:
            row["anchor"] = a
            if r.p50_ms:
                row["ratio_to_anchor"] = round(r.p50_ms / a["ms"], 3)
        out.append(row)
    return {"model": target, "imgsz": None if ctx.rehearse else 224, "timing": dataclasses.asdict(timing), "copies": "excluded (inputs on the device)",
            "rows": out, "anchors": str(ANCHORS.relative_to(REPO)),
            "passed": all(r.status != "failed" for r in rows) and any(r.status == "ok" for r in rows)}


STEPS = [
    Step("env", "the machine: GPU, compute capability, driver, packages, tools", 5, lambda c: None, step_env),
    Step("train", "bf16 + torch.compile training steps, every plug-in and iBOT (quickstart_all)", 200,
         _needs(_cuda_reason), step_train),
    Step("onnx_cuda", "ONNX fp32/fp16 on ONNX Runtime's CUDA provider, parity against PyTorch fp32", 90,
         _needs(_cuda_reason, _ort_cuda_reason), step_onnx_cuda),
    Step("pt2_cpp_cuda", "a CUDA AOTInductor package run by the C++ app wherevit_aoti --device cuda", 150,
         _needs(_cuda_reason, _cpp_reason), step_pt2_cpp_cuda),
    Step("tensorrt_rtx", "a TensorRT-RTX engine where the compute capability allows; the refusal on 9.0", 30,
         _needs(_cuda_reason), step_tensorrt_rtx),
    Step("bench", "ViT-S/16 bench rows beside benchmarks/anchors/", 150, _needs(_cuda_reason), step_bench),
]
assert tuple(s.name for s in STEPS) == STEP_NAMES


def run_steps(ctx: Context, write: Callable[[list[dict]], None], only: tuple[str, ...] | None = None) -> list[dict]:
    records: list[dict] = []
    for step in STEPS:
        rec = {"name": step.name, "what": step.what, "status": "skipped", "reason": "", "seconds": 0.0}
        left = ctx.deadline - time.monotonic()
        reason = None
        if only and step.name not in only:
            reason = f"not selected (--only {','.join(only)})"
        elif left < step.budget_s:
            reason = f"not enough time left ({left:.0f} s < the step's {step.budget_s} s)"
        else:
            try:
                reason = step.check(ctx)
            except Exception as e:  # noqa: BLE001 -- a failing check is a reason, not a crash
                reason = f"cannot check: {type(e).__name__}: {e}"
        if reason is None and ctx.dry_run and step.name != "env":
            reason = "dry run: the checks pass, this step would run"
        if reason is not None:
            rec["reason"] = reason
        else:
            t0 = time.perf_counter()
            try:
                rec["result"] = step.run(ctx)
                rec["status"] = "ok" if rec["result"].get("passed", True) else "failed"
                if rec["status"] == "failed":
                    rec["reason"] = "ran, but its check did not pass (see result)"
            except Exception as e:  # noqa: BLE001 -- one step failing must not stop the others
                rec["status"], rec["reason"] = "failed", f"{type(e).__name__}: {str(e)[:2000]}"
                rec["traceback"] = traceback.format_exc()[-4000:]
            rec["seconds"] = round(time.perf_counter() - t0, 1)
        records.append(rec)
        print(f"gpu_check: {step.name:<13} {rec['status']}{': ' + rec['reason'] if rec['reason'] else ''} ({rec['seconds']} s)",
              flush=True)
        write(records)
    return records


def default_out(facts: dict, dry_run: bool, rehearse: bool = False) -> Path:
    if dry_run or rehearse:  # not GPU results: never under benchmarks/results
        return Path(tempfile.gettempdir()) / f"wherevit_gpu_check_{'dry_run' if dry_run else 'rehearsal'}.json"
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", str(facts.get("gpu", "gpu"))).strip("-").lower()
    return REPO / "benchmarks" / "results" / "gpu_check" / f"{datetime.now(timezone.utc):%Y%m%d-%H%M}_{gpu}.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="check every step's prerequisites, run nothing heavy")
    ap.add_argument("--out", type=Path, default=None, help="the JSON (default: benchmarks/results/gpu_check/<date>_<gpu>.json; "
                                                            "a dry run: a file in the temp folder)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    ap.add_argument("--budget-s", type=float, default=560, help="no step starts after this many seconds (default 560)")
    ap.add_argument("--cpp-deps", type=Path, default=None, help="folder of carried .deb files for the C++ build (nlohmann-json3-dev)")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--rehearse-on-cpu", action="store_true", help="run every step with CPU stand-ins (not GPU results)")
    ap.add_argument("--only", default=None, help="comma-separated step names to run (the others record why not)")
    args = ap.parse_args(argv)
    only = tuple(s.strip() for s in args.only.split(",")) if args.only else None
    if only and set(only) - set(STEP_NAMES):
        ap.error(f"--only: unknown step(s) {sorted(set(only) - set(STEP_NAMES))}; steps: {', '.join(STEP_NAMES)}")
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="wherevit_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(work=work, dry_run=args.dry_run, deadline=t0 + args.budget_s, cpp_deps=args.cpp_deps, train_steps=args.train_steps,
                  rehearse=args.rehearse_on_cpu)
    out_path: list[Path] = []

    def write(records: list[dict]) -> None:
        if not out_path:
            out_path.append(args.out or default_out(ctx.facts, args.dry_run, ctx.rehearse))
        doc = {"format": FORMAT, "command": " ".join(["scripts/gpu_check.sh", *(argv if argv is not None else sys.argv[1:])]),
               "dry_run": args.dry_run, "rehearsal_on_cpu": ctx.rehearse, "started": started.isoformat(timespec="seconds"),
               "wall_s": round(time.monotonic() - t0, 1), "budget_s": args.budget_s, "work": str(work),
               "machine": ctx.facts, "steps": records,
               "summary": {r["name"]: r["status"] + (f": {r['reason']}" if r["reason"] else "") for r in records}}
        from wherevit.base.io import atomic_write_text

        atomic_write_text(out_path[0], json.dumps(doc, indent=1, default=str) + "\n")

    records = run_steps(ctx, write, only)
    print(f"gpu_check: wrote {out_path[0]}")
    return 1 if any(r["status"] == "failed" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
