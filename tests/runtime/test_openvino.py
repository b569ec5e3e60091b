"""The OpenVINO backend: parity with ONNX Runtime on the tiny model, its precision choice, INT8 graphs, the auto rule."""

import asyncio
import dataclasses

import numpy as np
import pytest

from wherevit import runtime
from wherevit.base.cpu import CpuIsa, cpu_isa
from wherevit.base.sidecar import QuantizationSection
from wherevit.runtime.backends import BackendUnavailable, auto_order
from wherevit.runtime.backends import openvino as ov_backend
from wherevit.runtime.backends.openvino import auto_rule, choose_inference_precision, openvino_version
from wherevit.runtime.compare import compare

needs_ov = pytest.mark.skipif(openvino_version() is None, reason="openvino is not installed (pip install 'wherevit[openvino]')")

AVX2 = CpuIsa("test AVX2", "x86_64", avx2=True, fma=True)
ZEN4 = CpuIsa("test Zen 4", "x86_64", avx2=True, fma=True, avx512f=True, avx512bw=True, avx512_vnni=True, avx512_bf16=True)
SPR = dataclasses.replace(ZEN4, model="test Xeon", amx_tile=True, amx_int8=True, amx_bf16=True)


def _x(b, seed=0):
    return np.random.default_rng(seed).standard_normal((b, 3, 32, 32)).astype(np.float32)


def _rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@needs_ov
def test_fp32_matches_onnxruntime_at_every_batch_size_with_f32_kept(onnx_artifact):
    with runtime.load(onnx_artifact, backend="ort-cpu") as ref, runtime.load(onnx_artifact, backend="openvino", threads=1) as ov:
        info = ov.backend.describe()
        # OpenVINO's own default on a CPU with BF16 units is bf16; the artifact's fp32 is kept
        assert info["inference_precision"] == "f32" and info["threads"] == 1 and info["isa"] == cpu_isa().summary
        assert info["shapes"] == "dynamic batch 1..8"
        for b in (1, 3, 8):  # one compiled model, bounded dynamic batch
            x = _x(b, seed=b)
            got, want = ov.run(x), ref.run(x)
            for name in ("cls", "patch_tokens", "pooled"):
                assert got[name].shape == want[name].shape
                assert _rel_l2(got[name], want[name]) < 1e-5, name
        # raw images through the same preprocessing; 11 images split over the max batch of 8
        from wherevit.train.data.synthetic import render_scene

        images = [render_scene(200 + i, 48) for i in range(11)]
        assert _rel_l2(ov.embed(images).patch_grid(), ref.embed(images).patch_grid()) < 1e-5


@needs_ov
def test_static_shapes_compile_per_batch_size_and_agree(onnx_artifact):
    with runtime.load(onnx_artifact, backend="openvino", static_shapes=True) as ov, runtime.load(onnx_artifact, backend="ort-cpu") as ref:
        for b in (2, 5, 2):
            assert _rel_l2(ov.run(_x(b)).cls, ref.run(_x(b)).cls) < 1e-5
        assert sorted(ov.backend.requests) == [2, 4, 5]  # the profile's opt at activation, then each size on first use


@needs_ov
@pytest.mark.skipif(not cpu_isa().bf16, reason=f"this CPU ({cpu_isa().summary}) has no BF16 instructions")
def test_bf16_inference_precision_really_computes_in_bf16(onnx_artifact):
    x = _x(4, seed=7)
    with runtime.load(onnx_artifact, backend="openvino", inference_precision="bf16") as ov, \
            runtime.load(onnx_artifact, backend="ort-cpu") as ref:
        assert ov.backend.describe()["inference_precision"] == "bf16" and "BF16" in ov.backend.describe()["why"]
        got, want = ov.run(x).outputs, ref.run(x).outputs
    cmp = compare(want, got, min_cosine=0.999)
    assert cmp, cmp.summary()
    assert 1e-4 < _rel_l2(got["patch_tokens"], want["patch_tokens"]) < 5e-2  # bf16's 8-bit mantissa shows; f32 would be ~1e-7


