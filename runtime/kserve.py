"""KServe v2 / Open Inference Protocol tensors over HTTP: request parsing and response encoding.

Pure functions (no server): JSON tensors, and the binary tensor data extension where the body is
a JSON header of ``Inference-Header-Content-Length`` bytes followed by raw tensor bytes in input
order (that length may equal the whole body: then no tensor is binary). BYTES tensors are binary
as 4-byte little-endian lengths + contents, or in JSON as base64 strings (our convention: raw
image bytes are not valid JSON strings).

Hostile input is a 400 (``ProtocolError``), never a 500: JSON goes through orjson, whose parser
refuses nesting deeper than 1024 levels (a request needs about 20: tensors have at most
``MAX_RANK`` dimensions) instead of overflowing the stack; every field's type is checked before
use; a shape's element count is exact (no wrap-around) and must match the data before anything is
allocated. The body itself is bounded by the server (``--max-request-mb``).
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from wherevit.base.errors import WherevitError

__all__ = ["ProtocolError", "OutputNotJson", "InferRequest", "RequestedOutput", "parse_infer_request", "encode_infer_response",
           "tensor_from_bytes", "check_shape", "DATATYPES", "datatype_of", "triton_type", "MAX_RANK"]

# More dimensions than any image model needs, fewer than numpy's 64 (a reshape beyond that raises).
MAX_RANK = 16
# Elements a shape may span counting a 0 dimension as 1: numpy refuses to even describe [0, 2**62, 2**62].
MAX_SPAN = 1 << 40

DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": object,
}
_NP_TO_DT = {np.dtype(v): k for k, v in DATATYPES.items() if v is not object}


class ProtocolError(WherevitError, ValueError):
    """A request that is not valid KServe v2 (HTTP 400); the message names the problem."""


class OutputNotJson(WherevitError, ValueError):
    """An output that cannot be written as JSON (HTTP 500 naming it; binary data can carry it)."""


def datatype_of(arr: np.ndarray) -> str:
    return _NP_TO_DT[arr.dtype]


def triton_type(datatype: str) -> str:
    """KServe datatype -> Triton model-config type (FP32 -> TYPE_FP32, BYTES -> TYPE_STRING)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


@dataclass
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray | list[bytes]]
    datatypes: dict[str, str]
    outputs: list[RequestedOutput] | None  # None: all outputs
    binary_output_default: bool = False
    parameters: dict = field(default_factory=dict)


def _split_bytes(buf: bytes, name: str, count: int) -> list[bytes]:
    out, i = [], 0
    while i < len(buf):
        if len(out) == count:  # stop at once: a body of 4-byte empty elements would otherwise cost 16 M iterations
            raise ProtocolError(f"input {name!r}: more than the {count} BYTES elements its shape declares")
        if i + 4 > len(buf):
            raise ProtocolError(f"input {name!r}: truncated BYTES element length at offset {i}")
        (n,) = struct.unpack_from("<I", buf, i)
        i += 4
        if i + n > len(buf):
            raise ProtocolError(f"input {name!r}: BYTES element of {n} bytes overruns the tensor data")
        out.append(buf[i : i + n])
        i += n
    return out


def _split_body(body: bytes, header_length: int | None) -> tuple[dict, memoryview]:
    """Step 1: the JSON header (``Inference-Header-Content-Length`` bytes, or all) and the binary rest."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {header_length} is outside the body's {len(body)} bytes")
        header_bytes, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header_bytes, binary = body, memoryview(b"")
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as e:  # also: nesting deeper than 1024, NaN/Infinity tokens, invalid UTF-8
        raise ProtocolError(f"request header is not valid JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) or not header["inputs"]:
        raise ProtocolError("request must be a JSON object with a non-empty 'inputs' list")
    if header.get("id") is not None and not isinstance(header["id"], str):
        raise ProtocolError(f"'id' must be a string, got {type(header['id']).__name__}")
    return header, binary


def _parameters(obj: dict, where: str) -> dict:
    """An object's ``parameters`` (absent or null: empty), which must be a JSON object."""
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}: 'parameters' must be an object, got {type(params).__name__}")
    return params


def check_shape(name: str, shape: Any) -> list[int]:
    """A tensor shape: a list of at most ``MAX_RANK`` non-negative integers (shared with gRPC)."""
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if len(shape) > MAX_RANK:
        raise ProtocolError(f"input {name!r}: shape has {len(shape)} dimensions, more than {MAX_RANK}")
    if math.prod(max(d, 1) for d in shape) > MAX_SPAN:
        raise ProtocolError(f"input {name!r}: shape {list(shape)} is larger than any request can carry")
    return list(shape)


def _input_spec(spec: Any) -> tuple[str, list[int], str]:
    """Step 2: one input's name, shape and datatype, checked."""
    if not isinstance(spec, dict):
        raise ProtocolError("each input must be an object with name, shape, datatype")
    name, shape, dt = spec.get("name"), spec.get("shape"), spec.get("datatype")
    if not isinstance(name, str):
        raise ProtocolError("an input has no 'name'")
    if not isinstance(dt, str) or dt not in DATATYPES:
        raise ProtocolError(f"input {name!r}: unknown datatype {dt!r}; known: {', '.join(DATATYPES)}")
    return name, check_shape(name, shape), dt


def _element_count(shape: list[int]) -> int:
    return math.prod(shape)  # exact for any size (np.prod would wrap around on huge shapes)


