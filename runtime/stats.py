"""Triton-style per-model inference statistics, shared by the HTTP and gRPC endpoints.

``/v2/models/<m>/stats`` and gRPC ``ModelStatistics`` answer from the same counters, in Triton's
shape (``inference_count``, ``execution_count``, ``inference_stats.{success,fail,queue,
compute_infer}`` as ``{count, ns}``, and ``batch_stats`` per executed batch size), so
perf_analyzer and Triton dashboards read them unchanged. Two models served from one batcher
share executions: a batch appears in the ``batch_stats`` of every model that had rows in it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

__all__ = ["RequestTiming", "ModelStats", "StatsRegistry"]


@dataclass
class RequestTiming:
    """What the batcher reports about one request it ran (filled in by ``DynamicBatcher.submit``)."""

    queue_s: float = 0.0  # arrival -> start of the batch's execution
    compute_s: float = 0.0  # the whole batch's backend time
    batch_size: int = 0  # rows in the executed batch (all requests together)
    batch_id: int = -1  # which execution; a model counts each execution once


def _duration() -> dict:
    return {"count": 0, "ns": 0}


@dataclass
class ModelStats:
    name: str
    version: str
    inference_count: int = 0  # images (rows) answered successfully
    execution_count: int = 0
    last_inference_ms: int = 0
    success: dict = field(default_factory=_duration)
    fail: dict = field(default_factory=_duration)
    queue: dict = field(default_factory=_duration)
    compute_infer: dict = field(default_factory=_duration)
    batches: dict[int, dict] = field(default_factory=dict)  # batch size -> {count, ns}
    _seen: set[int] = field(default_factory=set, repr=False)  # batch ids already counted

    def to_dict(self) -> dict:
        zero = _duration()
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": dict(self.success), "fail": dict(self.fail), "queue": dict(self.queue),
                "compute_input": dict(zero), "compute_infer": dict(self.compute_infer), "compute_output": dict(zero),
                "cache_hit": dict(zero), "cache_miss": dict(zero),
            },
            "batch_stats": [{"batch_size": b, "compute_input": dict(zero), "compute_infer": dict(v), "compute_output": dict(zero)}
                            for b, v in sorted(self.batches.items())],
        }


def _add(d: dict, seconds: float) -> None:
    d["count"] += 1
    d["ns"] += int(seconds * 1e9)


class StatsRegistry:
    """Counters for the served models; thread-safe (the event loop writes, any thread may read)."""

    def __init__(self, names: list[str], version: str):
        self._models = {n: ModelStats(n, version) for n in names}
        self._lock = threading.Lock()

    def success(self, name: str, rows: int, total_s: float, timing: RequestTiming) -> None:
        with self._lock:
            m = self._models[name]
            m.inference_count += rows
            m.last_inference_ms = int(time.time() * 1000)
            _add(m.success, total_s)
            _add(m.queue, timing.queue_s)
            _add(m.compute_infer, timing.compute_s)
            if timing.batch_id not in m._seen:  # several requests of one model in one batch: one execution
                m.execution_count += 1
                _add(m.batches.setdefault(timing.batch_size, _duration()), timing.compute_s)
                m._seen.add(timing.batch_id)
                if len(m._seen) > 1024:  # ids grow; answers of an old batch do not arrive after 512 newer ones
                    m._seen = {b for b in m._seen if b > timing.batch_id - 512}

    def failure(self, name: str, total_s: float) -> None:
        with self._lock:
            _add(self._models[name].fail, total_s)

    def report(self, name: str | None = None) -> dict:
        """Triton's statistics JSON: ``{"model_stats": [...]}`` for one model or all."""
        with self._lock:
            models = [self._models[name]] if name else list(self._models.values())
            return {"model_stats": [m.to_dict() for m in models]}
