import json
import struct

import numpy as np
import pytest

from wherevit.runtime.kserve import OutputNotJson, ProtocolError, encode_infer_response, parse_infer_request


def _binary_body(x: np.ndarray, name="images"):
    head = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return head + x.tobytes(), len(head)


def test_json_and_binary_requests_agree():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    js = json.dumps({"id": "7", "inputs": [{"name": "images", "shape": [2, 3, 2, 2], "datatype": "FP32",
                                            "data": x.reshape(-1).tolist()}]}).encode()
    a = parse_infer_request(js, None)
    body, hl = _binary_body(x)
    b = parse_infer_request(body, hl)
    np.testing.assert_array_equal(a.inputs["images"], x)
    np.testing.assert_array_equal(b.inputs["images"], x)
    assert a.id == "7"
    # header length equal to the whole body: a JSON-only request with the header present
    assert parse_infer_request(js, len(js)).inputs["images"].shape == (2, 3, 2, 2)


def test_bytes_tensors_binary_and_base64():
    items = [b"\x89PNG...", b"jpeg!"]
    raw = b"".join(struct.pack("<I", len(i)) + i for i in items)
    head = json.dumps({"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    assert parse_infer_request(head + raw, len(head)).inputs["image_bytes"] == items
    import base64
    js = json.dumps({"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES",
                                 "data": [base64.b64encode(i).decode() for i in items]}]}).encode()
    assert parse_infer_request(js, None).inputs["image_bytes"] == items


@pytest.mark.parametrize("body,hl,msg", [
    (b"{not json", None, "not valid JSON"),
    (b'{"inputs": []}', None, "non-empty 'inputs'"),
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP99", "data": [1, 2]}]}', None, "unknown datatype"),
    (b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}', None, "needs 3 elements, got 2"),
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": ["a", "b"]}]}', None, "not a list of FP32"),
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32"}]}', None, "neither 'data' nor"),
    (b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}', None, "non-negative"),
    (b'{}', 99, "outside the body"),
])
def test_malformed_requests_are_named(body, hl, msg):
    with pytest.raises(ProtocolError, match=msg):
        parse_infer_request(body, hl)


def test_binary_size_beyond_the_body():
    head = b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}'
    with pytest.raises(ProtocolError, match="exceeds the 4 bytes left"):
        parse_infer_request(head + b"1234", len(head))


def test_wrong_binary_size_and_unclaimed_bytes():
    x = np.zeros((1, 3), np.float32)
    head = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}).encode()
    with pytest.raises(ProtocolError, match="needs 16 bytes, got 12"):
        parse_infer_request(head + x.tobytes(), len(head))
    body, hl = _binary_body(x, "x")
    with pytest.raises(ProtocolError, match="not claimed"):
        parse_infer_request(body + b"extra", hl)


def test_response_encoding_binary_and_json():
    req = parse_infer_request(b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],'
                              b' "outputs": [{"name": "a", "parameters": {"binary_data": true}}, {"name": "b"}]}', None)
    a, b = np.ones((2, 2), np.float32), np.arange(3, dtype=np.float32)
    body, headers = encode_infer_response("m", "1", req, {"a": a, "b": b})
    hl = int(headers["Inference-Header-Content-Length"])
    head = json.loads(body[:hl])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 16
    assert head["outputs"][1]["data"] == [0.0, 1.0, 2.0]
    np.testing.assert_array_equal(np.frombuffer(body[hl:], np.float32).reshape(2, 2), a)


def test_non_finite_outputs_are_never_written_as_json_tokens():
    req = parse_infer_request(b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', None)
    out = {"depth": np.array([[1.0, np.nan]], np.float32)}
    with pytest.raises(OutputNotJson, match="'depth' holds non-finite values.*binary_data"):
        encode_infer_response("m", "1", req, out)
    req.binary_output_default = True  # binary data carries them
    body, headers = encode_infer_response("m", "1", req, out)
    hl = int(headers["Inference-Header-Content-Length"])
    assert np.isnan(np.frombuffer(body[hl:], np.float32)[1])
    json.loads(body[:hl])  # and the header is strict JSON