def tensor_from_bytes(name: str, shape: list[int], dt: str, raw: bytes) -> np.ndarray | list[bytes]:
    """Raw little-endian row-major tensor bytes (BYTES: 4-byte length prefixes) -> array or list of bytes.

    Shared with the gRPC endpoint, whose ``raw_input_contents`` use the same layout."""
    count = _element_count(shape)
    if dt == "BYTES":
        arr = _split_bytes(raw, name, count)
        if len(arr) != count:
            raise ProtocolError(f"input {name!r}: shape {shape} needs {count} BYTES elements, got {len(arr)}")
        return arr
    itemsize = np.dtype(DATATYPES[dt]).itemsize
    if len(raw) != count * itemsize:
        raise ProtocolError(f"input {name!r}: shape {shape} of {dt} needs {count * itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, np.dtype(DATATYPES[dt]).newbyteorder("<")).reshape(shape)


def _flat_strings(name: str, data: Any) -> list[str]:
    """JSON BYTES ``data``: a (nested) list of strings, flattened in row-major order without recursion."""
    out, stack = [], [iter([data])]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if not isinstance(item, str):
                raise ProtocolError(f"input {name!r}: JSON BYTES elements must be base64 strings, got {type(item).__name__}")
            out.append(item)
        else:
            stack.pop()
    return out


def _json_tensor(name: str, shape: list[int], dt: str, data: Any) -> np.ndarray | list[bytes]:
    """Step 3b: a tensor given inline as JSON ``data`` (BYTES as base64 strings)."""
    count = _element_count(shape)
    if dt == "BYTES":
        flat = _flat_strings(name, data)
        if len(flat) != count:
            raise ProtocolError(f"input {name!r}: shape {shape} needs {count} elements, got {len(flat)}")
        try:
            return [base64.b64decode(s, validate=True) for s in flat]
        except ValueError:
            raise ProtocolError(f"input {name!r}: JSON BYTES elements must be base64 strings") from None
    if not isinstance(data, list):
        raise ProtocolError(f"input {name!r}: 'data' must be a list of {dt} values, got {type(data).__name__}")
    try:
        flat = np.asarray(data, dtype=DATATYPES[dt]).reshape(-1)
    except (ValueError, TypeError, OverflowError):  # ragged, not numbers, too deep, or out of the type's range
        raise ProtocolError(f"input {name!r}: 'data' is not a list of {dt} values (nested lists allowed)") from None
    if flat.size != count:
        raise ProtocolError(f"input {name!r}: shape {shape} needs {count} elements, got {flat.size}")
    return flat.reshape(shape)


def _requested_outputs(header: dict) -> list[RequestedOutput] | None:
    """Step 4: the outputs asked for (None: all), each with its binary_data flag."""
    if header.get("outputs") is None:
        return None
    if not isinstance(header["outputs"], list):
        raise ProtocolError("'outputs' must be a list")
    outputs = []
    for o in header["outputs"]:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise ProtocolError("each requested output needs a 'name'")
        binary = _parameters(o, f"output {o['name']!r}").get("binary_data", False)
        if not isinstance(binary, bool):
            raise ProtocolError(f"output {o['name']!r}: parameters.binary_data must be true or false")
        outputs.append(RequestedOutput(o["name"], binary))
    return outputs


def parse_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """Parse an infer request body; ``header_length`` is the Inference-Header-Content-Length value.

    Steps: split header and binary data, then per input its spec and its tensor (step 3a, binary:
    the next ``binary_data_size`` bytes; 3b, JSON ``data``), then the requested outputs.
    """
    header, binary = _split_body(body, header_length)
    params = _parameters(header, "request")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ProtocolError("parameters.binary_data_output must be true or false")
    inputs, dtypes, offset = {}, {}, 0
    for spec in header["inputs"]:
        name, shape, dt = _input_spec(spec)
        if name in inputs:
            raise ProtocolError(f"input {name!r} given twice")
        in_params = _parameters(spec, f"input {name!r}")
        if "binary_data_size" in in_params:  # step 3a
            size = in_params["binary_data_size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise ProtocolError(f"input {name!r}: binary_data_size {size} exceeds the {len(binary) - offset} bytes left in the body")
            inputs[name] = tensor_from_bytes(name, shape, dt, bytes(binary[offset : offset + size]))
            offset += size
        elif "data" in spec:
            inputs[name] = _json_tensor(name, shape, dt, spec["data"])
        else:
            raise ProtocolError(f"input {name!r}: neither 'data' nor parameters.binary_data_size given")
        dtypes[name] = dt
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    return InferRequest(header.get("id"), inputs, dtypes, _requested_outputs(header), binary_output, params)


def encode_infer_response(model: str, version: str, request: InferRequest, outputs: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """Encode outputs (those requested, or all) as JSON, with binary data where asked."""
    wanted = request.outputs or [RequestedOutput(n, request.binary_output_default) for n in outputs]
    header: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": []}
    if request.id is not None:
        header["id"] = request.id
    blobs = []
    for ro in wanted:
        arr = np.ascontiguousarray(outputs[ro.name])
        entry: dict[str, Any] = {"name": ro.name, "datatype": datatype_of(arr), "shape": list(arr.shape)}
        if ro.binary:
            blob = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():  # NaN/Infinity tokens are not JSON
                raise OutputNotJson(f"output {ro.name!r} holds non-finite values, which JSON cannot carry; "
                                    "request it with binary_data (the binary tensor data extension)")
            flat = arr.reshape(-1)
            entry["data"] = flat if flat.dtype.kind in "fiub" else flat.tolist()  # orjson writes numeric arrays natively
        header["outputs"].append(entry)
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
