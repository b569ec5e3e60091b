"""``wherevit serve``: the KServe v2 / Open Inference Protocol HTTP endpoint (and, with
``--grpc-port``, the gRPC one) over one ``InferenceService``: one batcher, one queue, one set of
statistics for every client whatever its protocol.

Endpoints: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/<m>``,
``/v2/models/<m>/ready``, ``/v2/models/<m>/config`` (Triton's shape), ``/v2/models/<m>/stats`` and
``/v2/models/stats`` (Triton's statistics), ``POST /v2/repository/index``, ``POST
/v2/models/<m>/infer`` (JSON and binary tensor data), and ``GET /metrics`` (Prometheus). Every
error, unknown routes included, is ``{"error": "..."}`` with its status (a 405 keeps its ``Allow``
header, RFC 9110 15.5.6). Binds to 127.0.0.1 by default.

Status codes: 200; 400 for a request the server cannot honour (malformed JSON or tensors, wrong
inputs, an image refused from its header, JSON nested deeper than 1024, a body over
``--max-request-mb``); 404 unknown model, version or route; 405 wrong method; 503 queue full or
stopping; 504 deadline passed; 500 only for a failure of the server's own (a backend error), never
for a request's content.
"""

from __future__ import annotations

import errno
import logging
import socket

from aiohttp import web

from wherevit.base.errors import InvalidRequest, WherevitError
from wherevit.runtime.kserve import ProtocolError, encode_infer_response, parse_infer_request
from wherevit.runtime.model import Model
from wherevit.runtime.service import InferenceService, ModelNotFound, ServeConfig

__all__ = ["ServeConfig", "InferenceService", "ModelNotFound", "ServeError", "create_app", "serve"]

log = logging.getLogger("wherevit.serve")

_HTTP_STATUS = {"not_found": 404, "bad_request": 400, "unavailable": 503, "deadline": 504, "error": 500}


class ServeError(WherevitError, RuntimeError):
    """The server cannot start as asked (address in use, unknown host, no permission for the port)."""


