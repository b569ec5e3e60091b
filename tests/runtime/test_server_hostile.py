"""The hostile cases of issue 21 against a live `wherevit serve` (HTTP and gRPC), each with its bound.

Bounds: status (400 / INVALID_ARGUMENT naming the problem, never 5xx), time (answered within a
hang bound of 10 s, not a speed target) and memory (the server's peak RSS, VmHWM, grows by less
than 100 MB where decoding the image would cost 1.7 GB, or the decoder is never called).
"""

import concurrent.futures as cf
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

th = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
tg = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
import grpc  # noqa: E402
from helpers import Server, bomb_png, free_port  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from wherevit import runtime  # noqa: E402
from wherevit.base.errors import InvalidRequest  # noqa: E402
from wherevit.base.image import ImageTooLarge  # noqa: E402
from wherevit.runtime.backends import InputError  # noqa: E402

MODEL = "vit_tiny_patch16_224"
IMAGES = MODEL + "_images"
CAP = 4_000_000  # the fixture server's --max-image-pixels
HANG_S = 10.0
MEMORY_BOUND = 100 << 20


@pytest.fixture(scope="module")
def server(onnx_artifact):
    s = Server(onnx_artifact, "--max-image-pixels", str(CAP), "--max-wait-ms", "2", grpc=True)
    yield s
    s.stop()


def _peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in bytes: what a decoded image would have raised."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        pytest.skip("peak RSS needs Linux /proc")
    line = next(ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes, float]:
    t0 = time.monotonic()
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=HANG_S) as r:
            return r.status, r.read(), time.monotonic() - t0
    except urllib.error.HTTPError as e:
        return e.code, e.read(), time.monotonic() - t0


