"""Hypothesis fuzzing of the HTTP and gRPC request parsers, in process and against a live server.

The property everywhere: a request is served, or refused as the client's mistake (ProtocolError and
its kin -> HTTP 4xx / gRPC INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED); never an unclassified
exception (HTTP 500 / gRPC INTERNAL), never a hang. Example counts are fixed so the file stays
within a minute or two on 2 cores (`-k fuzz`; HYPOTHESIS_PROFILE is not used: counts are in code).
"""

import base64
import http.client
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

tg = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
import grpc  # noqa: E402
from helpers import Server  # noqa: E402
from tritonclient.grpc import service_pb2  # noqa: E402

from wherevit.runtime.grpc_server import infer_request_from_proto  # noqa: E402
from wherevit.runtime.kserve import DATATYPES, ProtocolError, parse_infer_request  # noqa: E402
from wherevit.runtime.model import Model  # noqa: E402
from wherevit.runtime.service import InferenceService, ServeConfig, error_kind  # noqa: E402

MODEL = "vit_tiny_patch16_224"
IMAGES = MODEL + "_images"
HANG_S = 10.0
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)


@pytest.fixture(scope="module")
def service(onnx_artifact):
    """The serving logic in process (not started: validation and decoding need no event loop)."""
    svc = InferenceService(Model(onnx_artifact), ServeConfig(max_image_pixels=1 << 20))
    yield svc
    svc.decoder.close()
    svc.model.close()


def _validate(service: InferenceService, name: str, req) -> None:
    """What ``InferenceService.infer`` does before the batcher; any exception must be a client-error kind."""
    try:
        service.check_model(name)
        if req.outputs is not None:
            unknown = [o.name for o in req.outputs if o.name not in service.model.output_names]
            if unknown:
                raise ProtocolError(f"unknown output(s) {unknown}")
        if name == service.images_name:
            service._check_images(name, req)
        service._feeds(name, req)
    except Exception as e:
        assert error_kind(e) in ("bad_request", "not_found"), f"{type(e).__name__}: {e}"


# -- strategies --------------------------------------------------------------------------------
_json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
_json = st.recursive(_json_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
                     max_leaves=20)
_names = st.sampled_from(["images", "image_bytes", "pixels", ""]) | st.text(max_size=6)
_dtypes = st.sampled_from([*DATATYPES, "FP99", "", "fp32"])
_shapes = st.lists(st.integers(-3, 2**40) | st.sampled_from([0, 1, 2, 3, 32]), max_size=20) | _json


def _png() -> bytes:
    import cv2

    return cv2.imencode(".png", np.full((20, 30, 3), 90, np.uint8))[1].tobytes()


@st.composite
def _kserve_bodies(draw):
    """Near-valid KServe v2 infer bodies: right keys with wrong types, lying shapes, binary parts, base64 BYTES."""
    inputs = []
    binary = b""
    for _ in range(draw(st.integers(0, 3))):
        spec: dict = {"name": draw(_names), "datatype": draw(_dtypes), "shape": draw(_shapes)}
        how = draw(st.sampled_from(["data", "binary", "none", "valid_fp32", "valid_bytes"]))
        if how == "data":
            spec["data"] = draw(_json)
        elif how == "binary":
            blob = draw(st.binary(max_size=64))
            binary += blob
            spec["parameters"] = {"binary_data_size": draw(st.sampled_from([len(blob), len(blob) + 1, -1, True, "8"]))}
        elif how == "valid_fp32":
            n = draw(st.integers(0, 2))
            spec.update(name="images", datatype="FP32", shape=[n, 3, 32, 32], data=[0.5] * (n * 3072))
        elif how == "valid_bytes":
            items = draw(st.lists(st.sampled_from([_png(), b"", b"\x89PNG\r\n\x1a\n", b"BM" + b"\xff" * 40]), max_size=3))
            spec.update(name="image_bytes", datatype="BYTES", shape=[len(items)], data=[base64.b64encode(i).decode() for i in items])
        if draw(st.booleans()):
            spec["parameters"] = draw(_json) if draw(st.booleans()) else spec.get("parameters", {})
        inputs.append(spec)
    head: dict = {"inputs": inputs} if draw(st.integers(0, 9)) else draw(_json)
    if isinstance(head, dict) and draw(st.booleans()):
        head["outputs"] = draw(st.lists(st.fixed_dictionaries({"name": st.sampled_from(["cls", "pooled", "nope"]),
                                                               "parameters": _json}), max_size=2) | _json)
    if isinstance(head, dict) and draw(st.booleans()):
        head["id"] = draw(_json)
        head["parameters"] = draw(_json)
    text = json.dumps(head).encode()
    header_length = len(text) if binary or draw(st.booleans()) else None
    if draw(st.integers(0, 4)) == 0:
        header_length = draw(st.integers(-5, len(text) + len(binary) + 5))
    return text + binary, header_length


# -- in process ------------------------------------------------------------------------------
@settings(FUZZ, max_examples=400)
@given(body=st.binary(max_size=256), header_length=st.none() | st.integers(-10, 300))
def test_fuzz_http_parser_on_arbitrary_bytes(body, header_length):
    try:
        parse_infer_request(body, header_length)
    except ProtocolError:
        pass


