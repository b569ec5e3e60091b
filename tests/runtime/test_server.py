"""A live `wherevit serve` process on loopback, driven by the real tritonclient.http client."""

import concurrent.futures as cf
import json
import re
import signal
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

th = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
from helpers import Server  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from wherevit import runtime  # noqa: E402
from wherevit.train.data.synthetic import render_scene  # noqa: E402

MODEL = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def server(onnx_artifact):
    s = Server(onnx_artifact, "--max-wait-ms", "5")
    yield s
    s.stop()


def _infer(client, x, binary=True, outputs=("cls",)):
    inp = th.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [th.InferRequestedOutput(o, binary_data=binary) for o in outputs]
    return client.infer(MODEL, [inp], outputs=outs)


def test_metadata_and_config(server):
    c = th.InferenceServerClient(server.url)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)
    md = c.get_model_metadata(MODEL)
    assert md["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert [o["name"] for o in md["outputs"]] == ["cls", "patch_tokens", "pooled"]
    cfg = c.get_model_config(MODEL)
    assert cfg["max_batch_size"] == 8 and cfg["input"][0]["dims"] == [3, 32, 32] and cfg["output"][1]["dims"] == [16, 64]
    assert c.get_model_metadata(MODEL + "_images")["inputs"][0]["datatype"] == "BYTES"
    with pytest.raises(InferenceServerException, match="unknown model"):
        c.get_model_metadata("nope")


def test_json_and_binary_infer_match_the_library(server, onnx_artifact):
    c = th.InferenceServerClient(server.url)
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with runtime.load(onnx_artifact) as model:
        ref = model.run(x)
    for binary in (True, False):
        r = _infer(c, x, binary, outputs=("cls", "patch_tokens"))
        np.testing.assert_allclose(r.as_numpy("cls"), ref.cls, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(r.as_numpy("patch_tokens"), ref.patch_tokens, rtol=1e-5, atol=1e-5)
    # encoded images through the _images model
    img = render_scene(5, 48)
    ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    inp = th.InferInput("image_bytes", [1], "BYTES")
    inp.set_data_from_numpy(np.array([png.tobytes()], dtype=object))
    r = c.infer(MODEL + "_images", [inp])
    with runtime.load(onnx_artifact) as model:
        np.testing.assert_allclose(r.as_numpy("cls"), model.embed([img]).cls, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,dtype,name,msg", [
    ((1, 3, 16, 16), "FP32", "images", r"shape \[1, 3, 16, 16\], expected \[-1, 3, 32, 32\]"),
    ((1, 3, 32, 32), "FP16", "images", "datatype FP16, expected FP32"),
    ((1, 3, 32, 32), "FP32", "pixels", r"takes input\(s\) \['images'\], got \['pixels'\]"),
])
def test_bad_requests_get_400_naming_the_problem(server, shape, dtype, name, msg):
    c = th.InferenceServerClient(server.url)
    inp = th.InferInput(name, list(shape), dtype)
    inp.set_data_from_numpy(np.zeros(shape, np.float16 if dtype == "FP16" else np.float32))
    with pytest.raises(InferenceServerException, match=msg) as e:
        c.infer(MODEL, [inp])
    assert e.value.status() == "400"


def test_discovery_statistics_and_json_errors(server):
    """Repository index, Triton statistics, a config Triton's own schema accepts, JSON on unknown routes."""
    json_format = pytest.importorskip("google.protobuf.json_format")
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    c = th.InferenceServerClient(server.url)
    assert {(m["name"], m["version"], m["state"]) for m in c.get_model_repository_index()} == {
        (MODEL, "1", "READY"), (MODEL + "_images", "1", "READY")}
    cfg = c.get_model_config(MODEL)
    parsed = json_format.ParseDict(cfg, model_config_pb2.ModelConfig())  # unknown or mistyped fields raise
    assert parsed.input[0].data_type == model_config_pb2.TYPE_FP32 and parsed.max_batch_size == 8
    pre = json.loads(cfg["parameters"]["preprocess"]["string_value"])  # JSON, not a Python repr
    assert pre["size"] == [32, 32]
    before = c.get_inference_statistics(MODEL)["model_stats"][0]
    _infer(c, np.zeros((3, 3, 32, 32), np.float32))
    with pytest.raises(InferenceServerException):
        _infer(c, np.zeros((1, 3, 16, 16), np.float32))
    st = c.get_inference_statistics(MODEL)["model_stats"][0]
    assert st["name"] == MODEL and st["version"] == "1"
    assert st["inference_count"] == before["inference_count"] + 3
    for key, added in (("success", 1), ("fail", 1), ("queue", 1), ("compute_infer", 1)):
        assert st["inference_stats"][key]["count"] == before["inference_stats"][key]["count"] + added, key
    assert st["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    assert any(b["batch_size"] >= 3 and b["compute_infer"]["count"] >= 1 for b in st["batch_stats"])
    everyone = c.get_inference_statistics()["model_stats"]
    assert [m["name"] for m in everyone] == [MODEL, MODEL + "_images"]
    for path, method in (("/v2/nothing/here", "GET"), (f"/v2/models/{MODEL}/infer", "GET"), ("/v2/models/nope/stats", "GET"),
                         (f"/v2/models/{MODEL}/versions/3", "GET")):
        req = urllib.request.Request(f"http://{server.url}{path}", method=method)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code in (404, 405) and e.value.headers["Content-Type"].startswith("application/json"), path
        assert json.loads(e.value.read())["error"]


@pytest.mark.parametrize("case", ["nan", "inf", "empty_hw", "too_many_images", "tiny_image", "empty_image"])
def test_degenerate_inputs_get_400_naming_the_problem(server, case):
    c = th.InferenceServerClient(server.url)
    png = lambda a: cv2.imencode(".png", a)[1].tobytes()
    if case in ("nan", "inf"):
        x = np.zeros((2, 3, 32, 32), np.float32)
        x[1, 2, 0, 0] = np.nan if case == "nan" else -np.inf
        model, inp, msg = MODEL, th.InferInput("images", [2, 3, 32, 32], "FP32"), "non-finite"
        inp.set_data_from_numpy(x)
    elif case == "empty_hw":
        model, inp, msg = MODEL, th.InferInput("images", [1, 3, 0, 32], "FP32"), r"shape \[1, 3, 0, 32\]"
        inp.set_data_from_numpy(np.zeros((1, 3, 0, 32), np.float32))
    else:
        items = {"too_many_images": [png(np.zeros((8, 8, 3), np.uint8))] * 9, "tiny_image": [png(np.zeros((1, 1, 3), np.uint8))],
                 "empty_image": [b""]}[case]
        msg = {"too_many_images": "9 images in one request, more than max_batch_size 8", "tiny_image": r"image_bytes\[0\]: .*1x1",
               "empty_image": r"image_bytes\[0\]: empty"}[case]
        model, inp = MODEL + "_images", th.InferInput("image_bytes", [len(items)], "BYTES")
        inp.set_data_from_numpy(np.array(items, dtype=object))
    with pytest.raises(InferenceServerException, match=msg) as e:
        c.infer(model, [inp])
    assert e.value.status() == "400"


def _post(url, body, headers):
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_raw_bad_bodies_and_images(server):
    url = f"http://{server.url}/v2/models/{MODEL}/infer"
    assert _post(url, b"{oops", {})[0] == 400
    head = b'{"inputs": [{"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "parameters": {"binary_data_size": 12288}}]}'
    status, body = _post(url, head + b"abc", {"Inference-Header-Content-Length": str(len(head))})
    assert status == 400 and b"binary_data_size" in body
    inp = th.InferInput("image_bytes", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    with pytest.raises(InferenceServerException, match=r"image_bytes\[0\]: not a decodable image"):
        th.InferenceServerClient(server.url).infer(MODEL + "_images", [inp])
    # the server keeps serving everyone else
    assert _infer(th.InferenceServerClient(server.url), np.zeros((1, 3, 32, 32), np.float32)).as_numpy("cls").shape == (1, 64)


def test_64_concurrent_clients_get_their_own_results_in_batches(server, onnx_artifact):
    xs = [np.random.default_rng(100 + i).standard_normal((1 + i % 2, 3, 32, 32)).astype(np.float32) for i in range(64)]
    with runtime.load(onnx_artifact) as model:
        refs = [model.run(x).cls for x in xs]

    def call(i):
        return _infer(th.InferenceServerClient(server.url), xs[i]).as_numpy("cls")

    with cf.ThreadPoolExecutor(32) as pool:
        outs = list(pool.map(call, range(64)))
    for out, ref in zip(outs, refs):
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    metrics = urllib.request.urlopen(f"http://{server.url}/metrics").read().decode()
    buckets = dict(re.findall(r'wherevit_batch_size_bucket\{le="([0-9.]+)"\} ([0-9.]+)', metrics))
    count = float(re.search(r"wherevit_batch_size_count ([0-9.]+)", metrics).group(1))
    assert count - float(buckets["2.0"]) > 0, "no batch larger than 2 was formed"
    for name in ("wherevit_queue_depth", "wherevit_queue_wait_seconds_quantile", "wherevit_compute_seconds_quantile", "wherevit_rejected"):
        assert name in metrics


def test_overload_gets_503_quickly_while_admitted_requests_complete(onnx_artifact):
    s = Server(onnx_artifact, "--max-batch", "8", "--max-queue", "2", "--max-wait-ms", "0")
    try:
        x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
        with runtime.load(onnx_artifact) as model:
            ref = model.run(x).cls

        def call(_):
            t0 = time.monotonic()
            try:
                return "ok", np.abs(_infer(th.InferenceServerClient(s.url), x).as_numpy("cls") - ref).max(), time.monotonic() - t0
            except InferenceServerException as e:
                return e.status(), None, time.monotonic() - t0

        with cf.ThreadPoolExecutor(48) as pool:
            res = list(pool.map(call, range(96)))
        ok = [r for r in res if r[0] == "ok"]
        refused = [r for r in res if r[0] == "503"]
        assert ok and refused and len(ok) + len(refused) == len(res)
        assert max(r[1] for r in ok) < 1e-4
        assert np.median([r[2] for r in refused]) < 1.0
    finally:
        s.stop()


def test_shutdown_with_queued_requests_answers_everyone(onnx_artifact):
    s = Server(onnx_artifact, "--max-batch", "2", "--max-wait-ms", "20")
    x = np.zeros((2, 3, 32, 32), np.float32)

    def call(_):
        try:
            _infer(th.InferenceServerClient(s.url, connection_timeout=20, network_timeout=20), x)
            return "ok"
        except InferenceServerException as e:
            return f"error {e.status()}"
        except Exception as e:  # connection refused/reset once the server is gone
            return f"error {type(e).__name__}"

    with cf.ThreadPoolExecutor(32) as pool:
        futs = [pool.submit(call, i) for i in range(64)]
        time.sleep(0.15)
        s.proc.send_signal(signal.SIGTERM)
        results = [f.result(timeout=40) for f in futs]  # none hangs
    assert s.proc.wait(40) == 0  # a graceful stop, not a crash or a kill
    assert len(results) == 64 and "ok" in results
