"""A real Triton Inference Server on an exported repository, driven by tritonclient over HTTP and gRPC.

The server is tritonserver 2.51 from the nvidia-pytriton wheel (``scripts/install_tritonserver.sh``;
``.ci/run`` runs it), which has Triton's Python backend but NO onnxruntime backend. So, and only for
that, the graph model ``<name>`` is served by a TEST-ONLY Python-backend model that runs the exported
``model.onnx`` in ONNX Runtime (``triton_ort_model.py``; the config's ``platform: "onnxruntime_onnx"``
becomes ``backend: "python"``, every other line stays as exported). The repository, the preprocessing
model ``<name>_preprocess``, the ensemble ``<name>_images`` and their configs are what
``wherevit export --format triton --triton-images`` wrote, and the outputs are compared with
``runtime.load(model.onnx).embed`` on the same image files.

Run with ``-s`` to see the transcript (server log lines, results against the library).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is not installed")
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from helpers import free_port  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from wherevit import runtime  # noqa: E402
from wherevit.base.image import read_image  # noqa: E402
from wherevit.runtime.compare import DEFAULT_RTOL, compare  # noqa: E402

HERE = Path(__file__).resolve().parent
NAME = "vit_tiny_patch16_224"
PRE, ENS = f"{NAME}_preprocess", f"{NAME}_images"
MAX_PIXELS = 48 * 48  # tightened in the exported config below: a 64 x 64 image must be refused
MAX_REQUEST_BYTES = 40_000


def triton_root() -> Path:
    return Path(os.environ.get("WHEREVIT_TRITONSERVER") or Path(sys.prefix) / "tritonserver")


def unavailable_reason(root: Path) -> str | None:
    """Why this machine cannot start the server (then the tests skip), else None."""
    info = root / "install.json"
    if not info.is_file():
        return f"tritonserver is not installed in {root}: run bash scripts/install_tritonserver.sh (.ci/run does)"
    server = root / "pytriton/tritonserver/bin/tritonserver"
    stub = root / "pytriton/tritonserver/backends/python/triton_python_backend_stub"
    for exe, args in ((server, ["--help"]), (stub, [])):
        try:
            r = subprocess.run([str(exe), *args], env=server_env(root), capture_output=True, text=True, timeout=30)
        except OSError as e:
            return f"{exe.name} cannot run here: {e}"
        if "error while loading shared libraries" in r.stderr:
            return f"{exe.name} cannot run here: {r.stderr.strip().splitlines()[-1]}"
    return None


def server_env(root: Path) -> dict:
    info = json.loads((root / "install.json").read_text()) if (root / "install.json").is_file() else {}
    env = dict(os.environ)
    libs = [str(root / "nvidia_pytriton.libs"), info.get("libpython_dir") or "", env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in libs if p)
    env["PATH"] = f"{root / 'python' / 'bin'}:{env.get('PATH', '')}"  # the Python backend's environment
    return env


class TritonServer:
    """``tritonserver`` on 127.0.0.1 (HTTP + gRPC on free ports, metrics off), its log in a file."""

    def __init__(self, root: Path, repo: Path, log: Path):
        self.http_port, self.grpc_port = free_port(), free_port()
        self.http_url, self.grpc_url = f"127.0.0.1:{self.http_port}", f"127.0.0.1:{self.grpc_port}"
        self.log_path = log
        cmd = [str(root / "pytriton/tritonserver/bin/tritonserver"), "--model-repository", str(repo),
               "--backend-directory", str(root / "pytriton/tritonserver/backends"),
               "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
               "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
               "--allow-metrics", "false", "--pinned-memory-pool-byte-size", "0", "--exit-timeout-secs", "5",
               # a prefix of our own: the Python backend's shared-memory regions must not meet another server's
               f"--backend-config=python,shm-region-prefix-name=wherevit_{os.getpid()}_{uuid.uuid4().hex[:8]}_"]
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=server_env(root), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        client = httpclient.InferenceServerClient(self.http_url)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            try:
                if client.is_server_ready():
                    self.ready_s = time.monotonic() - self.t0
                    return
            except Exception:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"tritonserver not ready after 90 s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own process group: tritonserver and its stubs
                self.proc.wait()


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """PNG files the preprocessing must treat differently: shrunk, enlarged, gray, 16-bit, RGBA, non-square."""
    rng = np.random.default_rng(7)
    d = tmp_path_factory.mktemp("imgs")
    arrays = {"shrink_rgb.png": rng.integers(0, 256, (48, 40, 3), np.uint8),
              "enlarge_gray.png": rng.integers(0, 256, (20, 28), np.uint8),
              "rgb16.png": rng.integers(0, 65536, (33, 33, 3), np.uint16),
              "rgba.png": rng.integers(0, 256, (40, 44, 4), np.uint8),
              "exact.png": rng.integers(0, 256, (32, 32, 3), np.uint8)}
    paths = []
    for name, arr in arrays.items():
        (d / name).write_bytes(_png(arr))
        paths.append(d / name)
    return paths


@pytest.fixture(scope="module")
def triton(trained_run, tmp_path_factory):
    root = triton_root()
    reason = unavailable_reason(root)
    if reason:
        pytest.skip(reason)
    from click.testing import CliRunner

    from wherevit.app.cli import main

    repo = tmp_path_factory.mktemp("triton") / "repo"
    r = CliRunner().invoke(main, ["export", str(trained_run), "--format", "triton", "--triton-images", "--triton-images-instances", "1",
                                  "--batch", "1:4:8", "--out", str(repo)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in repo.iterdir()) == [NAME, ENS, PRE]
    onnx = repo / NAME / "1" / "model.onnx"
    reference = tmp_path_factory.mktemp("ref") / "model.onnx"  # the library's copy, before the stand-in moves in
    shutil.copyfile(onnx, reference)
    shutil.copyfile(str(onnx) + ".json", str(reference) + ".json")

    # TEST-ONLY: this Triton build has no onnxruntime backend; serve the exported ONNX through a Python model.
    graph_cfg = repo / NAME / "config.pbtxt"
    cfg = text_format.Parse(graph_cfg.read_text(), model_config_pb2.ModelConfig())
    assert cfg.platform == "onnxruntime_onnx"
    cfg.platform, cfg.backend = "", "python"
    graph_cfg.write_text(text_format.MessageToString(cfg))
    shutil.copyfile(HERE / "triton_ort_model.py", repo / NAME / "1" / "model.py")

    # The bounds are config: an operator tightens them in config.pbtxt, as this test does.
    pre_cfg = repo / PRE / "config.pbtxt"
    cfg = text_format.Parse(pre_cfg.read_text(), model_config_pb2.ModelConfig())
    cfg.parameters["wherevit.max_image_pixels"].string_value = str(MAX_PIXELS)
    cfg.parameters["wherevit.max_request_bytes"].string_value = str(MAX_REQUEST_BYTES)
    pre_cfg.write_text(text_format.MessageToString(cfg))

    server = TritonServer(triton_root(), repo, tmp_path_factory.mktemp("log") / "tritonserver.log")
    print(f"\n--- tritonserver ready after {server.ready_s:.1f} s (HTTP {server.http_url}, gRPC {server.grpc_url}); log lines:")
    for line in server.log().splitlines():
        if any(k in line for k in ("successfully loaded", "Started GRPCInferenceService", "Started HTTPService",
                                   "TRITONBACKEND_ModelInstanceInitialize", "server_version")) or f"| {NAME}" in line:
            print("   ", line.strip())
    yield server, repo, reference
    server.stop()
    print("--- tritonserver stopped; ONNX Runtime stand-in's batches:",
          sorted({ln.split("triton_ort_model: ", 1)[1] for ln in server.log().splitlines() if "triton_ort_model:" in ln}))


def _bytes_input(mod, paths_or_blobs, name: str = "image_bytes"):
    blobs = [p.read_bytes() if isinstance(p, Path) else p for p in paths_or_blobs]
    t = mod.InferInput(name, [len(blobs), 1], "BYTES")
    t.set_data_from_numpy(np.array([[b] for b in blobs], dtype=object))
    return t


def test_the_exported_repository_loads_in_triton(triton):
    server, repo, _ = triton
    log = server.log()
    for model in (NAME, PRE, ENS):
        assert f"successfully loaded '{model}'" in log
    index = httpclient.InferenceServerClient(server.http_url).get_model_repository_index()
    assert sorted((m["name"], m["state"]) for m in index) == [(NAME, "READY"), (ENS, "READY"), (PRE, "READY")]
    cfg = grpcclient.InferenceServerClient(server.grpc_url).get_model_config(ENS).config
    assert cfg.platform == "ensemble" and [s.model_name for s in cfg.ensemble_scheduling.step] == [PRE, NAME]
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("image_bytes", model_config_pb2.TYPE_STRING, [1])]
    assert server.ready_s < 60, f"start-up took {server.ready_s:.1f} s"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_encoded_images_through_triton_equal_the_library(triton, images, protocol):
    server, repo, reference = triton
    mod, url = (httpclient, server.http_url) if protocol == "http" else (grpcclient, server.grpc_url)
    client = mod.InferenceServerClient(url)
    with runtime.load(reference) as lib:
        want = lib.embed([str(p) for p in images])
        pre = lib.preprocess([read_image(p) for p in images])
    # the preprocessing model alone: the very tensor the library feeds its backend
    got_pre = client.infer(PRE, [_bytes_input(mod, images)]).as_numpy("images")
    np.testing.assert_array_equal(got_pre, pre)
    res = client.infer(ENS, [_bytes_input(mod, images)])
    got = {n: res.as_numpy(n) for n in want.outputs}
    cmp = compare(want.outputs, got, DEFAULT_RTOL["fp32"])
    worst = max(float(np.abs(got[n] - want.outputs[n]).max()) for n in got)
    print(f"\n--- {protocol}: {ENS} on {len(images)} PNG files vs runtime.load(model.onnx).embed: "
          f"{', '.join(f'{n} {got[n].shape}' for n in got)}; max |diff| {worst:.3g}; {cmp.summary()}")
    assert cmp, cmp.summary()
    assert worst <= 1e-5


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_images_are_the_clients_error_and_nothing_else_fails(triton, images, protocol):
    server, _, _ = triton
    mod, url = (httpclient, server.http_url) if protocol == "http" else (grpcclient, server.grpc_url)
    client = mod.InferenceServerClient(url)
    rng = np.random.default_rng(1)
    noisy = _png(rng.integers(0, 256, (45, 45, 3), np.uint8))  # ~6 KB: 7 of them pass the pixel cap, not the byte cap
    cases = {
        "corrupt": ([images[0], b"\x89PNG\r\n\x1a\n truncated"], "image_bytes[1]: not a decodable image"),
        "empty": ([b""], "image_bytes[0]: empty"),
        "one pixel wide": ([_png(np.zeros((20, 1, 3), np.uint8))], "has no pixels to look at"),
        "pixel cap": ([_png(np.zeros((64, 64, 3), np.uint8))], f"larger than {MAX_PIXELS} pixels"),
        "byte cap": ([noisy] * 7, f"more than {MAX_REQUEST_BYTES}"),
        "too many images": ([images[0]] * 9, "batch-size must be <= 8"),  # Triton's own check: max_batch_size
    }
    for case, (blobs, message) in cases.items():
        with pytest.raises(InferenceServerException) as e:
            client.infer(ENS, [_bytes_input(mod, blobs)])
        status = str(e.value.status())
        assert status in ("400", "StatusCode.INVALID_ARGUMENT"), f"{case}: {status} {e.value.message()}"
        assert message in e.value.message(), f"{case}: {e.value.message()}"
        print(f"\n--- {protocol} {case}: {status} {e.value.message()}")
    ok = client.infer(ENS, [_bytes_input(mod, images[:2])])  # the server still answers
    assert ok.as_numpy("cls").shape == (2, 64)


def test_concurrent_requests_each_get_their_own_rows(triton, images):
    """Requests from many clients at once (the graph's dynamic batcher may merge them): nothing mixed up."""
    server, _, reference = triton
    with runtime.load(reference) as lib:
        want = [lib.embed([str(p)]).cls[0] for p in images]
    client = grpcclient.InferenceServerClient(server.grpc_url)

    def one(i: int) -> tuple[int, np.ndarray]:
        k = i % len(images)
        return k, client.infer(ENS, [_bytes_input(grpcclient, [images[k]])]).as_numpy("cls")[0]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(24)))
    for k, cls in results:
        np.testing.assert_allclose(cls, want[k], rtol=1e-5, atol=1e-5)
