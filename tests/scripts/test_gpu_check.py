"""scripts/gpu_check.sh (benchmarks/gpu_check.py) on a machine without a GPU: its skips and its output format.

The GPU work itself runs only on a lent GPU; here the dry run must record, for every step, either
that it ran (``env``) or ``skipped: <reason>``, never crash, and write the JSON the GPU day writes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    spec.loader.exec_module(mod)
    return mod


gpu_check = _module()


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def test_dry_run_records_every_step_and_why_it_is_skipped(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "WHEREVIT_PYTHON": sys.executable}
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out), "--work", str(tmp_path / "w")],
                       capture_output=True, text=True, timeout=300, env=env)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["format"] == "wherevit.gpu_check/1" and doc["dry_run"] is True and doc["command"].endswith("--dry-run --out " + str(out) +
                                                                                                          " --work " + str(tmp_path / "w"))
    steps = doc["steps"]
    assert [s["name"] for s in steps] == ["env", "train", "onnx_cuda", "pt2_cpp_cuda", "tensorrt_rtx", "bench"]
    assert steps[0]["status"] == "ok" and doc["machine"]["python"] and "cuda_available" in doc["machine"]
    for s in steps[1:]:
        assert s["status"] == "skipped" and s["reason"], s
        assert doc["summary"][s["name"]] == f"skipped: {s['reason']}"
        assert f"gpu_check: {s['name']:<13} skipped: {s['reason']}" in r.stdout
        if not _has_cuda():
            assert s["reason"] == "no CUDA GPU (torch.cuda.is_available() is False)"
        else:
            assert s["reason"].startswith("dry run") or "onnxruntime" in s["reason"] or "no " in s["reason"]
    assert not list((REPO / "benchmarks" / "results").glob("gpu_check/*dry*"))  # a dry run is never a result


def test_anchor_rows_match_the_same_configuration():
    """Each bench row's anchor is the reading of the same backend, precision and batch (pinned values)."""
    assert gpu_check.anchor_for("torch-eager", "fp32", 1)["ms"] == 3.2825
    assert gpu_check.anchor_for("torch-eager", "fp16", 64)["ms"] == 4.7297
    assert gpu_check.anchor_for("torch-compile", "fp16", 64)["ms"] == 3.7452
    assert gpu_check.anchor_for("torch-compile-cudagraphs", "fp16", 1)["ms"] == 0.6773
    assert gpu_check.anchor_for("ort-cuda", "fp32", 8)["ms"] == 3.1343
    assert gpu_check.anchor_for("ort-cuda", "fp16", 64)["ms"] == 6.6852
    a = gpu_check.anchor_for("ort-cuda", "fp32", 256)
    assert a == {"file": "h100-probe-ort-cuda.json", "key": "vit_small_patch16_224|fp32|b256", "ms": 35.0907}
    assert gpu_check.anchor_for("torch-compile", "fp32", 1) is None  # the anchors have no such reading
    assert gpu_check.anchor_for("ort-cpu", "fp32", 1) is None
    assert gpu_check.anchor_for("ort-cuda", "fp32", 1, model="vit_base_patch16_224")["ms"] == 3.102
    assert gpu_check.anchor_for("torch-eager", "fp32", 1, model="/runs/quickstart_all") is None  # not the anchors' model


def _ctx(tmp_path, budget=100.0, dry_run=False):
    return gpu_check.Context(work=tmp_path, dry_run=dry_run, deadline=time.monotonic() + budget)


def test_a_failing_step_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    ran = []

    def boom(ctx):
        raise RuntimeError("CUDA error: out of memory")

    steps = [gpu_check.Step("a", "first", 1, lambda c: None, lambda c: ran.append("a") or {"x": 1}),
             gpu_check.Step("b", "breaks", 1, lambda c: None, boom),
             gpu_check.Step("c", "needs a GPU", 1, lambda c: "no CUDA GPU", lambda c: ran.append("c") or {}),
             gpu_check.Step("d", "its check fails", 1, lambda c: None, lambda c: {"passed": False}),
             gpu_check.Step("e", "too long for what is left", 10_000, lambda c: None, lambda c: ran.append("e") or {})]
    monkeypatch.setattr(gpu_check, "STEPS", steps)
    written = []
    records = gpu_check.run_steps(_ctx(tmp_path), lambda recs: written.append([r["status"] for r in recs]))
    assert ran == ["a"]
    assert [(r["name"], r["status"]) for r in records] == [("a", "ok"), ("b", "failed"), ("c", "skipped"), ("d", "failed"),
                                                           ("e", "skipped")]
    assert records[0]["result"] == {"x": 1}
    assert records[1]["reason"] == "RuntimeError: CUDA error: out of memory" and "boom" in records[1]["traceback"]
    assert records[2]["reason"] == "no CUDA GPU"
    assert records[4]["reason"].startswith("not enough time left") and "10000 s" in records[4]["reason"]
    assert written == [["ok"], ["ok", "failed"], ["ok", "failed", "skipped"], ["ok", "failed", "skipped", "failed"],
                       ["ok", "failed", "skipped", "failed", "skipped"]]  # the JSON after every step
    dry = gpu_check.run_steps(_ctx(tmp_path, dry_run=True), lambda recs: None, only=("a", "b"))
    assert [(r["status"], r["reason"][:7]) for r in dry] == [("skipped", "dry run"), ("skipped", "dry run"),
                                                             ("skipped", "not sel"), ("skipped", "not sel"), ("skipped", "not sel")]


@pytest.mark.skipif(_has_cuda(), reason="checks the refusal without a GPU")
def test_the_rtx_step_takes_the_refusal_path_for_compute_capability_9(tmp_path, monkeypatch):
    """A rehearsal stands in compute capability 9.0 (an H100's): wherevit's own refusal is recorded; the
    library's own words (an engine built for SM89 loaded on this GPU) need a GPU and are stood in for here."""
    ctx = gpu_check.Context(work=tmp_path, dry_run=False, deadline=time.monotonic() + 100, rehearse=True)
    monkeypatch.setattr(gpu_check, "_rtx_refusal", lambda c, rtx: "stood in")
    out = gpu_check.step_tensorrt_rtx(ctx)
    if importlib.util.find_spec("tensorrt_rtx") is not None:
        assert out["tensorrt_rtx"] == "stood in"
    else:
        assert out["tensorrt_rtx"].startswith("tensorrt_rtx is not installed")
    assert out["compute_capability"] == "9.0" and out["status"] == "refused" and out["passed"] is True
    assert out["wherevit"] == "TensorRT-RTX does not support compute capability 9.0 (H100/H200); build with the full `tensorrt`"
