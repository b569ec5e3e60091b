"""Soak: minutes of saturated mixed traffic against `wherevit serve` over HTTP and gRPC at once.

Client threads (``--http`` + ``--grpc`` of them, more than the server can serve: the queue stays
full) each loop over requests drawn by weight from four kinds:

* ``tensor``    valid FP32 batches of 1-2 rows from a pool of inputs whose features were computed
                beforehand with the library: every answer's rows must equal its own inputs' rows
* ``image``     valid encoded PNG/JPEG scenes to ``<name>_images``, checked the same way
* ``invalid``   malformed requests (broken JSON, lying shapes, NaN, wrong datatype, unknown model,
                bad base64, typed contents out of range, undecodable protobuf bytes)
* ``oversized`` a 0.6 MB PNG declaring 24000 x 24000, a 200,000-deep JSON body, a body past
                ``--max-request-mb``

Every request carries a unique id that its answer must echo. Outcomes are classed: ``ok``
(served, id and features match), ``refused`` (a hostile request's 4xx / INVALID_ARGUMENT /
NOT_FOUND), ``shed`` (503 / UNAVAILABLE: queue full, what saturation earns), ``deadline`` (504),
and the failures: ``swapped`` (another request's id or features), ``lost`` (no answer: reset,
timeout), ``5xx`` (HTTP 5xx, gRPC INTERNAL/UNKNOWN), ``accepted_bad`` (a hostile request
served), ``refused_good`` (a valid request refused with 4xx). The server's memory is read from
/proc (VmRSS sampled, VmHWM = peak) when it is ready and at the end. The run fails (exit 1)
unless there were no failures of any class.

    python benchmarks/soak.py ART.onnx --seconds 180 --http 24 --grpc 24 --tag quickstart
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from wherevit import runtime
from wherevit.base.cpu import cpu_isa
from wherevit.train.data.synthetic import render_scene

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import bomb_png, free_port  # noqa: E402  (the tests' generator of the 24000 x 24000 PNG)

FAILURES = ("swapped", "lost", "5xx", "accepted_bad", "refused_good")
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Outcome:
    protocol: str
    kind: str
    name: str  # the request's variant (e.g. "bomb_png", "nan")
    cls: str  # ok, refused, shed, deadline, or a failure class
    status: str
    seconds: float


class Pools:
    """Inputs and their reference features (computed once with the library, before the soak)."""

    def __init__(self, artifact: str, n: int, seed: int):
        rng = np.random.default_rng(seed)
        with runtime.load(artifact) as model:
            size = model.preprocess.size
            self.tensors = rng.standard_normal((n, 3, *size)).astype(np.float32)
            self.tensor_cls = model.run(self.tensors).cls
            self.images = []
            for i in range(n):
                rgb = render_scene(seed * 1000 + i, int(rng.integers(48, 160)))
                ext = ".png" if i % 2 else ".jpg"
                self.images.append(cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes())
            self.image_cls = np.concatenate([model.embed([b]).cls for b in self.images])
            self.name = str(model.meta.model.get("model"))
        self.bomb = bomb_png(24000, 24000)


def _http_body(head: dict, blobs: list[bytes]) -> tuple[bytes, dict]:
    text = json.dumps(head).encode()
    return text + b"".join(blobs), {"Inference-Header-Content-Length": str(len(text)), "Content-Type": "application/octet-stream"}


def _bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(len(b).to_bytes(4, "little") + b for b in items)


class Client(threading.Thread):
    def __init__(self, protocol: str, url: str, pools: Pools, weights: dict[str, float], stop: float, seed: int, max_request_bytes: int):
        super().__init__(daemon=True)
        self.protocol, self.url, self.p, self.stop_at = protocol, url, pools, stop
        self.kinds, self.weights = list(weights), list(weights.values())
        self.rng = random.Random(seed)
        self.seq = 0
        self.tag = f"{protocol}{seed}"
        self.max_request_bytes = max_request_bytes
        self.out: list[Outcome] = []
        self.conn: http.client.HTTPConnection | None = None
        self.channel = grpc.insecure_channel(url, options=[("grpc.max_send_message_length", -1)]) if protocol == "grpc" else None

    # -- request builders: (model, http body+headers or proto bytes, expected rows or None for "must be refused") --------
    def _valid(self, kind: str):
        k = self.rng.sample(range(len(self.p.tensors)), self.rng.choice([1, 1, 2]))
        rid = f"{self.tag}-{self.seq}"
        if kind == "tensor":
            x, ref, model = np.ascontiguousarray(self.p.tensors[k]), self.p.tensor_cls[k], self.p.name
            if self.protocol == "http":
                head = {"id": rid, "inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                                               "parameters": {"binary_data_size": x.nbytes}}],
                        "outputs": [{"name": "cls", "parameters": {"binary_data": True}}]}
                return model, _http_body(head, [x.tobytes()]), ref, rid
            req = service_pb2.ModelInferRequest(model_name=model, id=rid)
            req.inputs.add(name="images", datatype="FP32", shape=list(x.shape))
            req.raw_input_contents.append(x.tobytes())
            req.outputs.add(name="cls")
            return model, req.SerializeToString(), ref, rid
        items, ref, model = [self.p.images[i] for i in k], self.p.image_cls[k], self.p.name + "_images"
        if self.protocol == "http":
            raw = _bytes_tensor(items)
            head = {"id": rid, "inputs": [{"name": "image_bytes", "shape": [len(items)], "datatype": "BYTES",
                                           "parameters": {"binary_data_size": len(raw)}}],
                    "outputs": [{"name": "cls", "parameters": {"binary_data": True}}]}
            return model, _http_body(head, [raw]), ref, rid
        req = service_pb2.ModelInferRequest(model_name=model, id=rid)
        req.inputs.add(name="image_bytes", datatype="BYTES", shape=[len(items)])
        req.raw_input_contents.append(_bytes_tensor(items))
        req.outputs.add(name="cls")
        return model, req.SerializeToString(), ref, rid

    def _hostile(self, kind: str):
        name, model = self.p.name, self.p.name
        if kind == "oversized":
            variant = self.rng.choice(["bomb_png", "deep_json", "body_over_limit"] if self.protocol == "http" else ["bomb_png", "deep_proto", "body_over_limit"])
        else:
            variant = self.rng.choice(["bad_json", "lying_shape", "nan", "wrong_datatype", "unknown_model", "bad_base64",
                                       "typed_out_of_range" if self.protocol == "grpc" else "bad_header_length", "garbage"])
        if self.protocol == "http":
            js = lambda head: (json.dumps(head).encode(), {"Content-Type": "application/json"})  # noqa: E731
            if variant == "bomb_png":
                raw = _bytes_tensor([self.p.bomb])
                body = _http_body({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                               "parameters": {"binary_data_size": len(raw)}}]}, [raw])
                model = name + "_images"
            elif variant == "deep_json":
                body = (b'{"inputs": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", {"Content-Type": "application/json"})
            elif variant == "body_over_limit":
                body = (b"{" + b" " * (self.max_request_bytes + 1024) + b"}", {"Content-Type": "application/json"})
            elif variant == "bad_json":
                body = (b'{"inputs": [{"name": "images", "shape": [1, 3', {"Content-Type": "application/json"})
            elif variant == "lying_shape":
                body = _http_body({"inputs": [{"name": "images", "shape": [100000, 3, 64, 64], "datatype": "FP32",
                                               "parameters": {"binary_data_size": 64}}]}, [b"\x00" * 64])
            elif variant == "nan":
                x = np.full(self.p.tensors[:1].shape, np.nan, np.float32)
                body = _http_body({"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                                               "parameters": {"binary_data_size": x.nbytes}}]}, [x.tobytes()])
            elif variant == "wrong_datatype":
                body = js({"inputs": [{"name": "images", "shape": [1], "datatype": "FP99", "data": [1]}]})
            elif variant == "unknown_model":
                model, body = "../../etc/passwd", js({"inputs": [{"name": "images", "shape": [1], "datatype": "FP32", "data": [1]}]})
            elif variant == "bad_base64":
                model, body = name + "_images", js({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]})
            elif variant == "bad_header_length":
                body = (b'{"inputs": []}', {"Inference-Header-Content-Length": "-7"})
            else:
                body = (bytes(self.rng.getrandbits(8) for _ in range(64)), {})
            return variant, model, body
        req = service_pb2.ModelInferRequest(model_name=name)
        if variant == "bomb_png":
            req.model_name = name + "_images"
            req.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
            req.raw_input_contents.append(_bytes_tensor([self.p.bomb]))
        elif variant == "deep_proto":
            return variant, name, b"\x7b" * 200_000  # 200,000 nested groups
        elif variant == "body_over_limit":
            req.inputs.add(name="images", datatype="FP32", shape=[1])
            req.raw_input_contents.append(b"\x00" * (self.max_request_bytes + 1024))
        elif variant in ("bad_json", "garbage"):
            return variant, name, bytes(self.rng.getrandbits(8) for _ in range(64))
        elif variant == "lying_shape":
            req.inputs.add(name="images", datatype="FP32", shape=[100000, 3, 64, 64])
            req.raw_input_contents.append(b"\x00" * 64)
        elif variant == "nan":
            x = np.full(self.p.tensors[:1].shape, np.nan, np.float32)
            req.inputs.add(name="images", datatype="FP32", shape=list(x.shape))
            req.raw_input_contents.append(x.tobytes())
        elif variant == "wrong_datatype":
            req.inputs.add(name="images", datatype="FP99", shape=[1])
            req.raw_input_contents.append(b"\x00" * 4)
        elif variant == "unknown_model":
            req.model_name = "../../etc/passwd"
            req.inputs.add(name="images", datatype="FP32", shape=[1])
        elif variant == "bad_base64":
            req.model_name = name + "_images"
            req.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
            req.raw_input_contents.append(b"\xff\xff\xff\x7f")  # an element length past the data
        elif variant == "typed_out_of_range":
            t = req.inputs.add(name="images", datatype="INT8", shape=[1])
            t.contents.int_contents.append(300)
        return variant, req.model_name, req.SerializeToString()

    # -- transport ----------------------------------------------------------------------------------------------------
    def _http(self, model: str, body: bytes, headers: dict, fresh: bool = False) -> tuple[str, bytes, dict]:
        """One request on the thread's kept-alive connection (``fresh``: on its own connection, closed after)."""
        if self.conn is None or fresh:
            if self.conn is not None:
                self.conn.close()
            host, port = self.url.split(":")
            self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
        r = self.conn.getresponse()
        payload = r.read()
        if fresh or r.getheader("Connection", "").lower() == "close" or r.will_close:
            self.conn.close()
            self.conn = None
        return str(r.status), payload, dict(r.getheaders())

    def _grpc(self, data: bytes) -> tuple[str, bytes]:
        call = self.channel.unary_unary(GRPC_INFER)
        try:
            return "OK", call(data, timeout=60)
        except grpc.RpcError as e:
            return str(e.code()).replace("StatusCode.", ""), (e.details() or "").encode()

    def _classify_valid(self, status: str, payload: bytes, headers: dict, ref: np.ndarray, rid: str) -> str:
        if status in ("200", "OK"):
            if self.protocol == "http":
                hl = int(headers.get("Inference-Header-Content-Length", len(payload)))
                head = json.loads(payload[:hl])
                got = np.frombuffer(payload[hl:], np.float32)
                rid_back = head.get("id")
            else:
                resp = service_pb2.ModelInferResponse.FromString(payload)
                got = np.frombuffer(resp.raw_output_contents[0], "<f4")
                rid_back = resp.id
            same = rid_back == rid and got.size == ref.size and np.allclose(got.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)
            return "ok" if same else "swapped"
        if status in ("503", "UNAVAILABLE"):
            return "shed"
        if status in ("504", "DEADLINE_EXCEEDED"):
            return "deadline"
        if status.startswith("4") or status in ("INVALID_ARGUMENT", "NOT_FOUND"):
            return "refused_good"
        return "5xx"

    @staticmethod
    def _classify_hostile(status: str) -> str:
        if status.startswith("4") or status in ("INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"):
            return "refused"
        if status in ("503", "UNAVAILABLE"):
            return "shed"
        if status in ("200", "OK"):
            return "accepted_bad"
        return "5xx"

    def run(self) -> None:
        while time.monotonic() < self.stop_at:
            self.seq += 1
            kind = self.rng.choices(self.kinds, self.weights)[0]
            t0 = time.perf_counter()
            try:
                if kind in ("tensor", "image"):
                    model, req, ref, rid = self._valid(kind)
                    variant = kind
                    if self.protocol == "http":
                        status, payload, headers = self._http(model, *req)
                    else:
                        (status, payload), headers = self._grpc(req), {}
                    cls = self._classify_valid(status, payload, headers, ref, rid)
                else:
                    variant, model, req = self._hostile(kind)
                    # a refused request may leave its body unread, after which the server closes the connection:
                    # hostile requests go on a connection of their own, so a valid request never meets a closed one
                    status = self._http(model, *req, fresh=True)[0] if self.protocol == "http" else self._grpc(req)[0]
                    cls = self._classify_hostile(status)
            except Exception as e:  # no answer at all
                status, cls = type(e).__name__, "lost"
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
            self.out.append(Outcome(self.protocol, kind, variant, cls, status, time.perf_counter() - t0))


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    host, port = url.split(":")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stdout.read()}")
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=2)
            c.request("GET", "/v2/health/ready")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("server did not become ready")


