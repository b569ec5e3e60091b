"""The KServe v2 / Triton ``GRPCInferenceService`` over the same ``InferenceService`` as HTTP.

Built on ``grpc.aio`` with the generated stubs that ``tritonclient[grpc]`` ships (no hand-written
protobuf): server/model live and ready, server and model metadata, model config, ModelInfer,
ModelStatistics and RepositoryIndex. Requests join the HTTP requests in one batcher and queue.

Tensors: inputs as ``raw_input_contents`` (little-endian, row-major; BYTES 4-byte length-prefixed)
or as typed ``contents``; outputs always as ``raw_output_contents`` (what tritonclient reads).
Errors carry Triton's status codes: INVALID_ARGUMENT for a bad tensor, NOT_FOUND for an unknown
model, UNAVAILABLE when the queue is full or the server stops, DEADLINE_EXCEEDED past a deadline
(the call's gRPC deadline or the request's ``timeout`` parameter, in microseconds).
A message that does not parse as its protobuf type is INVALID_ARGUMENT too (grpc's default
deserializer would answer INTERNAL, the gRPC twin of a 500); INTERNAL is left for a backend failure.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from wherevit.base.errors import WherevitError
from wherevit.runtime.kserve import (
    DATATYPES,
    InferRequest,
    ProtocolError,
    RequestedOutput,
    check_shape,
    datatype_of,
    tensor_from_bytes,
)
from wherevit.runtime.service import InferenceService

try:
    import grpc
    from google.protobuf import json_format
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    _MISSING: ImportError | None = None
except ImportError as e:  # the HTTP server works without them
    _MISSING = e

__all__ = ["GrpcUnavailable", "require_grpc", "start_grpc", "TritonGrpcService"]

log = logging.getLogger("wherevit.serve.grpc")

# Typed ``InferTensorContents`` field per datatype (FP16/BF16 have none: raw contents only).
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


class GrpcUnavailable(WherevitError, RuntimeError):
    """``--grpc-port`` cannot be served: grpcio / tritonclient[grpc] missing, or the port cannot be bound."""


def require_grpc() -> None:
    if _MISSING is not None:
        raise GrpcUnavailable(f"--grpc-port needs grpcio and tritonclient[grpc] ({_MISSING}); "
                              "install them with: pip install 'wherevit[serve]'  (or: pip install grpcio 'tritonclient[grpc]')")


def _codes() -> dict[str, Any]:
    return {"not_found": grpc.StatusCode.NOT_FOUND, "bad_request": grpc.StatusCode.INVALID_ARGUMENT,
            "unavailable": grpc.StatusCode.UNAVAILABLE, "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
            "error": grpc.StatusCode.INTERNAL}


def _parameters(params) -> dict:
    """A protobuf ``map<string, InferParameter>`` -> plain values (``timeout`` becomes an int, as in JSON)."""
    out = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which else None
    return out


def _typed_tensor(name: str, shape: list[int], dt: str, contents) -> np.ndarray | list[bytes]:
    field_name = _CONTENTS.get(dt)
    if field_name is None:
        raise ProtocolError(f"input {name!r}: {dt} has no typed contents in the protocol; send it in raw_input_contents")
    values = getattr(contents, field_name)
    count = math.prod(shape)  # exact: np.prod in int64 wraps around to 0 for [2**32, 2**32]
    if len(values) != count:
        raise ProtocolError(f"input {name!r}: shape {shape} needs {count} elements, got {len(values)} in {field_name}")
    if dt == "BYTES":
        return list(values)
    try:
        return np.asarray(values, dtype=DATATYPES[dt]).reshape(shape)
    except OverflowError:  # int_contents carry 32-bit values: 300 is no INT8 or UINT8
        raise ProtocolError(f"input {name!r}: a value in {field_name} is out of the range of {dt}") from None


def infer_request_from_proto(req) -> InferRequest:
    """``ModelInferRequest`` -> the transport-independent ``InferRequest`` (raw or typed contents)."""
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise ProtocolError(f"raw_input_contents has {len(raw)} entries for {len(req.inputs)} inputs; "
                            "give every input raw contents, or none")
    if not req.inputs:
        raise ProtocolError("the request has no inputs")
    inputs, dtypes = {}, {}
    for i, t in enumerate(req.inputs):
        if t.datatype not in DATATYPES:
            raise ProtocolError(f"input {t.name!r}: unknown datatype {t.datatype!r}")
        shape = [int(d) for d in t.shape]
        if any(d < 0 for d in shape):
            raise ProtocolError(f"input {t.name!r}: shape {shape} has a negative dimension")
        check_shape(t.name, shape)
        if t.name in inputs:
            raise ProtocolError(f"input {t.name!r} given twice")
        inputs[t.name] = tensor_from_bytes(t.name, shape, t.datatype, raw[i]) if raw else _typed_tensor(t.name, shape, t.datatype, t.contents)
        dtypes[t.name] = t.datatype
    outputs = [RequestedOutput(o.name, True) for o in req.outputs] or None
    return InferRequest(req.id or None, inputs, dtypes, outputs, True, _parameters(req.parameters))


def _raw(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


class TritonGrpcService(service_pb2_grpc.GRPCInferenceServiceServicer if _MISSING is None else object):
    """The servicer: each RPC is a thin translation to ``InferenceService`` and back."""

    def __init__(self, service: InferenceService):
        self.service = service

    async def _fail(self, context, exc: Exception):
        kind = self.service.failed(exc)
        if kind == "error":
            log.exception("inference failed")
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        await context.abort(_codes()[kind], msg if kind != "error" else f"{type(exc).__name__}: {exc}")

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.service.ready)

    async def ModelReady(self, request, context):
        try:
            self.service.check_model(request.name, request.version)
        except Exception as e:
            await self._fail(context, e)
        return service_pb2.ModelReadyResponse(ready=self.service.ready)

    async def ServerMetadata(self, request, context):
        return json_format.ParseDict(self.service.server_metadata(), service_pb2.ServerMetadataResponse())

    async def ModelMetadata(self, request, context):
        try:
            self.service.check_model(request.name, request.version)
            md = self.service.model_metadata(request.name)
        except Exception as e:
            await self._fail(context, e)
        return json_format.ParseDict(md, service_pb2.ModelMetadataResponse())

    async def ModelConfig(self, request, context):
        try:
            self.service.check_model(request.name, request.version)
            cfg = self.service.model_config(request.name)
        except Exception as e:
            await self._fail(context, e)
        return json_format.ParseDict({"config": cfg}, service_pb2.ModelConfigResponse())

    async def ModelStatistics(self, request, context):
        try:
            stats = self.service.statistics(request.name, request.version)
        except Exception as e:
            await self._fail(context, e)
        return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse())

    async def RepositoryIndex(self, request, context):
        models = self.service.repository_index()
        if request.ready:
            models = [m for m in models if m["state"] == "READY"]
        return json_format.ParseDict({"models": models}, service_pb2.RepositoryIndexResponse())

    async def ModelInfer(self, request, context):
        name = request.model_name
        try:
            self.service.check_model(name, request.model_version)
            req = infer_request_from_proto(request)
            remaining = context.time_remaining()
            deadline_ms = max(remaining, 0.0) * 1000 if remaining is not None else None
            outputs = await self.service.infer(name, req, deadline_ms=deadline_ms)
        except Exception as e:
            await self._fail(context, e)
        resp = service_pb2.ModelInferResponse(model_name=name, model_version=self.service.version, id=request.id)
        for o in req.outputs or [RequestedOutput(n, True) for n in outputs]:
            arr = outputs[o.name]
            resp.outputs.add(name=o.name, datatype=datatype_of(arr), shape=list(arr.shape))
            resp.raw_output_contents.append(_raw(arr))
        return resp


class _Undecodable:
    """What the request deserializer hands over when the bytes are not the method's protobuf message."""

    def __init__(self, error: Exception):
        self.error = error


