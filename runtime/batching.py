"""Dynamic batching (asyncio), independent of HTTP: the contract a model server needs.

Requests (each a batch of one or more preprocessed images) wait in a bounded queue; the batcher
takes the first, then keeps adding requests until ``max_batch`` images or ``max_wait_ms`` after the
first arrived, and runs them as one batch on a single worker thread (a backend runs one batch at a
time; the next batch fills while the current one computes). Every request gets exactly its own
rows back, or its own error: a full queue is refused at once (``QueueFull``), a request past its
deadline is answered with ``DeadlineExceeded`` instead of being run, and ``stop()`` finishes what
is queued before returning.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from wherevit.base.errors import InvalidRequest
from wherevit.runtime.stats import RequestTiming

__all__ = ["BatchingConfig", "DynamicBatcher", "QueueFull", "DeadlineExceeded", "ShuttingDown", "BatchObserver"]


class QueueFull(RuntimeError):
    """The queue is at capacity; the client should retry later (HTTP 503)."""


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed before it could run."""


class ShuttingDown(RuntimeError):
    """The server is stopping and takes no new requests."""


@dataclass(frozen=True)
class BatchingConfig:
    max_batch: int = 64  # images per executed batch
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for company
    max_queue: int = 256  # requests waiting; more are refused with QueueFull
    timeout_ms: float = 30_000.0  # default deadline for a request, from arrival

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_wait_ms < 0 or self.timeout_ms <= 0:
            raise InvalidRequest(f"invalid batching config {self}")


class BatchObserver(Protocol):
    def queued(self, depth: int) -> None: ...
    def batch_done(self, size: int, waits_s: list[float], compute_s: float) -> None: ...
    def rejected(self, reason: str) -> None: ...




def _rows(x) -> int:
    return (next(iter(x.values())) if isinstance(x, dict) else x).shape[0]


def _concat(xs: list):
    if isinstance(xs[0], dict):
        return {k: np.concatenate([x[k] for x in xs]) for k in xs[0]}
    return np.concatenate(xs)


@dataclass
class _Item:
    x: "np.ndarray | dict[str, np.ndarray]"
    deadline: float
    arrived: float
    future: asyncio.Future = field(repr=False)
    timing: "RequestTiming | None" = None


class DynamicBatcher:
    def __init__(self, execute: Callable[..., dict[str, np.ndarray]], cfg: BatchingConfig,
                 observer: BatchObserver | None = None):
        self.execute, self.cfg, self.observer = execute, cfg, observer
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wherevit-infer")
        self._accepting = False
        self._carry: _Item | None = None  # a request that did not fit the previous batch
        self._batches = 0  # executions so far; ids let statistics count a shared batch once per model

    @property
    def depth(self) -> int:
        return (self._queue.qsize() if self._queue else 0) + (self._carry is not None)

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.cfg.max_queue)
        self._accepting = True
        self._task = asyncio.create_task(self._loop(), name="wherevit-batcher")

    async def run_direct(self, x) -> dict[str, np.ndarray]:
        """Run one batch on the worker thread, bypassing the queue (used for warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.execute, x)

    async def submit(self, x, timeout_ms: float | None = None, timing: RequestTiming | None = None) -> dict[str, np.ndarray]:
        """Queue ``x`` -- an (N, ...) array, or a dict of them sharing N -- and wait for its N rows of every output.

        ``timing``, if given, receives the request's queue wait, its batch's compute time, size and id.
        """
        if not self._accepting:
            raise ShuttingDown("server is shutting down")
        now = time.monotonic()
        item = _Item(x, now + (timeout_ms or self.cfg.timeout_ms) / 1000.0, now, asyncio.get_running_loop().create_future(), timing)
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            if self.observer:
                self.observer.rejected("queue_full")
            raise QueueFull(f"queue full ({self.cfg.max_queue} requests waiting); retry later") from None
        if self.observer:
            self.observer.queued(self.depth)
        return await item.future

    def close(self) -> None:
        """Refuse new requests from now on (``ShuttingDown``); what is queued still runs."""
        self._accepting = False

    async def stop(self) -> None:
        """Refuse new requests, finish every queued one, then stop the worker."""
        self._accepting = False
        if self._task is not None:
            await self._queue.put(None)  # sentinel: drain what is ahead of it, then exit
            await self._task
            self._task = None
        self._pool.shutdown(wait=True)

    async def _next(self, timeout: float | None) -> _Item | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self._queue.get()
        try:  # under load the next request is already queued: skip wait_for's task and timer
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return await asyncio.wait_for(self._queue.get(), timeout)

    async def _loop(self) -> None:
        stopping = False
        while not stopping or self._carry is not None:
            first = await self._next(None)
            if first is None:
                stopping = True
                continue
            batch, n = [first], _rows(first.x)
            close_at = first.arrived + self.cfg.max_wait_ms / 1000.0
            while n < self.cfg.max_batch and not stopping:
                remaining = close_at - time.monotonic()
                try:
                    item = await self._next(max(remaining, 0)) if remaining > 0 else self._queue.get_nowait()
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if item is None:
                    stopping = True
                    break
                if n + _rows(item.x) > self.cfg.max_batch:
                    self._carry = item  # first in line for the next batch
                    break
                batch.append(item)
                n += _rows(item.x)
            await self._run(batch)

    async def _run(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        live = []
        for it in batch:
            if it.future.cancelled():
                continue  # client went away
            if now > it.deadline:
                it.future.set_exception(DeadlineExceeded(
                    f"request waited {1000 * (now - it.arrived):.0f} ms, past its deadline of {1000 * (it.deadline - it.arrived):.0f} ms"))
                if self.observer:
                    self.observer.rejected("deadline")
            else:
                live.append(it)
        if not live:
            return
        x = live[0].x if len(live) == 1 else _concat([it.x for it in live])
        t0 = time.monotonic()
        try:
            out = await asyncio.get_running_loop().run_in_executor(self._pool, self.execute, x)
        except Exception as e:  # the whole batch failed: every request gets the error
            for it in live:
                if not it.future.done():
                    it.future.set_exception(e)
            return
        compute = time.monotonic() - t0
        self._batches += 1
        start, size = 0, _rows(x)
        for it in live:
            stop = start + _rows(it.x)
            if it.timing is not None:
                it.timing.queue_s, it.timing.compute_s = t0 - it.arrived, compute
                it.timing.batch_size, it.timing.batch_id = size, self._batches
            if not it.future.done():
                it.future.set_result({k: v[start:stop] for k, v in out.items()})
            start = stop
        if self.observer:
            self.observer.batch_done(size, [t0 - it.arrived for it in live], compute)
            self.observer.queued(self.depth)
