"""Server throughput and latency over HTTP and gRPC, next to the bare backend, with pinned cores.

The server (and so its backend: ONNX Runtime sizes its thread pool to the process's CPU affinity)
runs on ``--server-cpus``; the bare backend is timed on the same cores; the load generator
(tritonclient.http / tritonclient.grpc threads, binary tensors, one image per request like
perf_analyzer's default) runs on ``--client-cpus``. So the figures are the server's, not the
client's. Targets (issue 14): server throughput >= 90% of the bare backend's at max batch, and
<= 1 ms + max-wait added to the bare batch-1 p50 at concurrency 1, for both protocols.

    python benchmarks/serve.py art/model_fp32.onnx --concurrency 1,8,32 --seconds 10 --server-cpus 0 --client-cpus 1
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tritonclient.grpc as tg
import tritonclient.http as th

from wherevit import runtime
from wherevit.app.bench import TimingConfig, machine_info, time_callable
from wherevit.base.sidecar import default_model_name, read_sidecar


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_set(spec: str) -> set[int]:
    out = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out |= set(range(int(lo), int(hi or lo) + 1))
    return out


def cpu_isa() -> dict:
    """The CPU model and its SIMD flags (what decides ONNX Runtime's kernels)."""
    flags = []
    try:
        q = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        line = next((ln for ln in q.splitlines() if ln.startswith("Flags:")), "")
        flags = sorted(f for f in line.split()[1:] if f.startswith(("avx", "sse4", "fma", "amx", "vnni")) or "vnni" in f)
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"simd_flags": flags, "avx512": any(f.startswith("avx512") for f in flags)}


