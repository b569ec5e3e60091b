"""Prometheus metrics for the server: queue depth, batch sizes, queue wait and compute time."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

__all__ = ["ServerMetrics"]

_TIME_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class _Quantiles:
    """p50/p90/p99 over the last ``window`` observations, exported as gauges (a Summary with quantiles)."""

    def __init__(self, name: str, doc: str, window: int = 2048):
        self.name, self.doc = name, doc
        self.values: deque[float] = deque(maxlen=window)
        self.lock = threading.Lock()

    def observe(self, v: float) -> None:
        with self.lock:
            self.values.append(v)

    def collect(self):
        g = GaugeMetricFamily(self.name, self.doc, labels=["quantile"])
        with self.lock:
            vals = np.array(self.values)
        if vals.size:
            for q in (0.5, 0.9, 0.99):
                g.add_metric([str(q)], float(np.quantile(vals, q)))
        yield g


class ServerMetrics:
    """Implements ``BatchObserver`` and counts requests; ``render()`` gives the Prometheus text format."""

    def __init__(self, max_batch: int):
        self.registry = r = CollectorRegistry()
        self.queue_depth = Gauge("wherevit_queue_depth", "Requests waiting to be batched", registry=r)
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, max_batch})
        self.batch_size = Histogram("wherevit_batch_size", "Images per executed batch", buckets=buckets, registry=r)
        self.queue_wait = Histogram("wherevit_queue_wait_seconds", "Time from arrival to execution", buckets=_TIME_BUCKETS, registry=r)
        self.compute = Histogram("wherevit_compute_seconds", "Backend time per executed batch", buckets=_TIME_BUCKETS, registry=r)
        self.requests = Counter("wherevit_requests", "Inference requests by outcome", ["status"], registry=r)
        self.rejections = Counter("wherevit_rejected", "Requests refused or expired", ["reason"], registry=r)
        self.wait_q = _Quantiles("wherevit_queue_wait_seconds_quantile", "Queue wait percentiles over recent requests")
        self.compute_q = _Quantiles("wherevit_compute_seconds_quantile", "Compute time percentiles over recent batches")
        r.register(self.wait_q)
        r.register(self.compute_q)

    def queued(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def batch_done(self, size: int, waits_s: list[float], compute_s: float) -> None:
        self.batch_size.observe(size)
        self.compute.observe(compute_s)
        self.compute_q.observe(compute_s)
        for w in waits_s:
            self.queue_wait.observe(w)
            self.wait_q.observe(w)

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def request(self, status: str) -> None:
        self.requests.labels(status).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
