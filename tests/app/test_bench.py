"""`wherevit bench` on a tiny model: files, fields, skipped rows with reasons, parity that can fail."""

import csv
import json
from dataclasses import fields

from click.testing import CliRunner

from wherevit.app.bench import BenchRow
from wherevit.app.cli import main


def _bench(args, tmp_path):
    res = CliRunner().invoke(main, ["bench", *args, "--min-seconds", "0.05", "--min-iters", "3", "--warmup", "1",
                                    "-o", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    return res, json.loads((tmp_path / "b" / "bench.json").read_text())


def test_bench_writes_every_field_and_skips_with_reasons(onnx_artifact, trained_run, tmp_path):
    res, data = _bench([str(onnx_artifact), "--batch", "1,3", "--reference", str(trained_run)], tmp_path)
    rows = data["rows"]
    names = {f.name for f in fields(BenchRow)}
    assert all(set(r) == names for r in rows)
    by = {(r["backend"], r["batch"]): r for r in rows}
    for b in (1, 3):
        ok = by[("ort-cpu", b)]
        assert ok["status"] == "ok" and ok["p50_ms"] > 0 and ok["p99_ms"] >= ok["p50_ms"] and ok["iters"] >= 3
        assert ok["throughput_ips"] > 0 and ok["parity_ok"] is True and ok["rel_l2"] < 1e-4 and ok["artifact_bytes"] > 0
        assert by[("torch-eager", b)]["status"] == "ok"
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert skipped and all(r["reason"] for r in skipped)
    assert by[("torch-compile-cudagraphs", 1)]["reason"] == "CUDA graphs need a CUDA GPU"
    assert data["machine"]["cores_available"] >= 1 and data["machine"]["versions"]["onnxruntime"]
    assert (tmp_path / "b" / "bench.png").stat().st_size > 1000
    with open(tmp_path / "b" / "bench.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    assert "ort-cpu" in res.output and "skipped" in res.output


def test_parity_column_catches_a_wrong_artifact(onnx_artifact, tmp_path, tiny_cfg):
    from wherevit.train.loop import train

    other = tmp_path / "other"  # same architecture, different weights (another seed)
    train(tiny_cfg(total_steps=1, seed=123, plugins={}), other, progress=False)
    res, data = _bench([str(onnx_artifact), "--batch", "2", "--backends", "ort-cpu", "--reference", str(other)], tmp_path)
    (row,) = data["rows"]
    assert row["status"] == "ok" and row["parity_ok"] is False and row["rel_l2"] > 0.05
    assert "PARITY FAIL" in res.output


def test_bench_from_a_checkpoint_exports_first(trained_run, tmp_path):
    _, data = _bench([str(trained_run), "--batch", "2", "--backends", "ort-cpu,torch-eager"], tmp_path)
    assert {r["backend"]: r["status"] for r in data["rows"]} == {"ort-cpu": "ok", "torch-eager": "ok"}
    assert (tmp_path / "b" / "artifacts" / "model_fp32.onnx").is_file()


def test_unknown_backend_is_an_error(onnx_artifact, tmp_path):
    res = CliRunner().invoke(main, ["bench", str(onnx_artifact), "--backends", "warp-drive", "-o", str(tmp_path)])
    assert res.exit_code != 0 and "unknown backend" in res.output


# -- backends are asked, not probed ------------------------------------------------------------------

class _Recording:
    """A minimal backend-like object: records which abilities bench used."""

    name, stages_inputs = "rec", False

    def __init__(self, timings=None, stages=False):
        self.calls, self.timings, self.stages_inputs = [], timings, stages

    def infer(self, feeds):
        self.calls.append("infer")
        return {"cls": feeds["images"].mean(axis=(2, 3))}

    def to_device(self, feeds):
        self.calls.append("to_device")
        return feeds

    def infer_device(self, staged):
        self.calls.append("infer_device")
        return self.infer(staged)

    def sync(self):
        self.calls.append("sync")

    def last_timings(self):
        return self.timings


def test_bench_uses_declared_abilities(tmp_path):
    import numpy as np

    from wherevit.app.bench import BenchRequest, TimingConfig, _bench_backend

    x = {"images": np.ones((2, 3, 4, 4), np.float32)}
    req = BenchRequest("t", tmp_path, include_copies=False, timing=TimingConfig(warmup=0, min_iters=2, min_seconds=0.0, n_buffers=1))
    host_only = _Recording()
    row = _bench_backend(host_only, "fp32", 2, [x], None, 1e-4, tmp_path, req, x)
    assert row.extra["copies"] == "included: this backend takes host arrays only" and "to_device" not in host_only.calls
    assert "sync" in host_only.calls and row.h2d_ms is None
    staging = _Recording(timings={"h2d_ms": 0.5, "compute_ms": 2.0, "d2h_ms": 0.25}, stages=True)
    row = _bench_backend(staging, "fp32", 2, [x], None, 1e-4, tmp_path, req, x)
    assert row.extra["copies"].startswith("excluded") and "infer_device" in staging.calls
    assert (row.h2d_ms, row.compute_ms, row.d2h_ms) == (0.5, 2.0, 0.25)


def test_the_base_backend_declares_what_a_backend_without_abilities_does(onnx_artifact):
    import dataclasses

    import numpy as np

    from wherevit.base.sidecar import read_sidecar
    from wherevit.runtime.backends.base import Backend
    from wherevit.runtime.backends.onnxruntime import OrtCpu

    meta = read_sidecar(onnx_artifact)
    with OrtCpu(onnx_artifact, meta) as b:
        x = {"images": np.zeros((1, 3, 32, 32), np.float32)}
        assert b.last_timings() is None and b.sync() is None and b.to_device(x) is x and not b.stages_inputs
        np.testing.assert_array_equal(b.infer_device(x)["cls"], b.infer(x)["cls"])
    assert OrtCpu.precisions == ("fp32", "int8") and set(Backend.precisions) == {"fp32", "fp16", "bf16", "int8"}
    assert OrtCpu.unavailable_reason(dataclasses.replace(meta, precision="fp16")) == (
        "ONNX Runtime's CPU provider has no fp16 MatMul kernels; use the fp32 artifact or a GPU")