def _safe_deserializer(message_cls):
    def deserialize(data: bytes):
        try:
            return message_cls.FromString(data)
        except Exception as e:  # google.protobuf.message.DecodeError, or upb's RecursionError-like limits
            return _Undecodable(e)

    return deserialize


def _guarded(method):
    async def call(request, context):
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid protobuf message ({request.error})")
        return await method(request, context)

    return call


def _unimplemented(name: str):
    async def call(request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not served by wherevit")

    return call


def _generic_handler(servicer: "TritonGrpcService"):
    """The service's method handlers built from its descriptor, as the generated ``add_..._to_server`` does,
    but with a deserializer that turns undecodable bytes into INVALID_ARGUMENT instead of INTERNAL, and
    UNIMPLEMENTED (not the generated stubs' exception) for the methods we do not serve."""
    desc = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    kinds = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    handlers = {}
    for m in desc.methods:
        req_cls, resp_cls = getattr(service_pb2, m.input_type.name), getattr(service_pb2, m.output_type.name)
        impl = getattr(servicer, m.name) if m.name in type(servicer).__dict__ else _unimplemented(m.name)
        streaming = m.client_streaming or m.server_streaming
        handlers[m.name] = kinds[(m.client_streaming, m.server_streaming)](
            impl if streaming else _guarded(impl),
            request_deserializer=req_cls.FromString if streaming else _safe_deserializer(req_cls),
            response_serializer=resp_cls.SerializeToString)
    return grpc.method_handlers_generic_handler(desc.full_name, handlers)


async def start_grpc(service: InferenceService, host: str, port: int):
    """Start the gRPC endpoint on the running event loop; returns the ``grpc.aio.Server`` (``stop(grace)`` it)."""
    require_grpc()
    limit = service.cfg.max_request_bytes
    # The 4 MiB default is less than a batch of 8 images at 224 px; answers can be larger than requests.
    # so_reuseport off: a second server on the same port must fail, not silently take half the traffic.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", -1),
                                      ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((_generic_handler(TritonGrpcService(service)),))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # newer grpcio raises instead of returning 0
        bound = 0
    if bound == 0:
        raise GrpcUnavailable(f"cannot bind the gRPC port {host}:{port} (in use? choose another --grpc-port)")
    await server.start()
    return server