def _pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)) * 1000, 2) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--http", type=int, default=24, help="HTTP client threads")
    ap.add_argument("--grpc", type=int, default=24, help="gRPC client threads")
    ap.add_argument("--mix", default="tensor=0.4,image=0.25,invalid=0.25,oversized=0.1", help="request kinds by weight")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=32, help="small, so saturation sheds load (503) instead of queueing for seconds")
    ap.add_argument("--max-request-mb", type=float, default=4)
    ap.add_argument("--pool", type=int, default=32, help="distinct valid inputs (and reference features)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="soak")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args()
    weights = {k: float(v) for k, v in (kv.split("=") for kv in a.mix.split(","))}

    pools = Pools(a.artifact, a.pool, a.seed)
    port, gport = free_port(), free_port()
    server_args = ["--port", str(port), "--grpc-port", str(gport), "--max-batch", str(a.max_batch), "--max-queue", str(a.max_queue),
                   "--max-request-mb", str(a.max_request_mb), "--max-wait-ms", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "wherevit.app.cli", "serve", a.artifact, *server_args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, gurl = f"127.0.0.1:{port}", f"127.0.0.1:{gport}"
    try:
        _wait_ready(url, proc)
        mem_ready = _proc_status(proc.pid)
        rss_samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.25):
                try:
                    rss_samples.append(_proc_status(proc.pid)["VmRSS"])
                except (OSError, KeyError):
                    pass

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        stop = t0 + a.seconds
        limit = int(a.max_request_mb * (1 << 20))
        clients = [Client("http", url, pools, weights, stop, i, limit) for i in range(a.http)]
        clients += [Client("grpc", gurl, pools, weights, stop, 1000 + i, limit) for i in range(a.grpc)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(a.seconds + 120)
        hung = sum(c.is_alive() for c in clients)
        elapsed = time.monotonic() - t0
        done.set()
        mem_end = _proc_status(proc.pid)
        alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    log_tail = (proc.stdout.read() or "")[-2000:]

    outs = [o for c in clients for o in c.out]
    classes = Counter(o.cls for o in outs)
    by = defaultdict(lambda: defaultdict(Counter))
    for o in outs:
        by[o.protocol][f"{o.kind}:{o.name}" if o.kind in ("invalid", "oversized") else o.kind][f"{o.cls} {o.status}"] += 1
    latency = {}
    for proto in ("http", "grpc"):
        latency[proto] = {}
        for kind in ("tensor", "image", "invalid", "oversized"):
            xs = [o.seconds for o in outs if o.protocol == proto and o.kind == kind and o.cls in ("ok", "refused")]
            latency[proto][kind] = {"n": len(xs), "p50_ms": _pct(xs, 50), "p99_ms": _pct(xs, 99), "max_ms": _pct(xs, 100)}
    served_rows = sum(1 for o in outs if o.cls == "ok")
    mib = lambda b: round(b / 2**20, 1)  # noqa: E731
    result = {
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": a.note,
        "machine": {"platform": platform.platform(), "cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                                                                  if ln.startswith("model name")), platform.processor()),
                    "cores_available": len(os.sched_getaffinity(0)), "isa": cpu_isa().to_dict(),
                    "versions": {m: __import__(m).__version__ for m in ("numpy", "onnxruntime", "grpc", "aiohttp", "orjson", "cv2")}},
        "server": {"args": server_args, "artifact": a.artifact, "model": pools.name, "alive_at_end": alive, "log_tail": log_tail},
        "load": {"seconds": round(elapsed, 1), "http_threads": a.http, "grpc_threads": a.grpc, "mix": weights, "pool": a.pool},
        "requests": len(outs),
        # served_per_s: requests answered "ok" (valid, matched); requests_per_s: every request, hostile ones included
        "throughput": {"requests_per_s": round(len(outs) / elapsed, 1), "served_per_s": round(served_rows / elapsed, 1)},
        "latency_ms": latency,
        "classes": dict(classes),
        "outcomes": {p: {k: dict(v) for k, v in kinds.items()} for p, kinds in by.items()},
        "memory_mib": {"rss_ready": mib(mem_ready["VmRSS"]), "peak_ready": mib(mem_ready["VmHWM"]),
                       "rss_max_sampled": mib(max(rss_samples, default=0)), "rss_end": mib(mem_end["VmRSS"]),
                       "peak_end": mib(mem_end["VmHWM"])},
        "checks": {"no_5xx": classes["5xx"] == 0, "none_lost": classes["lost"] == 0, "none_swapped": classes["swapped"] == 0,
                   "hostile_all_refused": classes["accepted_bad"] == 0, "valid_never_refused": classes["refused_good"] == 0,
                   "no_client_hung": hung == 0, "server_alive": alive},
    }
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"soak_{a.tag}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("requests", "throughput", "classes", "memory_mib", "checks")}, indent=1))
    print(f"wrote {path}")
    sys.exit(0 if all(result["checks"].values()) else 1)


if __name__ == "__main__":
    main()
