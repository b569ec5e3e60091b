"""A live `wherevit serve --grpc-port` process, driven by the real tritonclient.grpc client.

(tritonclient.grpc and kserve register the same protobuf symbols: never import kserve here.)
"""

import concurrent.futures as cf
import functools
import threading
import time

import cv2
import grpc
import numpy as np
import pytest

tg = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
import tritonclient.http as th  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from helpers import Server  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from wherevit import runtime  # noqa: E402
from wherevit.train.data.synthetic import render_scene  # noqa: E402

MODEL = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def server(onnx_artifact):
    s = Server(onnx_artifact, "--max-wait-ms", "5", grpc=True)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def reference(onnx_artifact):
    with runtime.load(onnx_artifact) as model:
        yield model


def _input(x, name="images"):
    inp = tg.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def _status(e: InferenceServerException) -> str:
    return str(e.status())


def test_metadata_config_index_and_health(server):
    c = tg.InferenceServerClient(server.grpc_url)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)
    sm = c.get_server_metadata(as_json=True)
    assert sm["name"] == "wherevit" and "statistics" in sm["extensions"]
    md = c.get_model_metadata(MODEL, as_json=True)
    assert md["inputs"] == [{"name": "images", "datatype": "FP32", "shape": ["-1", "3", "32", "32"]}]
    assert [o["name"] for o in md["outputs"]] == ["cls", "patch_tokens", "pooled"]
    cfg = c.get_model_config(MODEL).config  # a model_config_pb2.ModelConfig
    assert cfg.max_batch_size == 8 and list(cfg.input[0].dims) == [3, 32, 32] and list(cfg.output[1].dims) == [16, 64]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 5000
    # the same config over HTTP, field for field
    http_cfg = th.InferenceServerClient(server.url).get_model_config(MODEL)
    assert json_format.MessageToDict(cfg, preserving_proto_field_name=True)["input"][0]["dims"] == ["3", "32", "32"]
    assert http_cfg["input"][0]["dims"] == [3, 32, 32]
    index = c.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m["state"]) for m in index} == {(MODEL, "READY"), (MODEL + "_images", "READY")}
    with pytest.raises(InferenceServerException, match="unknown model") as e:
        c.get_model_metadata("nope")
    assert _status(e.value) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as e:
        c.is_model_ready(MODEL, model_version="7")
    assert _status(e.value) == "StatusCode.NOT_FOUND"


def test_raw_infer_matches_the_library(server, reference):
    c = tg.InferenceServerClient(server.grpc_url)
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    ref = reference.run(x)
    r = c.infer(MODEL, [_input(x)], outputs=[tg.InferRequestedOutput("cls"), tg.InferRequestedOutput("patch_tokens")])
    np.testing.assert_allclose(r.as_numpy("cls"), ref.cls, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.as_numpy("patch_tokens"), ref.patch_tokens, rtol=1e-5, atol=1e-5)
    assert r.as_numpy("pooled") is None  # only what was asked for
    r = c.infer(MODEL, [_input(x)])  # no outputs named: all of them
    assert {o.name for o in r.get_response().outputs} == {"cls", "patch_tokens", "pooled"}
    # encoded images through the _images model
    img = render_scene(5, 48)
    png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()
    inp = tg.InferInput("image_bytes", [1], "BYTES")
    inp.set_data_from_numpy(np.array([png], dtype=object))
    np.testing.assert_allclose(c.infer(MODEL + "_images", [inp]).as_numpy("cls"), reference.embed([img]).cls, rtol=1e-5, atol=1e-5)


