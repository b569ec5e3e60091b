"""Triton statistics from the batcher's timings: a shared batch counts once per model that had rows in it."""

import asyncio

import numpy as np

from wherevit.runtime.batching import BatchingConfig, DynamicBatcher
from wherevit.runtime.stats import RequestTiming, StatsRegistry


def test_shared_batches_count_once_per_model_with_their_own_rows():
    async def run():
        b = DynamicBatcher(lambda x: {"y": x * 2}, BatchingConfig(max_batch=8, max_wait_ms=50))
        stats = StatsRegistry(["a", "b"], "1")
        await b.start()

        async def call(model, rows):
            timing = RequestTiming()
            out = await b.submit(np.ones((rows, 1), np.float32), timing=timing)
            stats.success(model, out["y"].shape[0], 0.001, timing)
            return timing

        timings = await asyncio.gather(call("a", 1), call("a", 2), call("b", 3))
        await b.stop()
        return stats.report(), timings

    report, timings = asyncio.run(run())
    assert {t.batch_id for t in timings} == {1} and {t.batch_size for t in timings} == {6}
    a, b = report["model_stats"]
    assert (a["inference_count"], a["execution_count"], b["inference_count"], b["execution_count"]) == (3, 1, 3, 1)
    assert a["inference_stats"]["success"]["count"] == 2 and b["inference_stats"]["success"]["count"] == 1
    assert [(s["batch_size"], s["compute_infer"]["count"]) for s in a["batch_stats"]] == [(6, 1)]
    assert a["inference_stats"]["queue"]["count"] == 2 and a["inference_stats"]["queue"]["ns"] > 0


def test_failures_are_counted_and_the_report_is_triton_shaped():
    stats = StatsRegistry(["m"], "1")
    stats.failure("m", 0.002)
    m = stats.report("m")["model_stats"][0]
    assert m["inference_stats"]["fail"] == {"count": 1, "ns": 2_000_000}
    assert set(m["inference_stats"]) >= {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output"}
    assert m["batch_stats"] == [] and m["execution_count"] == 0
