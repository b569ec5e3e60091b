"""Server throughput and latency at several concurrencies, next to the bare backend in the same run.

Starts `wherevit serve` on loopback, drives it with tritonclient.http from N client threads (binary
tensors, one image per request, like perf_analyzer's default), and measures the backend alone
(`runtime.load(...).run`) at the server's max batch for the ratio.

    python benchmarks/serve.py art/model_fp32.onnx --concurrency 1,8,32 --seconds 10
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tritonclient.http as th

from wherevit import runtime
from wherevit.app.bench import TimingConfig, machine_info, time_callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-batch", type=int, default=None)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args()

    model = runtime.load(a.artifact, a.backend)
    max_batch = a.max_batch or model.max_batch
    c, h, w = [int(d) for d in model.meta.inputs[0].shape[1:]]
    x1 = np.random.default_rng(0).standard_normal((1, c, h, w)).astype(np.float32)
    bufs = [np.random.default_rng(i).standard_normal((max_batch, c, h, w)).astype(np.float32) for i in range(4)]
    bare = time_callable(lambda i: model.run(bufs[i]), TimingConfig(min_seconds=a.seconds / 2))
    bare1 = time_callable(lambda i: model.run(x1), TimingConfig(min_seconds=a.seconds / 4))
    bare["throughput_ips"] = max_batch * 1000 / bare["mean_ms"]
    model.close()

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "wherevit.app.cli", "serve", a.artifact, "--port", str(port), "--backend", a.backend,
                             "--max-batch", str(max_batch), "--max-wait-ms", str(a.max_wait_ms), "--max-queue", "4096"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{port}"
    name = str(json.loads(Path(a.artifact + ".json").read_text())["model"]["model"])
    try:
        for _ in range(600):
            try:
                if th.InferenceServerClient(url).is_server_ready():
                    break
            except Exception:
                pass
            time.sleep(0.1)
        rows = []
        for conc in [int(v) for v in a.concurrency.split(",")]:
            lat, stop = [], time.monotonic() + a.seconds

            def worker(_):
                cl = th.InferenceServerClient(url)
                inp = th.InferInput("images", [1, c, h, w], "FP32")
                inp.set_data_from_numpy(x1, binary_data=True)
                out = [th.InferRequestedOutput("cls", binary_data=True)]
                mine = []
                while time.monotonic() < stop:
                    t0 = time.perf_counter()
                    cl.infer(name, [inp], outputs=out)
                    mine.append(time.perf_counter() - t0)
                return mine

            t0 = time.monotonic()
            with cf.ThreadPoolExecutor(conc) as pool:
                for m in pool.map(worker, range(conc)):
                    lat += m
            dt = time.monotonic() - t0
            ms = np.array(lat) * 1000
            rows.append({"concurrency": conc, "requests": len(lat), "throughput_ips": len(lat) / dt,
                         "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    top = max(r["throughput_ips"] for r in rows)
    c1 = next((r for r in rows if r["concurrency"] == 1), None)
    summary = {"server_vs_bare_throughput": top / bare["throughput_ips"],
               "added_p50_ms_at_c1": (c1["p50_ms"] - bare1["p50_ms"]) if c1 else None,
               "target_added_p50_ms": 1.0 + a.max_wait_ms}
    print(json.dumps(summary))
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"serve_{Path(a.artifact).stem}.json"
    path.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "machine": machine_info(), "max_batch": max_batch, "bare_backend": {"max_batch": bare, "batch1": bare1},
                                "server": rows, "summary": summary}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