def _error(status: int, msg: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": msg}, status=status, headers=headers)


def create_app(service: InferenceService) -> web.Application:
    limit = service.cfg.max_request_bytes

    @web.middleware
    async def errors(request: web.Request, handler):
        try:
            return await handler(request)
        except web.HTTPException as e:  # unknown route, wrong method, body too large: the same JSON shape
            if e.status < 400:
                raise
            allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None  # 405 must say what is allowed
            return _error(e.status, f"{e.reason}: {request.method} {request.path}", allow)
        except Exception as e:
            kind = service.failed(e)
            if kind == "error":  # a backend failure: this request fails, the server keeps serving
                log.exception("inference failed")
                return _error(500, f"{type(e).__name__}: {e}")
            return _error(_HTTP_STATUS[kind], e.args[0] if isinstance(e, KeyError) else str(e))

    async def server_meta(_):
        return web.json_response(service.server_metadata())

    async def live(_):
        return web.Response(status=200)

    async def ready(_):
        return web.Response(status=200 if service.ready else 400)

    def model_of(request: web.Request) -> str:
        name = request.match_info["model"]
        service.check_model(name, request.match_info.get("v", ""))
        return name

    async def model_ready(request):
        model_of(request)
        return web.Response(status=200 if service.ready else 400)

    async def model_meta(request):
        return web.json_response(service.model_metadata(model_of(request)))

    async def model_config(request):
        return web.json_response(service.model_config(model_of(request)))

    async def model_stats(request):
        return web.json_response(service.statistics(request.match_info.get("model", ""), request.match_info.get("v", "")))

    async def repository_index(_):
        return web.json_response(service.repository_index())

    async def infer(request: web.Request):
        name = model_of(request)
        if request.content_length is not None and request.content_length > limit:
            raise ProtocolError(f"request body of {request.content_length} bytes exceeds the {limit}-byte limit (--max-request-mb)")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:  # a chunked body without Content-Length: the same 400 as above
            raise ProtocolError(f"request body exceeds the {limit}-byte limit (--max-request-mb)") from None
        if len(body) > limit:
            raise ProtocolError(f"request body of {len(body)} bytes exceeds the {limit}-byte limit (--max-request-mb)")
        hl = request.headers.get("Inference-Header-Content-Length")
        try:
            header_len = int(hl) if hl is not None else None
        except ValueError:
            raise ProtocolError(f"Inference-Header-Content-Length {hl!r} is not an integer") from None
        req = parse_infer_request(body, header_len)
        outputs = await service.infer(name, req)
        payload, headers = encode_infer_response(name, service.version, req, outputs)
        return web.Response(body=payload, headers=headers)

    async def metrics(_):
        return web.Response(body=service.metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application(middlewares=[errors], client_max_size=limit)
    m = "/v2/models/{model}"
    app.add_routes([
        web.post(m + "/infer", infer),  # first: aiohttp tries dynamic routes in order, and this is the hot one
        web.get("/v2", server_meta), web.get("/v2/", server_meta),  # the OIP REST spec writes it /v2/
        web.get("/v2/health/live", live), web.get("/v2/health/ready", ready),
        web.get(m, model_meta), web.get(m + "/versions/{v}", model_meta),
        web.get(m + "/ready", model_ready), web.get(m + "/versions/{v}/ready", model_ready),
        web.get("/v2/models/stats", model_stats),  # all models' statistics (plain routes match before {model})
        web.get(m + "/config", model_config), web.get(m + "/versions/{v}/config", model_config),
        web.get(m + "/stats", model_stats), web.get(m + "/versions/{v}/stats", model_stats),
        web.post("/v2/repository/index", repository_index),
        web.post(m + "/versions/{v}/infer", infer),
        web.get("/metrics", metrics),
    ])

    grpc_server = []

    async def on_startup(_):
        await service.start()
        where = f"http://{service.cfg.host}:{service.cfg.port}"
        if service.cfg.grpc_port is not None:
            from wherevit.runtime.grpc_server import start_grpc

            grpc_server.append(await start_grpc(service, service.cfg.host, service.cfg.grpc_port))
            where += f" and grpc {service.cfg.host}:{service.cfg.grpc_port}"
        if service.notice:
            print(f"wherevit serve: {service.notice}", flush=True)
        print(f"wherevit serve: ready on {where} "
              f"(models {service.name!r}, {service.images_name!r}; backend {service.model.backend.name}; "
              f"max batch {service.cfg.batching.max_batch})", flush=True)

    async def on_shutdown(_):
        service.batcher.close()  # refuse new requests on both protocols at once
        if grpc_server:
            await grpc_server[0].stop(grace=30)  # in-flight RPCs finish (their batches still run)
        await service.stop()  # finish queued requests before connections close

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


def serve(artifact: str, cfg: ServeConfig, backend: str = "auto") -> None:
    """Open ``artifact`` and serve it until SIGINT/SIGTERM (graceful: queued requests complete)."""
    if cfg.grpc_port is not None:
        from wherevit.runtime.grpc_server import require_grpc

        require_grpc()  # before the model loads: a missing package is named at once
    model = Model(artifact, backend, max_image_pixels=cfg.max_image_pixels)
    if cfg.batching.max_batch > model.max_batch and not model.batch_dependent:
        raise InvalidRequest(f"--max-batch {cfg.batching.max_batch} exceeds the artifact's max batch {model.max_batch}")
    service = InferenceService(model, cfg)
    try:
        web.run_app(create_app(service), host=cfg.host, port=cfg.port, print=None, shutdown_timeout=30,
                    access_log=None)
    except OSError as e:  # from bind(), before any request was served: one line, not a traceback
        if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) or isinstance(e, socket.gaierror):
            hint = {errno.EADDRINUSE: "in use: choose another --port", errno.EACCES: "not permitted: ports below 1024 need root"}
            raise ServeError(f"cannot serve on {cfg.host}:{cfg.port}: {e.strerror or e}"
                             f"{' (' + hint[e.errno] + ')' if e.errno in hint else ''}") from None
        raise
    finally:
        model.close()