def test_inference_precision_choice_per_artifact_and_cpu():
    assert choose_inference_precision("fp32", "auto", SPR)[0] == "f32"  # fp32 stays fp32 even with AMX
    assert choose_inference_precision("bf16", "auto", ZEN4) == ("bf16", "bf16 graph, computed natively (AVX-512 BF16)")
    assert choose_inference_precision("bf16", "auto", SPR) == ("bf16", "bf16 graph, computed natively (AMX BF16)")
    prec, why = choose_inference_precision("bf16", "auto", AVX2)
    assert prec == "f32" and "without BF16" in why
    assert choose_inference_precision("int8", "auto", SPR)[0] == "f32"
    assert choose_inference_precision("fp32", "bf16", ZEN4)[0] == "bf16"
    assert choose_inference_precision("bf16", "fp32", SPR)[0] == "f32"
    with pytest.raises(BackendUnavailable, match="no BF16 instructions"):
        choose_inference_precision("fp32", "bf16", AVX2)
    with pytest.raises(ValueError, match="inference_precision must be one of"):
        choose_inference_precision("fp32", "fp8", SPR)


def test_auto_rule_follows_the_cpu_and_the_artifact(onnx_artifact, monkeypatch):
    from wherevit.base.sidecar import read_sidecar

    tiny = read_sidecar(onnx_artifact)
    # the tiny test model is 0.004 GFLOP per image; as ViT-S/16 at 224 (21.7 M parameters, 197 tokens) it is 8.5
    meta = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, arch={**tiny.model.arch, "params": 21_665_664,
                                                                                  "patch_size": [16, 16]}),
                               preprocess={**tiny.preprocess, "size": [224, 224]})
    assert ov_backend.estimated_gflops(tiny) == pytest.approx(2 * tiny.model.arch["params"] * (16 + 1) / 1e9)
    assert ov_backend.estimated_gflops(meta) == pytest.approx(8.536, abs=1e-3)
    q = lambda mode: dataclasses.replace(meta, precision="int8", quantization=QuantizationSection(mode, mode == "dynamic"))
    static, nncf, dynamic = q("static"), q("nncf"), q("dynamic")
    bf16 = dataclasses.replace(meta, precision="bf16")
    assert [auto_rule(m, ZEN4)[0] for m in (meta, static, nncf, dynamic, bf16)] == [True, True, True, False, True]
    assert [auto_rule(m, AVX2)[0] for m in (meta, static, nncf, dynamic, bf16)] == [False, False, False, False, True]
    assert "dynamic INT8" in auto_rule(dynamic, SPR)[1] and "not measured" in auto_rule(meta, AVX2)[1]
    small, why = auto_rule(tiny, ZEN4)
    assert small is False and f"about {ov_backend.estimated_gflops(tiny):.2g} GFLOP per image, below 0.25" in why
    order = lambda m: [n for n in auto_order(m) if n in ("openvino", "ort-cpu")]
    monkeypatch.setattr(ov_backend, "cpu_isa", lambda: ZEN4)
    assert order(meta) == ["openvino", "ort-cpu"] and order(dynamic) == ["ort-cpu", "openvino"]
    assert auto_order().index("ort-cpu") < auto_order().index("openvino")  # without an artifact: the static priority
    assert auto_order(meta)[:3] == ["tensorrt", "ort-trt", "ort-cuda"]  # GPUs stay first
    assert order(tiny) == ["ort-cpu", "openvino"]
    monkeypatch.setattr(ov_backend, "cpu_isa", lambda: AVX2)
    assert order(meta) == ["ort-cpu", "openvino"] and order(bf16) == ["openvino", "ort-cpu"]


@needs_ov
def test_auto_load_picks_by_the_rule(onnx_artifact, monkeypatch):
    monkeypatch.setattr(ov_backend, "cpu_isa", lambda: ZEN4)
    with runtime.load(onnx_artifact) as m:  # 0.004 GFLOP per image: ONNX Runtime's lower overhead wins
        assert m.backend.name == "ort-cpu"
    monkeypatch.setattr(ov_backend, "SMALL_GFLOPS", 0.001)  # as if it were a large model
    with runtime.load(onnx_artifact) as m:
        assert m.backend.name == "openvino"
    monkeypatch.setattr(ov_backend, "cpu_isa", lambda: AVX2)
    with runtime.load(onnx_artifact) as m:
        assert m.backend.name == "ort-cpu"