def test_typed_contents_are_accepted(server, reference):
    """tritonclient always sends raw contents; the generated stub sends typed ``fp32_contents``."""
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with grpc.insecure_channel(server.grpc_url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        req = service_pb2.ModelInferRequest(model_name=MODEL, id="typed-1")
        t = req.inputs.add(name="images", datatype="FP32", shape=list(x.shape))
        t.contents.fp32_contents.extend(x.reshape(-1).tolist())
        req.outputs.add(name="cls")
        resp = stub.ModelInfer(req)
        assert resp.id == "typed-1" and [o.name for o in resp.outputs] == ["cls"] and list(resp.outputs[0].shape) == [2, 64]
        got = np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(2, 64)
        np.testing.assert_allclose(got, reference.run(x).cls, rtol=1e-5, atol=1e-5)
        # typed BYTES contents for the encoded-image model
        img = render_scene(6, 40)
        req = service_pb2.ModelInferRequest(model_name=MODEL + "_images")
        t = req.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
        t.contents.bytes_contents.append(cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes())
        resp = stub.ModelInfer(req)
        names = [o.name for o in resp.outputs]
        got = np.frombuffer(resp.raw_output_contents[names.index("cls")], "<f4").reshape(1, 64)
        np.testing.assert_allclose(got, reference.embed([img]).cls, rtol=1e-5, atol=1e-5)
        # too few typed values
        req = service_pb2.ModelInferRequest(model_name=MODEL)
        t = req.inputs.add(name="images", datatype="FP32", shape=[1, 3, 32, 32])
        t.contents.fp32_contents.extend([0.0] * 5)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(req)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs 3072 elements, got 5" in e.value.details()


def test_64_in_flight_async_requests_get_their_own_results(server, reference):
    c = tg.InferenceServerClient(server.grpc_url)
    xs = [np.random.default_rng(100 + i).standard_normal((1 + i % 2, 3, 32, 32)).astype(np.float32) for i in range(64)]
    refs = [reference.run(x).cls for x in xs]
    results, done = {}, threading.Semaphore(0)

    def callback(i, result, error):
        results[i] = error if error is not None else result.as_numpy("cls")
        done.release()

    for i, x in enumerate(xs):  # all 64 are sent before any answer is awaited
        c.async_infer(MODEL, [_input(x)], functools.partial(callback, i), request_id=str(i),
                      outputs=[tg.InferRequestedOutput("cls")])
    for _ in xs:
        assert done.acquire(timeout=60)
    for i, ref in enumerate(refs):
        assert not isinstance(results[i], Exception), results[i]
        np.testing.assert_allclose(results[i], ref, rtol=1e-5, atol=1e-5)
    stats = c.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    sizes = {int(b["batch_size"]) for b in stats["batch_stats"]}
    assert max(sizes) > 2, f"no batch larger than one request was formed: {sizes}"


@pytest.mark.parametrize("shape,dtype,name,msg", [
    ((1, 3, 16, 16), "FP32", "images", r"shape \[1, 3, 16, 16\], expected \[-1, 3, 32, 32\]"),
    ((0, 3, 32, 32), "FP32", "images", "no images"),
    ((9, 3, 32, 32), "FP32", "images", "9 images in one request, more than max_batch_size 8"),
    ((1, 3, 32, 32), "FP16", "images", "datatype FP16, expected FP32"),
    ((1, 3, 32, 32), "FP32", "pixels", r"takes input\(s\) \['images'\], got \['pixels'\]"),
])
def test_bad_tensors_are_invalid_argument(server, shape, dtype, name, msg):
    c = tg.InferenceServerClient(server.grpc_url)
    inp = tg.InferInput(name, list(shape), dtype)
    inp.set_data_from_numpy(np.zeros(shape, np.float16 if dtype == "FP16" else np.float32))
    with pytest.raises(InferenceServerException, match=msg) as e:
        c.infer(MODEL, [inp])
    assert _status(e.value) == "StatusCode.INVALID_ARGUMENT"


def test_non_finite_values_undecodable_images_and_large_messages(server):
    c = tg.InferenceServerClient(server.grpc_url)
    x = np.zeros((2, 3, 32, 32), np.float32)
    x[1, 0, 3, 3] = np.nan
    with pytest.raises(InferenceServerException, match="1 non-finite value") as e:
        c.infer(MODEL, [_input(x)])
    assert _status(e.value) == "StatusCode.INVALID_ARGUMENT"
    for payload, msg in ((b"not an image", r"image_bytes\[0\]: not a decodable image"), (b"", r"image_bytes\[0\]: empty")):
        inp = tg.InferInput("image_bytes", [1], "BYTES")
        inp.set_data_from_numpy(np.array([payload], dtype=object))
        with pytest.raises(InferenceServerException, match=msg) as e:
            c.infer(MODEL + "_images", [inp])
        assert _status(e.value) == "StatusCode.INVALID_ARGUMENT"
    # a 4.9 MB message is received (gRPC's 4 MiB default would answer RESOURCE_EXHAUSTED) and judged on its shape
    big = np.zeros((1, 3, 640, 640), np.float32)
    with pytest.raises(InferenceServerException, match=r"shape \[1, 3, 640, 640\]") as e:
        c.infer(MODEL, [_input(big)])
    assert _status(e.value) == "StatusCode.INVALID_ARGUMENT"
    # and the server keeps serving
    assert c.infer(MODEL, [_input(np.zeros((1, 3, 32, 32), np.float32))]).as_numpy("cls").shape == (1, 64)


def test_overload_is_unavailable_while_admitted_requests_complete(onnx_artifact, reference):
    s = Server(onnx_artifact, "--max-batch", "8", "--max-queue", "2", "--max-wait-ms", "0", grpc=True)
    try:
        c = tg.InferenceServerClient(s.grpc_url)
        x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
        ref = reference.run(x).cls
        results, done = [], threading.Semaphore(0)

        def callback(result, error):
            results.append(_status(error) if error is not None else float(np.abs(result.as_numpy("cls") - ref).max()))
            done.release()

        for _ in range(96):
            c.async_infer(MODEL, [_input(x)], callback, outputs=[tg.InferRequestedOutput("cls")])
        for _ in range(96):
            assert done.acquire(timeout=60)
        ok = [r for r in results if isinstance(r, float)]
        refused = [r for r in results if r == "StatusCode.UNAVAILABLE"]
        assert ok and refused and len(ok) + len(refused) == 96, set(map(str, results))
        assert max(ok) < 1e-4
        fails = c.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]["inference_stats"]["fail"]
        assert int(fails["count"]) == len(refused)
    finally:
        s.stop()


