"""``wherevit serve``: a KServe v2 / Open Inference Protocol HTTP server with dynamic batching.

Two models are served from one artifact and one batcher:

* ``<name>``         input ``images``      FP32 [-1, 3, H, W], preprocessed (what perf_analyzer sends)
* ``<name>_images``  input ``image_bytes`` BYTES [-1], encoded JPEG/PNG/WebP/BMP; the server decodes
                     and preprocesses them exactly as the sidecar says

Artifacts with several image inputs (relative pose: ``images_a``, ``images_b``) get one BYTES input per
image input (``image_bytes_a``, ``image_bytes_b``). Outputs are whatever the sidecar lists: features,
a depth map, segmentation logits and labels, or a pose.

Endpoints: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/<m>``,
``/v2/models/<m>/ready``, ``/v2/models/<m>/config`` (Triton's shape), ``POST /v2/models/<m>/infer``
(JSON and binary tensor data), and ``GET /metrics`` (Prometheus). Binds to 127.0.0.1 by default.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web

from wherevit import __version__
from wherevit.base.errors import InvalidRequest
from wherevit.base.image import ImageDecodeError, decode_image
from wherevit.runtime.backends import InputError
from wherevit.runtime.batching import (
    BatchingConfig,
    DeadlineExceeded,
    DynamicBatcher,
    QueueFull,
    ShuttingDown,
)
from wherevit.runtime.kserve import (
    InferRequest,
    ProtocolError,
    datatype_of,
    encode_infer_response,
    parse_infer_request,
    triton_type,
)
from wherevit.runtime.metrics import ServerMetrics
from wherevit.runtime.model import Model

__all__ = ["ServeConfig", "InferenceService", "create_app", "serve"]

log = logging.getLogger("wherevit.serve")



@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    name: str | None = None  # default: the artifact's model name
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    max_request_mb: float = 64.0
    warmup: bool = True


class ModelNotFound(KeyError):
    pass


class InferenceService:
    """Protocol-level service (metadata, validation, batching) independent of the HTTP framework."""

    version = "1"

    def __init__(self, model: Model, cfg: ServeConfig):
        self.model, self.cfg = model, cfg
        base = cfg.name or re.sub(r"[^A-Za-z0-9_.-]", "_", str(model.meta.model.get("model") or "wherevit"))
        self.name, self.images_name = base, f"{base}_images"
        self.metrics = ServerMetrics(cfg.batching.max_batch)
        self.batcher = DynamicBatcher(model.run_outputs, cfg.batching, self.metrics)
        self.ready = False
        self.input_shape = [int(d) for d in model.meta.inputs[0].shape[1:]]
        self.bytes_names = {n: n.replace("images", "image_bytes", 1) for n in model.input_names}

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        await self.batcher.start()
        if self.cfg.warmup:  # first-call allocation and kernel selection happen here, not on a client
            shape = [d if d > 0 else s for d, s in zip(self.input_shape, [3, *self.model.preprocess.size])]
            for b in sorted({int(self.model.batch.opt), min(self.cfg.batching.max_batch, self.model.max_batch)}):
                rng = np.random.default_rng(0)
                await self.batcher.run_direct({n: rng.standard_normal((b, *shape)).astype(np.float32) for n in self.model.input_names})
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()

    # -- metadata ---------------------------------------------------------------------------
    def _check_model(self, name: str) -> None:
        if name not in (self.name, self.images_name):
            raise ModelNotFound(f"unknown model {name!r}; this server has {self.name!r} and {self.images_name!r}")

    def _io(self, name: str) -> tuple[list[dict], list[dict]]:
        outs = [{"name": o.name, "datatype": datatype_of(np.empty(0, o.dtype)), "shape": [int(d) for d in o.shape]}
                for o in self.model.meta.outputs]
        if name == self.images_name:
            ins = [{"name": self.bytes_names[n], "datatype": "BYTES", "shape": [-1]} for n in self.model.input_names]
        else:
            ins = [{"name": n, "datatype": "FP32", "shape": [-1, *self.input_shape]} for n in self.model.input_names]
        return ins, outs

    def server_metadata(self) -> dict:
        return {"name": "wherevit", "version": __version__, "extensions": ["binary_tensor_data", "model_configuration", "statistics"]}

    def model_metadata(self, name: str) -> dict:
        self._check_model(name)
        ins, outs = self._io(name)
        platform = "tensorrt_plan" if self.model.meta.kind == "engine" else "onnxruntime_onnx"
        return {"name": name, "versions": [self.version], "platform": platform, "inputs": ins, "outputs": outs}

    def model_config(self, name: str) -> dict:
        """Triton's model-config JSON: dims exclude the batch dimension."""
        self._check_model(name)
        ins, outs = self._io(name)
        conv = lambda t: {"name": t["name"], "data_type": triton_type(t["datatype"]), "dims": t["shape"][1:] or [1]}
        b = self.cfg.batching
        return {
            "name": name,
            "platform": self.model_metadata(name)["platform"],
            "backend": self.model.backend.name,
            "max_batch_size": b.max_batch,
            "input": [conv(t) for t in ins],
            "output": [conv(t) for t in outs],
            "dynamic_batching": {"max_queue_delay_microseconds": int(b.max_wait_ms * 1000),
                                 "default_queue_policy": {"max_queue_size": b.max_queue,
                                                          "default_timeout_microseconds": int(b.timeout_ms * 1000)}},
            "parameters": {"preprocess": {"string_value": json.dumps(self.model.meta.preprocess, sort_keys=True)}},
        }

    # -- inference --------------------------------------------------------------------------
    def _tensor_batch(self, name: str, req: InferRequest) -> dict[str, np.ndarray]:
        """Validated, preprocessed float32 batches by artifact input name."""
        images = name == self.images_name
        want = {self.bytes_names[n] if images else n: n for n in self.model.input_names}
        if set(req.inputs) != set(want):
            raise ProtocolError(f"model {name!r} takes input(s) {sorted(want)}, got {sorted(req.inputs)}")
        feeds = {}
        for wire, art in want.items():
            x = req.inputs[wire]
            if images:
                if req.datatypes[wire] != "BYTES" or len(x) == 0:
                    raise ProtocolError(f"input {wire!r} must be a non-empty BYTES tensor of encoded images")
                feeds[art] = self.model.preprocess([decode_image(b, what=f"{wire}[{i}]") for i, b in enumerate(x)])
                continue
            if req.datatypes[wire] != "FP32":
                raise ProtocolError(f"input {wire!r}: datatype {req.datatypes[wire]}, expected FP32")
            if x.ndim != 1 + len(self.input_shape) or x.shape[0] < 1 or any(
                    d > 0 and d != s for d, s in zip(self.input_shape, x.shape[1:])):
                raise ProtocolError(f"input {wire!r}: shape {list(x.shape)}, expected [-1, {', '.join(map(str, self.input_shape))}]")
            feeds[art] = np.ascontiguousarray(x, dtype=np.float32)
        if len({v.shape[0] for v in feeds.values()}) != 1:
            raise ProtocolError(f"inputs have different batch sizes: {[list(v.shape) for v in feeds.values()]}")
        return feeds

    async def infer(self, name: str, req: InferRequest) -> dict[str, np.ndarray]:
        self._check_model(name)
        if req.outputs is not None:
            unknown = [o.name for o in req.outputs if o.name not in self.model.output_names]
            if unknown:
                raise ProtocolError(f"unknown output(s) {unknown}; outputs are {self.model.output_names}")
        if name == self.images_name:  # decoding is CPU work: keep it off the event loop
            x = await asyncio.get_running_loop().run_in_executor(None, self._tensor_batch, name, req)
        else:
            x = self._tensor_batch(name, req)
        timeout_us = req.parameters.get("timeout")  # Triton's per-request timeout, microseconds
        return await self.batcher.submit(x, timeout_ms=timeout_us / 1000 if isinstance(timeout_us, (int, float)) and timeout_us > 0 else None)