def test_missing_openvino_is_a_reason_not_a_crash(onnx_artifact, monkeypatch):
    monkeypatch.setattr(ov_backend, "openvino_version", lambda: None)
    assert "pip install 'wherevit[openvino]'" in runtime.available_backends(runtime.load(onnx_artifact, backend="ort-cpu").meta)["openvino"]
    with pytest.raises(BackendUnavailable, match="openvino is not installed"):
        runtime.load(onnx_artifact, backend="openvino")


@needs_ov
def test_serving_on_openvino_batches_across_requests(onnx_artifact):
    from wherevit.runtime.batching import BatchingConfig
    from wherevit.runtime.service import InferenceService, ServeConfig

    xs = [_x(1, seed=i) for i in range(6)]

    sizes = []

    async def go(model):
        svc = InferenceService(model, ServeConfig(batching=BatchingConfig(max_batch=4, max_wait_ms=50), warmup=False))
        execute = svc.batcher.execute
        svc.batcher.execute = lambda x: (sizes.append(len(x["images"])), execute(x))[1]
        await svc.start()
        try:
            return await asyncio.gather(*(svc.batcher.submit({"images": x}) for x in xs))
        finally:
            await svc.stop()

    with runtime.load(onnx_artifact, backend="openvino") as model, runtime.load(onnx_artifact, backend="ort-cpu") as ref:
        outs = asyncio.run(go(model))
        assert max(sizes) > 1 and sum(sizes) == len(xs)  # requests shared executed batches
        for x, o in zip(xs, outs):
            assert _rel_l2(o["cls"], ref.run(x).cls) < 1e-5


@needs_ov
def test_bench_rows_side_by_side_with_compute_precision_and_isa(onnx_artifact, tmp_path):
    import json

    from click.testing import CliRunner

    from wherevit.app.cli import main

    res = CliRunner().invoke(main, ["bench", str(onnx_artifact), "--batch", "2", "--backends", "ort-cpu,openvino",
                                    "--precision", "fp32,bf16", "--min-seconds", "0.05", "--min-iters", "3", "--warmup", "1",
                                    "-o", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    by = {(r["backend"], r["precision"]): r for r in json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]}
    fp32 = by[("openvino", "fp32")]
    assert fp32["status"] == "ok" and fp32["parity_ok"] is True and fp32["rel_l2"] < 1e-4 and fp32["fraction_of_peak"] > 0
    assert fp32["extra"]["backend"]["inference_precision"] == "f32" and fp32["extra"]["backend"]["isa"] == cpu_isa().summary
    assert by[("ort-cpu", "fp32")]["status"] == "ok" and "no bf16" in by[("ort-cpu", "bf16")]["reason"]
    bf16 = by[("openvino", "bf16")]
    if cpu_isa().bf16:  # the fp32 graph, lowered to bf16 by OpenVINO, judged by cosine
        assert bf16["status"] == "ok" and bf16["artifact"].endswith("model_fp32.onnx") and bf16["cos_min"] >= 0.99
        assert bf16["rel_l2"] > 1e-4 and bf16["extra"]["backend"]["inference_precision"] == "bf16"
        assert f"computes bf16 ({cpu_isa().summary})" in res.output
    else:
        assert bf16["status"] == "skipped" and "no bf16 onnx artifact" in bf16["reason"]
    assert f"computes f32 ({cpu_isa().summary})" in res.output


@needs_ov
def test_openvino_gemm_peaks_join_the_machine_section():
    from wherevit.app.machine import measure_peaks, openvino_gemm_peak

    for dtype in ("fp32", "int8"):
        p = openvino_gemm_peak(dtype, n=256, repeats=2, threads=1)
        assert p.kernel.startswith("openvino") and 0.1 < p.gflops < 1e5 and p.threads == 1
    assert (openvino_gemm_peak("bf16", n=256, repeats=1, isa=AVX2).skipped or "").startswith("this CPU")
    peaks = measure_peaks(n=256, repeats=1)["peaks"]
    for p in peaks.values():  # each dtype's peak is its best kernel; the others are kept beside it
        kernels = [p] + p["alternatives"]
        assert any(k["kernel"].startswith("openvino") for k in kernels)
        assert p["gflops"] is None or p["gflops"] == max(k["gflops"] or 0 for k in kernels)