def _bytes_body(items: list[bytes]) -> tuple[bytes, dict]:
    raw = b"".join(len(b).to_bytes(4, "little") + b for b in items)
    head = json.dumps({"inputs": [{"name": "image_bytes", "shape": [len(items)], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


def test_seven_concurrent_24000_square_pngs_get_400_and_no_memory(server):
    """The issue's attack: 0.6 MB PNGs declaring 24000 x 24000 (each 1.7 GB once decoded to RGB), seven at once,
    over HTTP and gRPC. Each is refused from its header: 400 naming the size and the cap, in well under the hang
    bound, and the server's peak memory barely moves."""
    bomb = bomb_png(24000, 24000)
    body, headers = _bytes_body([bomb])
    url = f"http://{server.url}/v2/models/{IMAGES}/infer"
    before = _peak_rss(server.proc.pid)

    def grpc_call(_):
        inp = tg.InferInput("image_bytes", [1], "BYTES")
        inp.set_data_from_numpy(np.array([bomb], dtype=object))
        t0 = time.monotonic()
        with pytest.raises(InferenceServerException) as e:
            tg.InferenceServerClient(server.grpc_url).infer(IMAGES, [inp], client_timeout=HANG_S)
        return str(e.value.status()), e.value.message(), time.monotonic() - t0

    with cf.ThreadPoolExecutor(14) as pool:
        http = list(pool.map(lambda _: _post(url, body, headers), range(7)))
        rpc = list(pool.map(grpc_call, range(7)))
    for status, payload, dt in http:
        assert status == 400 and dt < HANG_S
        assert "PNG of 24000x24000 = 576,000,000 pixels exceeds the 4,000,000-pixel limit" in json.loads(payload)["error"]
    for code, msg, dt in rpc:
        assert code == "StatusCode.INVALID_ARGUMENT" and "24000x24000" in msg and dt < HANG_S
    grown = _peak_rss(server.proc.pid) - before
    assert grown < MEMORY_BOUND, f"peak RSS grew by {grown / 2**20:.0f} MiB"


def test_the_cap_is_the_servers_option_and_images_under_it_are_served(server, onnx_artifact):
    under, over = bomb_png(2000, 1500), bomb_png(2500, 1700)  # 3.0 MP and 4.25 MP around the 4 MP cap
    url = f"http://{server.url}/v2/models/{IMAGES}/infer"
    status, payload, _ = _post(url, *_bytes_body([under]))
    assert status == 200
    cls = np.asarray(json.loads(payload)["outputs"][0]["data"], np.float32)
    with runtime.load(onnx_artifact, max_image_pixels=None) as model:
        np.testing.assert_allclose(cls, model.embed([under]).cls[0], rtol=1e-5, atol=1e-5)
    status, payload, _ = _post(url, *_bytes_body([under, over]))  # one image over the cap refuses the request
    assert status == 400 and "image_bytes[1]: PNG of 2500x1700 = 4,250,000 pixels exceeds the 4,000,000-pixel limit" in \
        json.loads(payload)["error"]


def test_a_200000_deep_json_body_is_400_not_500(server):
    url = f"http://{server.url}/v2/models/{MODEL}/infer"
    deep = b"[" * 200_000 + b"]" * 200_000
    for body in (deep, b'{"inputs": ' + deep + b"}",
                 b'{"inputs": [{"name": "images", "shape": [1], "datatype": "FP32", "data": [1]}], "parameters": {"p": ' + deep + b"}}"):
        status, payload, dt = _post(url, body)
        assert status == 400 and dt < HANG_S
        assert "not valid JSON: depth limit exceeded" in json.loads(payload)["error"]
    # the same attack on the gRPC parser: 200,000 nested groups of an unknown field
    with grpc.insecure_channel(server.grpc_url) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as e:
            call(b"\x7b" * 200_000, timeout=HANG_S)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid protobuf message" in e.value.details()
    assert th.InferenceServerClient(server.url).is_server_ready()


@pytest.mark.parametrize("ext", [".pfm", ".tiff", ".hdr"])
def test_float_image_files_are_refused_by_format(server, ext):
    """Float pixels reach the server only inside float formats (PFM, TIFF, Radiance): refused by name, not
    clipped to white (a [0, 255] PFM used to come back as the features of a white image)."""
    img = np.random.default_rng(0).integers(0, 256, (32, 48, 3)).astype(np.float32)  # the astype(np.float32) slip
    enc = cv2.imencode(ext, img)[1].tobytes()
    status, payload, _ = _post(f"http://{server.url}/v2/models/{IMAGES}/infer", *_bytes_body([enc]))
    assert status == 400 and "images are not accepted (accepted: JPEG, PNG, WebP, BMP" in json.loads(payload)["error"]


def test_the_library_refuses_float_images_outside_0_1_and_bounds_encoded_ones(onnx_artifact, monkeypatch):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
    with runtime.load(onnx_artifact) as model:
        with pytest.raises(InputError, match=r"image 0: float image values span \[0, 255\].*divide by 255"):
            model.embed(img.astype(np.float32))
        np.testing.assert_array_equal(model.embed(img.astype(np.float32) / 255).cls, model.embed(img).cls)  # [0, 1]: the same pixels
        monkeypatch.setattr("wherevit.base.image.cv2.imdecode", lambda *a: pytest.fail("decoded"))
        with pytest.raises(ImageTooLarge, match="exceeds the 67,108,864-pixel limit"):  # the default cap
            model.embed(bomb_png(24000, 24000))
        monkeypatch.undo()
    with runtime.load(onnx_artifact, max_image_pixels=1000) as model:
        with pytest.raises(ImageTooLarge, match=r"image 0: PNG of 40x30 = 1,200 pixels exceeds the 1,000-pixel limit"):
            model.embed(bomb_png(40, 30))
        assert model.embed(bomb_png(40, 25)).cls.shape == (1, 64)
    with pytest.raises(InvalidRequest, match="max_image_pixels must be a positive integer"):
        runtime.load(onnx_artifact, max_image_pixels=0)


def test_a_request_is_refused_before_any_of_its_images_is_decoded(monkeypatch):
    from wherevit.base.image import Preprocess
    from wherevit.runtime import decoding

    calls = []
    monkeypatch.setattr(decoding, "decode_image", lambda *a, **k: calls.append(a) or np.zeros((4, 4, 3), np.uint8))
    dec = decoding.ImageBatchDecoder(Preprocess(size=(8, 8)), max_pixels=10_000, workers=1)
    try:
        ok = cv2.imencode(".png", np.zeros((20, 20, 3), np.uint8))[1].tobytes()
        with pytest.raises(ImageTooLarge, match=r"x\[7\]"):
            dec.decode([ok] * 7 + [bomb_png(200, 100)], "x")
        assert calls == []
        dec.decode([ok] * 2, "x")
        assert len(calls) == 2
    finally:
        dec.close()


def _serve(artifact, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wherevit.app.cli", "serve", str(artifact), *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,msg", [
    (["--port", "99999"], "Invalid value for '--port': 99999 is not in the range 0<=x<=65535"),
    (["--grpc-port", "-1"], "Invalid value for '--grpc-port': -1 is not in the range 0<=x<=65535"),
    (["--max-batch", "0"], "Invalid value for '--max-batch': 0 is not in the range x>=1"),
    (["--max-request-mb", "0"], "Invalid value for '--max-request-mb': 0.0 is not in the range 0<x<=2047"),
    (["--max-image-pixels", "-5"], "Invalid value for '--max-image-pixels': -5 is not in the range x>=1"),
    (["--decode-workers", "0"], "Invalid value for '--decode-workers': 0 is not in the range 1<=x<=64"),
])
def test_bad_serve_options_are_one_line_not_a_traceback(onnx_artifact, args, msg):
    r = _serve(onnx_artifact, *args)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr


def test_a_port_in_use_is_one_line(onnx_artifact):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _serve(onnx_artifact, "--port", str(port), "--max-batch", "2")
        assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout
        assert f"Error: ServeError: cannot serve on 127.0.0.1:{port}" in r.stderr and "choose another --port" in r.stderr
        r = _serve(onnx_artifact, "--port", str(free_port()), "--grpc-port", str(port))
        assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout
        assert f"cannot bind the gRPC port 127.0.0.1:{port}" in r.stderr