def _error(status: int, msg: str) -> web.Response:
    return web.json_response({"error": msg}, status=status)


def create_app(service: InferenceService) -> web.Application:
    limit = int(service.cfg.max_request_mb * (1 << 20))

    @web.middleware
    async def errors(request: web.Request, handler):
        try:
            return await handler(request)
        except ModelNotFound as e:
            return _error(404, e.args[0])
        except (ProtocolError, InputError, ImageDecodeError) as e:
            service.metrics.request("bad_request")
            return _error(400, str(e))
        except (QueueFull, ShuttingDown) as e:
            service.metrics.request("unavailable")
            return _error(503, str(e))
        except DeadlineExceeded as e:
            service.metrics.request("deadline")
            return _error(504, str(e))
        except web.HTTPException:
            raise
        except Exception as e:  # a backend failure: this request fails, the server keeps serving
            log.exception("inference failed")
            service.metrics.request("error")
            return _error(500, f"{type(e).__name__}: {e}")

    async def server_meta(_):
        return web.json_response(service.server_metadata())

    async def live(_):
        return web.Response(status=200)

    async def ready(_):
        return web.Response(status=200 if service.ready else 400)

    async def model_ready(request):
        service._check_model(request.match_info["model"])
        return web.Response(status=200 if service.ready else 400)

    async def model_meta(request):
        return web.json_response(service.model_metadata(request.match_info["model"]))

    async def model_config(request):
        return web.json_response(service.model_config(request.match_info["model"]))

    async def model_stats(request):
        service._check_model(request.match_info["model"])
        return web.json_response({"model_stats": [{"name": request.match_info["model"], "version": service.version}]})

    async def infer(request: web.Request):
        name = request.match_info["model"]
        service._check_model(name)
        if request.content_length is not None and request.content_length > limit:
            raise ProtocolError(f"request body of {request.content_length} bytes exceeds the {limit}-byte limit (--max-request-mb)")
        body = await request.read()
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
        service.metrics.request("ok")
        return web.Response(body=payload, headers=headers)

    async def metrics(_):
        return web.Response(body=service.metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application(middlewares=[errors], client_max_size=limit + (1 << 20))
    m = "/v2/models/{model}"
    app.add_routes([
        web.get("/v2", server_meta), web.get("/v2/health/live", live), web.get("/v2/health/ready", ready),
        web.get(m, model_meta), web.get(m + "/versions/{v}", model_meta),
        web.get(m + "/ready", model_ready), web.get(m + "/versions/{v}/ready", model_ready),
        web.get(m + "/config", model_config), web.get(m + "/stats", model_stats),
        web.post(m + "/infer", infer), web.post(m + "/versions/{v}/infer", infer),
        web.get("/metrics", metrics),
    ])

    async def on_startup(_):
        await service.start()
        print(f"wherevit serve: ready on http://{service.cfg.host}:{service.cfg.port} "
              f"(models {service.name!r}, {service.images_name!r}; backend {service.model.backend.name})", flush=True)

    async def on_shutdown(_):
        await service.stop()  # finish queued requests before connections close

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


def serve(artifact: str, cfg: ServeConfig, backend: str = "auto") -> None:
    """Open ``artifact`` and serve it until SIGINT/SIGTERM (graceful: queued requests complete)."""
    model = Model(artifact, backend)
    if cfg.batching.max_batch > model.max_batch:
        raise InvalidRequest(f"--max-batch {cfg.batching.max_batch} exceeds the artifact's max batch {model.max_batch}")
    service = InferenceService(model, cfg)
    try:
        web.run_app(create_app(service), host=cfg.host, port=cfg.port, print=None, shutdown_timeout=30,
                    access_log=None)
    finally:
        model.close()