@settings(FUZZ, max_examples=600)
@given(case=_kserve_bodies(), name=st.sampled_from([MODEL, IMAGES]))
def test_fuzz_http_parser_and_validation_on_near_valid_requests(service, case, name):
    body, header_length = case
    try:
        req = parse_infer_request(body, header_length)
    except ProtocolError:
        return
    _validate(service, name, req)


@st.composite
def _proto_requests(draw):
    req = service_pb2.ModelInferRequest(model_name=draw(st.sampled_from([MODEL, IMAGES, "nope"])), id=draw(st.text(max_size=4)))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        dt = draw(_dtypes)
        shape = draw(st.lists(st.integers(-3, 2**62) | st.sampled_from([0, 1, 3, 32]), max_size=20))
        t = req.inputs.add(name=draw(_names), datatype=dt, shape=shape)
        if raw:
            if draw(st.booleans()) and dt == "FP32":
                n = draw(st.integers(0, 2))
                del t.shape[:]
                t.shape.extend([n, 3, 32, 32])
                req.raw_input_contents.append(np.full(n * 3072, 0.25, "<f4").tobytes())
            else:
                req.raw_input_contents.append(draw(st.binary(max_size=64)))
        else:
            field = draw(st.sampled_from(["int_contents", "uint_contents", "fp32_contents", "bytes_contents", "bool_contents"]))
            if field == "bytes_contents":
                t.contents.bytes_contents.extend(draw(st.lists(st.sampled_from([_png(), b"", b"\xff\xd8\xff"]), max_size=3)))
            elif field == "fp32_contents":
                t.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
            elif field == "bool_contents":
                t.contents.bool_contents.extend(draw(st.lists(st.booleans(), max_size=8)))
            else:
                bits = 31 if field == "int_contents" else 32
                lo = -(2**31) if field == "int_contents" else 0
                getattr(t.contents, field).extend(draw(st.lists(st.integers(lo, 2**bits - 1), max_size=8)))
    if raw and draw(st.integers(0, 4)) == 0:
        req.raw_input_contents.append(b"extra")
    for o in draw(st.lists(st.sampled_from(["cls", "nope"]), max_size=2)):
        req.outputs.add(name=o)
    return req


@settings(FUZZ, max_examples=600)
@given(req=_proto_requests())
def test_fuzz_grpc_parser_and_validation(service, req):
    try:
        parsed = infer_request_from_proto(req)
    except ProtocolError:
        return
    _validate(service, req.model_name, parsed)


# -- against a live server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(onnx_artifact):
    s = Server(onnx_artifact, "--max-wait-ms", "1", "--max-image-pixels", "1000000", grpc=True)
    yield s
    s.stop()


_HTTP_OK = {200, 400, 404, 405}  # the codes a client's request can earn here (413/503/504 need size or load)
_paths = st.sampled_from(["/v2", "/v2/", "/v2/health/live", "/v2/health/ready", "/v2/models/stats", "/v2/repository/index", "/metrics",
                          f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/ready", f"/v2/models/{MODEL}/config", f"/v2/models/{MODEL}/stats",
                          f"/v2/models/{MODEL}/infer", f"/v2/models/{IMAGES}/infer", f"/v2/models/{MODEL}/versions/1/infer",
                          f"/v2/models/{MODEL}/versions/2/infer", "/v2/models/../../etc/passwd/infer", "/v2/models/%00/infer"]) | \
    st.text(alphabet="/abcv2%._-", max_size=20).map(lambda p: "/" + p)


@settings(FUZZ, max_examples=150)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]), path=_paths, case=_kserve_bodies(),
       raw=st.none() | st.binary(max_size=128), hl=st.none() | st.text(alphabet="-0123456789x", max_size=6))
def test_fuzz_live_http_server_answers_4xx_never_5xx_never_hangs(server, method, path, case, raw, hl):
    body, header_length = case
    if raw is not None:
        body = raw
    headers = {"Content-Type": "application/json"}
    if hl is not None:
        headers["Inference-Header-Content-Length"] = hl or "0"
    elif header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    conn = http.client.HTTPConnection(*server.url.split(":"), timeout=HANG_S)  # a timeout here is a hang: the test fails
    try:
        conn.request(method, path, body=body if method not in ("GET", "HEAD") else None, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    assert resp.status in _HTTP_OK, (resp.status, payload[:300])
    if resp.status == 405:
        assert resp.getheader("Allow")
    if resp.status >= 400 and method != "HEAD":
        assert json.loads(payload)["error"]


_GRPC_OK = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED}
_METHODS = ["ModelInfer", "ModelMetadata", "ModelReady", "ModelConfig", "ModelStatistics", "ServerMetadata", "RepositoryIndex",
            "CudaSharedMemoryStatus", "TraceSetting"]


@settings(FUZZ, max_examples=150)
@given(method=st.sampled_from(_METHODS), req=_proto_requests(), mutation=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                                                  max_size=3),
       junk=st.none() | st.binary(max_size=64))
def test_fuzz_live_grpc_server_answers_documented_codes_never_internal(server, method, req, mutation, junk):
    data = bytearray(req.SerializeToString()) if junk is None else bytearray(junk)
    for pos, byte in mutation:
        if data:
            data[pos % len(data)] = byte
    with grpc.insecure_channel(server.grpc_url) as ch:
        call = ch.unary_unary(f"/inference.GRPCInferenceService/{method}")
        try:
            call(bytes(data), timeout=HANG_S)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
            assert code != grpc.StatusCode.DEADLINE_EXCEEDED, "hang"
            assert code in _GRPC_OK, (code, e.details())

