"""The dynamic batcher alone (no HTTP): order, grouping, back-pressure, deadlines, draining."""

import asyncio
import threading
import time

import numpy as np
import pytest

from wherevit.runtime.batching import BatchingConfig, DeadlineExceeded, DynamicBatcher, QueueFull, ShuttingDown


class Recorder:
    def __init__(self, delay=0.0):
        self.batches, self.delay = [], delay

    def __call__(self, x):
        self.batches.append(x.shape[0])
        time.sleep(self.delay)
        return {"y": x * 2, "first": x[:, :1]}


def run(coro):
    return asyncio.run(coro)


def test_every_request_gets_its_own_rows_and_batches_form():
    async def main():
        ex = Recorder(delay=0.01)
        b = DynamicBatcher(ex, BatchingConfig(max_batch=8, max_wait_ms=20, max_queue=100))
        await b.start()
        xs = [np.full((1 + i % 3, 2), i, np.float32) for i in range(40)]
        outs = await asyncio.gather(*(b.submit(x) for x in xs))
        await b.stop()
        return ex, xs, outs

    ex, xs, outs = run(main())
    for x, o in zip(xs, outs):
        np.testing.assert_array_equal(o["y"], x * 2)
    assert sum(ex.batches) == sum(x.shape[0] for x in xs)
    assert max(ex.batches) > 1 and max(ex.batches) <= 8


def test_full_queue_refuses_at_once():
    async def main():
        gate = threading.Event()
        b = DynamicBatcher(lambda x: (gate.wait(5), {"y": x})[1], BatchingConfig(max_batch=1, max_wait_ms=0, max_queue=2))
        await b.start()
        tasks = [asyncio.create_task(b.submit(np.zeros((1, 1), np.float32))) for _ in range(6)]
        await asyncio.sleep(0.1)  # one request is executing (blocked), the queue holds what fits
        while b._queue.qsize() < 2:
            tasks.append(asyncio.create_task(b.submit(np.zeros((1, 1), np.float32))))
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(QueueFull):
            await b.submit(np.zeros((1, 1), np.float32))
        refused_in = time.monotonic() - t0
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await b.stop()
        return refused_in, results

    refused_in, results = run(main())
    assert refused_in < 0.05
    ok = [r for r in results if isinstance(r, dict)]
    full = [r for r in results if isinstance(r, QueueFull)]
    assert len(ok) + len(full) == len(results) and len(ok) == 3 and full  # 1 executing + 2 queued


def test_deadline_passed_requests_get_an_error_not_silence():
    async def main():
        b = DynamicBatcher(lambda x: (time.sleep(0.2), {"y": x})[1], BatchingConfig(max_batch=1, max_wait_ms=0, max_queue=10))
        await b.start()
        first = asyncio.create_task(b.submit(np.zeros((1, 1), np.float32)))
        await asyncio.sleep(0.01)
        late = asyncio.create_task(b.submit(np.zeros((1, 1), np.float32), timeout_ms=50))
        res = await asyncio.gather(first, late, return_exceptions=True)
        await b.stop()
        return res

    first, late = run(main())
    assert isinstance(first, dict)
    assert isinstance(late, DeadlineExceeded) and "deadline" in str(late)


def test_stop_finishes_queued_work_and_refuses_new():
    async def main():
        b = DynamicBatcher(lambda x: (time.sleep(0.02), {"y": x})[1], BatchingConfig(max_batch=2, max_wait_ms=1, max_queue=50))
        await b.start()
        tasks = [asyncio.create_task(b.submit(np.full((1, 1), i, np.float32))) for i in range(10)]
        await asyncio.sleep(0.005)
        await b.stop()
        with pytest.raises(ShuttingDown):
            await b.submit(np.zeros((1, 1), np.float32))
        return await asyncio.gather(*tasks, return_exceptions=True)

    res = run(main())
    assert all(isinstance(r, dict) for r in res)
    assert [float(r["y"][0, 0]) for r in res] == [float(i) for i in range(10)]


def test_backend_errors_reach_every_request_of_the_batch():
    async def main():
        def boom(x):
            raise RuntimeError("backend exploded")
        b = DynamicBatcher(boom, BatchingConfig(max_batch=4, max_wait_ms=10))
        await b.start()
        res = await asyncio.gather(*(b.submit(np.zeros((1, 1), np.float32)) for _ in range(3)), return_exceptions=True)
        await b.stop()
        return res

    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in run(main()))