def test_http_and_grpc_clients_share_batches_and_statistics(onnx_artifact, reference):
    """4 HTTP + 4 gRPC one-image requests at once, a 500 ms batching window: one batch of 8 holds both."""
    s = Server(onnx_artifact, "--max-batch", "8", "--max-wait-ms", "500", grpc=True)
    try:
        xs = [np.random.default_rng(200 + i).standard_normal((1, 3, 32, 32)).astype(np.float32) for i in range(8)]
        gate = threading.Barrier(8)

        def call(i):
            if i % 2:
                client, inp = tg.InferenceServerClient(s.grpc_url), _input(xs[i])
            else:
                client, inp = th.InferenceServerClient(s.url), th.InferInput("images", [1, 3, 32, 32], "FP32")
                inp.set_data_from_numpy(xs[i])
            gate.wait()  # clients are made; the requests leave together
            return client.infer(MODEL, [inp]).as_numpy("cls")

        with cf.ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(call, range(8)))
        for x, out in zip(xs, outs):
            np.testing.assert_allclose(out, reference.run(x).cls, rtol=1e-5, atol=1e-5)
        http = th.InferenceServerClient(s.url).get_inference_statistics(MODEL)["model_stats"][0]
        grpc_stats = tg.InferenceServerClient(s.grpc_url).get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
        assert http["inference_count"] == 8 and int(grpc_stats["inference_count"]) == 8
        assert http["inference_stats"]["success"]["count"] == 8
        # no protocol alone had more than 4 images: a batch above 4 mixed HTTP and gRPC requests
        assert max(b["batch_size"] for b in http["batch_stats"]) > 4, http["batch_stats"]
        assert http["execution_count"] == sum(b["compute_infer"]["count"] for b in http["batch_stats"]) < 8
        assert http["inference_stats"]["queue"]["ns"] > 0 and http["inference_stats"]["compute_infer"]["ns"] > 0
        assert [int(b["batch_size"]) for b in grpc_stats["batch_stats"]] == [b["batch_size"] for b in http["batch_stats"]]

        # Triton's `timeout` parameter (microseconds) is a deadline: 50 ms cannot outlast a 500 ms batching window
        t0 = time.monotonic()
        with pytest.raises(InferenceServerException, match="past its deadline") as e:
            tg.InferenceServerClient(s.grpc_url).infer(MODEL, [_input(xs[0])], timeout=50_000)
        assert _status(e.value) == "StatusCode.DEADLINE_EXCEEDED" and time.monotonic() - t0 < 5
    finally:
        s.stop()


def test_shutdown_answers_every_in_flight_grpc_request(onnx_artifact):
    import signal

    s = Server(onnx_artifact, "--max-batch", "2", "--max-wait-ms", "20", grpc=True)
    c = tg.InferenceServerClient(s.grpc_url)
    results, done = [], threading.Semaphore(0)

    def callback(result, error):
        results.append("ok" if error is None else _status(error))
        done.release()

    x = np.zeros((2, 3, 32, 32), np.float32)
    for _ in range(48):
        c.async_infer(MODEL, [_input(x)], callback, client_timeout=40)
    time.sleep(0.1)
    s.proc.send_signal(signal.SIGTERM)
    for _ in range(48):
        assert done.acquire(timeout=45)  # none hangs
    assert s.proc.wait(40) is not None
    assert "ok" in results and set(results) <= {"ok", "StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"}, set(results)


def test_server_without_grpc_packages_says_how_to_install(onnx_artifact, tmp_path):
    """`--grpc-port` where grpcio is missing: one line naming the install command, before the model loads."""
    import subprocess
    import sys

    (tmp_path / "grpc.py").write_text("raise ImportError('No module named grpc')\n")  # shadows the real package
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "wherevit.app.cli", "serve", str(onnx_artifact), "--grpc-port", "1"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode != 0 and "pip install 'wherevit[serve]'" in r.stderr, r.stderr


def test_a_taken_grpc_port_is_one_clear_line(onnx_artifact):
    import socket
    import subprocess
    import sys

    from helpers import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "wherevit.app.cli", "serve", str(onnx_artifact), "--port", str(free_port()),
                            "--grpc-port", str(port)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and f"cannot bind the gRPC port 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr, r.stderr
