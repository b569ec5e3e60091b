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
