"""The protocol-independent inference service behind ``wherevit serve`` (HTTP and gRPC alike).

Two models are served from one artifact and one batcher:

* ``<name>``         input ``images``      FP32 [-1, 3, H, W], preprocessed (what perf_analyzer sends)
* ``<name>_images``  input ``image_bytes`` BYTES [-1], encoded JPEG/PNG/WebP/BMP; the server decodes
                     and preprocesses them exactly as the sidecar says

Artifacts with several image inputs (relative pose: ``images_a``, ``images_b``) get one BYTES input per
image input (``image_bytes_a``, ``image_bytes_b``). Metadata, model config, statistics and the
repository index are plain dicts in Triton's JSON shape; the HTTP endpoint sends them as JSON and
the gRPC endpoint converts them to Triton's protobuf messages, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from wherevit import __version__
from wherevit.base.errors import InvalidRequest, WherevitError
from wherevit.base.image import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError
from wherevit.base.sidecar import default_model_name, triton_platform
from wherevit.runtime.backends import InputError
from wherevit.runtime.batching import (
    BatchingConfig,
    DeadlineExceeded,
    DynamicBatcher,
    QueueFull,
    ShuttingDown,
)
from wherevit.runtime.decoding import ImageBatchDecoder
from wherevit.runtime.kserve import InferRequest, ProtocolError, datatype_of, triton_type
from wherevit.runtime.metrics import ServerMetrics
from wherevit.runtime.model import Model, non_finite_count
from wherevit.runtime.stats import RequestTiming, StatsRegistry

__all__ = ["ServeConfig", "InferenceService", "ModelNotFound", "error_kind", "check_finite"]

@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None  # None: no gRPC endpoint
    name: str | None = None  # default: the artifact's model name
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    max_request_mb: float = 64.0
    warmup: bool = True
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS  # per encoded image, read from its header before decoding
    decode_workers: int = 2  # threads decoding images: decoded memory <= decode_workers x one image at the cap

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * (1 << 20))


class ModelNotFound(WherevitError, KeyError):
    """A request for a model this server does not serve (HTTP 404, gRPC NOT_FOUND)."""


def error_kind(exc: BaseException) -> str:
    """One classification for both protocols: not_found, bad_request, unavailable, deadline or error."""
    if isinstance(exc, ModelNotFound):
        return "not_found"
    if isinstance(exc, (ProtocolError, InputError, ImageDecodeError, InvalidRequest)):
        return "bad_request"
    if isinstance(exc, (QueueFull, ShuttingDown)):
        return "unavailable"
    if isinstance(exc, DeadlineExceeded):
        return "deadline"
    return "error"


def check_finite(x: np.ndarray, what: str) -> None:
    """Refuse NaN or infinity: a backend would answer with NaN features and no error."""
    bad = non_finite_count(x)
    if bad:
        raise ProtocolError(f"{what}: {bad} non-finite value(s) (NaN or infinity); inputs must be finite")


log = logging.getLogger("wherevit.serve")


class InferenceService:
    """Metadata, validation, statistics and batching for the served models, independent of the transport."""

    version = "1"

    def __init__(self, model: Model, cfg: ServeConfig):
        self.notice = None
        if model.batch_dependent and cfg.batching.max_batch > 1:
            # Requests from different clients must not change each other's results.
            cfg = dataclasses.replace(cfg, batching=dataclasses.replace(cfg.batching, max_batch=1))
            self.notice = (f"{model.artifact.name} is dynamically quantised (activation scales span the batch): "
                           "serving it one image at a time (max batch 1), never batched with other requests")
            log.warning(self.notice)
        self.model, self.cfg = model, cfg
        base = cfg.name or default_model_name(model.meta)  # the same default a Triton repository uses
        self.name, self.images_name = base, f"{base}_images"
        self.metrics = ServerMetrics(cfg.batching.max_batch)
        self.stats = StatsRegistry([self.name, self.images_name], self.version)
        self.batcher = DynamicBatcher(model.run_outputs, cfg.batching, self.metrics)
        self.decoder = ImageBatchDecoder(model.preprocess, cfg.max_image_pixels, cfg.decode_workers)
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
        self.decoder.close()

    def failed(self, exc: BaseException) -> str:
        """Count a failed request (Prometheus outcome) and return its kind (see ``error_kind``)."""
        kind = error_kind(exc)
        if kind != "not_found":
            self.metrics.request(kind)
        return kind

    # -- metadata ---------------------------------------------------------------------------
    @property
    def model_names(self) -> list[str]:
        return [self.name, self.images_name]

    def check_model(self, name: str, version: str = "") -> None:
        if name not in self.model_names:
            raise ModelNotFound(f"unknown model {name!r}; this server has {self.name!r} and {self.images_name!r}")
        if version and version != self.version:
            raise ModelNotFound(f"model {name!r} has no version {version!r}; it has version {self.version!r}")

    def _io(self, name: str) -> tuple[list[dict], list[dict]]:
        outs = [{"name": o.name, "datatype": datatype_of(np.empty(0, o.dtype)), "shape": [int(d) for d in o.shape]}
                for o in self.model.meta.outputs]
        if name == self.images_name:
            ins = [{"name": self.bytes_names[n], "datatype": "BYTES", "shape": [-1]} for n in self.model.input_names]
        else:
            ins = [{"name": n, "datatype": "FP32", "shape": [-1, *self.input_shape]} for n in self.model.input_names]
        return ins, outs

    def server_metadata(self) -> dict:
        return {"name": "wherevit", "version": __version__, "extensions": ["binary_tensor_data", "model_configuration", "statistics",
                                                                          "model_repository"]}

    def model_metadata(self, name: str) -> dict:
        self.check_model(name)
        ins, outs = self._io(name)
        return {"name": name, "versions": [self.version], "platform": self.platform, "inputs": ins, "outputs": outs}

    @property
    def platform(self) -> str:
        """Triton's platform for the artifact's kind; empty where Triton has none (a .pt2), as Triton
        reports backend-defined models (the config's ``backend`` names the wherevit backend)."""
        return triton_platform(self.model.meta.kind) or ""

    def model_config(self, name: str) -> dict:
        """Triton's model-config JSON (dims exclude the batch dimension); parses as ``model_config_pb2.ModelConfig``."""
        self.check_model(name)
        ins, outs = self._io(name)
        conv = lambda t: {"name": t["name"], "data_type": triton_type(t["datatype"]), "dims": t["shape"][1:] or [1]}
        b = self.cfg.batching
        return {
            "name": name,
            "platform": self.platform,
            "backend": self.model.backend.name,
            "max_batch_size": b.max_batch,
            "input": [conv(t) for t in ins],
            "output": [conv(t) for t in outs],
            "dynamic_batching": {"max_queue_delay_microseconds": int(b.max_wait_ms * 1000),
                                 "default_queue_policy": {"max_queue_size": b.max_queue,
                                                          "default_timeout_microseconds": int(b.timeout_ms * 1000)}},
            "parameters": {"preprocess": {"string_value": json.dumps(self.model.meta.preprocess, sort_keys=True)}},
        }

    def statistics(self, name: str = "", version: str = "") -> dict:
        """Triton's statistics JSON for one model, or every model when ``name`` is empty."""
        if name:
            self.check_model(name, version)
        return self.stats.report(name or None)

    def repository_index(self) -> list[dict]:
        """Triton's repository index: every served model, its version and state."""
        state = "READY" if self.ready else "UNAVAILABLE"
        return [{"name": n, "version": self.version, "state": state, "reason": ""} for n in self.model_names]

    # -- inference --------------------------------------------------------------------------
    def _check_rows(self, wire: str, rows: int) -> None:
        limit = self.cfg.batching.max_batch
        if rows < 1:
            raise ProtocolError(f"input {wire!r}: no images (batch dimension 0)")
        if rows > limit:
            raise ProtocolError(f"input {wire!r}: {rows} images in one request, more than max_batch_size {limit}; "
                                "split the request (the server batches requests together)")

    def _check_images(self, name: str, req: InferRequest) -> None:
        """Inputs, datatypes, counts and every image header (format, pixel cap): cheap, before any decoding."""
        wires = [self.bytes_names[n] for n in self.model.input_names]
        if set(req.inputs) != set(wires):
            raise ProtocolError(f"model {name!r} takes input(s) {sorted(wires)}, got {sorted(req.inputs)}")
        for wire in wires:
            if req.datatypes[wire] != "BYTES":
                raise ProtocolError(f"input {wire!r} must be a BYTES tensor of encoded images, got {req.datatypes[wire]}")
            self._check_rows(wire, len(req.inputs[wire]))
            self.decoder.check(req.inputs[wire], wire)

    def _decoded_batch(self, wire: str, req: InferRequest) -> np.ndarray:
        if req.datatypes[wire] != "BYTES":  # (checked by _check_images too; cheap enough to keep _feeds self-contained)
            raise ProtocolError(f"input {wire!r} must be a BYTES tensor of encoded images, got {req.datatypes[wire]}")
        self._check_rows(wire, len(req.inputs[wire]))
        return self.decoder.decode(req.inputs[wire], wire)

    def _tensor(self, wire: str, req: InferRequest) -> np.ndarray:
        x = req.inputs[wire]
        if req.datatypes[wire] != "FP32":
            raise ProtocolError(f"input {wire!r}: datatype {req.datatypes[wire]}, expected FP32")
        expected = f"[-1, {', '.join(map(str, self.input_shape))}]"
        if x.ndim != 1 + len(self.input_shape) or any(d > 0 and d != s for d, s in zip(self.input_shape, x.shape[1:])):
            raise ProtocolError(f"input {wire!r}: shape {list(x.shape)}, expected {expected}")
        self._check_rows(wire, x.shape[0])
        if min(x.shape[1:]) < 1:
            raise ProtocolError(f"input {wire!r}: shape {list(x.shape)} has an empty dimension, expected {expected}")
        check_finite(x, f"input {wire!r}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _feeds(self, name: str, req: InferRequest) -> dict[str, np.ndarray]:
        """Validated, preprocessed float32 batches by artifact input name."""
        images = name == self.images_name
        want = {self.bytes_names[n] if images else n: n for n in self.model.input_names}
        if set(req.inputs) != set(want):
            raise ProtocolError(f"model {name!r} takes input(s) {sorted(want)}, got {sorted(req.inputs)}")
        feeds = {art: (self._decoded_batch if images else self._tensor)(wire, req) for wire, art in want.items()}
        if len({v.shape[0] for v in feeds.values()}) != 1:
            raise ProtocolError(f"inputs have different batch sizes: {[list(v.shape) for v in feeds.values()]}")
        return feeds

    async def infer(self, name: str, req: InferRequest, deadline_ms: float | None = None) -> dict[str, np.ndarray]:
        """Run one request through the shared batcher; ``deadline_ms`` is the transport's own deadline, if any.

        Triton's per-request ``timeout`` parameter (microseconds) also sets a deadline; the earlier wins.
        """
        self.check_model(name)
        t0 = time.monotonic()
        try:
            if req.outputs is not None:
                unknown = [o.name for o in req.outputs if o.name not in self.model.output_names]
                if unknown:
                    raise ProtocolError(f"unknown output(s) {unknown}; outputs are {self.model.output_names}")
            if name == self.images_name:  # decoding is CPU work: off the event loop, on the bounded decode pool
                self._check_images(name, req)
                x = await self.decoder.run(self._feeds, name, req)
            else:
                x = self._feeds(name, req)
            timeout_us = req.parameters.get("timeout")
            limits = [deadline_ms] if deadline_ms is not None else []
            if isinstance(timeout_us, (int, float)) and not isinstance(timeout_us, bool) and timeout_us > 0:
                limits.append(timeout_us / 1000)
            timing = RequestTiming()
            out = await self.batcher.submit(x, timeout_ms=min(limits) if limits else None, timing=timing)
        except Exception:
            self.stats.failure(name, time.monotonic() - t0)
            raise
        self.stats.success(name, next(iter(x.values())).shape[0], time.monotonic() - t0, timing)
        self.metrics.request("ok")
        return out