def _worker(protocol: str, url: str, name: str, x1: np.ndarray, stop: float) -> list[float]:
    if protocol == "http":
        cl = th.InferenceServerClient(url)
        inp = th.InferInput("images", list(x1.shape), "FP32")
        inp.set_data_from_numpy(x1, binary_data=True)
        out = [th.InferRequestedOutput("cls", binary_data=True)]
    else:
        cl = tg.InferenceServerClient(url)
        inp = tg.InferInput("images", list(x1.shape), "FP32")
        inp.set_data_from_numpy(x1)
        out = [tg.InferRequestedOutput("cls")]
    mine = []
    while time.monotonic() < stop:
        t0 = time.perf_counter()
        cl.infer(name, [inp], outputs=out)
        mine.append(time.perf_counter() - t0)
    return mine


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (backend threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_image_ms(fn, images: int, seconds: float) -> float:
    """CPU milliseconds per image of ``fn()`` in this process (robust to other processes sharing the core)."""
    fn()
    c0, t0, n = time.process_time(), time.monotonic(), 0
    while time.monotonic() - t0 < seconds or n < 5:
        fn()
        n += 1
    return 1000 * (time.process_time() - c0) / (n * images)


def _load(protocol: str, url: str, name: str, x1: np.ndarray, conc: int, seconds: float, server_pid: int) -> dict:
    lat = []
    _worker(protocol, url, name, x1, time.monotonic() + 0.3)  # connection set-up, first-call paths
    cpu0 = process_cpu_s(server_pid)
    t0 = time.monotonic()
    stop = t0 + seconds
    with cf.ThreadPoolExecutor(conc) as pool:
        for m in pool.map(lambda _: _worker(protocol, url, name, x1, stop), range(conc)):
            lat += m
    dt = time.monotonic() - t0
    server_cpu_ms = 1000 * (process_cpu_s(server_pid) - cpu0)
    ms = np.array(lat) * 1000
    return {"protocol": protocol, "concurrency": conc, "requests": len(lat), "throughput_ips": len(lat) / dt,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "server_cpu_ms_per_image": server_cpu_ms / max(len(lat), 1)}


def _mean_batch(http_url: str, name: str, before: dict | None) -> tuple[dict, float | None]:
    st = th.InferenceServerClient(http_url).get_inference_statistics(name)["model_stats"][0]
    if before is None:
        return st, None
    rows = st["inference_count"] - before["inference_count"]
    execs = st["execution_count"] - before["execution_count"]
    return st, rows / execs if execs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--protocols", default="http,grpc")
    ap.add_argument("--max-batch", type=int, default=None)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--server-cpus", default="0", help="cores for the server and its backend (and the bare-backend timing)")
    ap.add_argument("--client-cpus", default="1", help="cores for the load generator")
    ap.add_argument("--note", default="", help="recorded with the results (e.g. what else ran on the machine)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default=None, help="results file serve_<tag>.json (default: the artifact's stem)")
    a = ap.parse_args()
    server_cpus, client_cpus = cpu_set(a.server_cpus), cpu_set(a.client_cpus)
    protocols = [p.strip() for p in a.protocols.split(",") if p.strip()]

    def time_bare() -> tuple[dict, dict]:
        """The backend alone on the server's cores (so with as many threads), at max batch and at batch 1."""
        os.sched_setaffinity(0, server_cpus)
        with runtime.load(a.artifact, a.backend) as model:
            bare = time_callable(lambda i: model.run(bufs[i]), TimingConfig(min_seconds=a.seconds / 2))
            bare1 = time_callable(lambda i: model.run(x1), TimingConfig(min_seconds=a.seconds / 4))
            bare["throughput_ips"] = max_batch * 1000 / bare["mean_ms"]
            bare["cpu_ms_per_image"] = cpu_per_image_ms(lambda: model.run(bufs[0]), max_batch, a.seconds / 4)
            bare1["cpu_ms_per_image"] = cpu_per_image_ms(lambda: model.run(x1), 1, a.seconds / 4)
        os.sched_setaffinity(0, client_cpus)
        print(json.dumps({"bare_max_batch": bare, "bare_batch1": bare1}), flush=True)
        return bare, bare1

    meta = read_sidecar(a.artifact)
    max_batch = a.max_batch or meta.batch.max
    c, h, w = [int(d) for d in meta.inputs[0].shape[1:]]
    x1 = np.random.default_rng(0).standard_normal((1, c, h, w)).astype(np.float32)
    bufs = [np.random.default_rng(i).standard_normal((max_batch, c, h, w)).astype(np.float32) for i in range(4)]
    bare_before = time_bare()

    port, gport = free_port(), free_port()
    cmd = [sys.executable, "-m", "wherevit.app.cli", "serve", a.artifact, "--port", str(port), "--grpc-port", str(gport),
           "--backend", a.backend, "--max-batch", str(max_batch), "--max-wait-ms", str(a.max_wait_ms), "--max-queue", "4096"]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", a.server_cpus, *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            preexec_fn=None if shutil.which("taskset") else (lambda: os.sched_setaffinity(0, server_cpus)))
    url, gurl = f"127.0.0.1:{port}", f"127.0.0.1:{gport}"
    name = default_model_name(meta)  # what `wherevit serve` calls it
    rows = []
    try:
        for _ in range(600):
            try:
                if th.InferenceServerClient(url).is_server_ready():
                    break
            except Exception:
                pass
            time.sleep(0.1)
        for conc in [int(v) for v in a.concurrency.split(",")]:
            for protocol in protocols:
                before, _ = _mean_batch(url, name, None)
                row = _load(protocol, url if protocol == "http" else gurl, name, x1, conc, a.seconds, proc.pid)
                row["mean_batch"] = _mean_batch(url, name, before)[1]
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    # Timed before and after the server runs, averaged: other load on a shared machine drifts.
    bare_after = time_bare()
    bare = {k: (bare_before[0][k] + bare_after[0][k]) / 2 for k in ("p50_ms", "mean_ms", "throughput_ips", "cpu_ms_per_image")}
    bare1 = {k: (bare_before[1][k] + bare_after[1][k]) / 2 for k in ("p50_ms", "mean_ms", "cpu_ms_per_image")}
    summary = {}
    for protocol in protocols:
        mine = [r for r in rows if r["protocol"] == protocol]
        top = max(r["throughput_ips"] for r in mine)
        c1 = next((r for r in mine if r["concurrency"] == 1), None)
        ratio, added = top / bare["throughput_ips"], (c1["p50_ms"] - bare1["p50_ms"]) if c1 else None
        leanest = min(mine, key=lambda r: r["server_cpu_ms_per_image"])  # the most batched row: what saturation gives
        summary[protocol] = {
            "server_vs_bare_throughput": ratio, "added_p50_ms_at_c1": added,
            "throughput_target_met": ratio >= 0.9, "latency_target_met": added is not None and added <= 1.0 + a.max_wait_ms,
            # What a dedicated server core would give: images per CPU-second, server vs bare backend.
            "cpu_bound_throughput_ratio": bare["cpu_ms_per_image"] / leanest["server_cpu_ms_per_image"],
            "server_cpu_overhead_ms_per_request_at_c1": (c1["server_cpu_ms_per_image"] - bare1["cpu_ms_per_image"]) if c1 else None,
        }
    summary["target_added_p50_ms"] = 1.0 + a.max_wait_ms
    print(json.dumps(summary))
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"serve_{a.tag or Path(a.artifact).stem}.json"
    path.write_text(json.dumps({
        "command": "python " + " ".join(sys.argv), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "isa": cpu_isa()}, "note": a.note,
        "pinning": {"server_and_backend_cpus": sorted(server_cpus), "load_generator_cpus": sorted(client_cpus)},
        "max_batch": max_batch, "max_wait_ms": a.max_wait_ms, "bare_backend": {"max_batch": bare, "batch1": bare1, "before": bare_before, "after": bare_after},
        "server": rows, "summary": summary}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
