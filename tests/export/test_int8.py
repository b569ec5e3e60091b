"""INT8 export (ONNX Runtime static Q/DQ and dynamic), cosine parity, calibration input, and serving rules (CPU)."""

import asyncio
import importlib.util

import cv2
import numpy as np
import onnx
import pytest

from wherevit import runtime
from wherevit.base.cpu import CpuIsa
from wherevit.base.sidecar import read_sidecar
from wherevit.export.api import ExportRequest, ParityError, export_artifacts
from wherevit.export.quantize import CalibrationError, QuantOptions, calibration_set, reduce_range_decision
from wherevit.runtime.batching import BatchingConfig
from wherevit.runtime.service import InferenceService, ServeConfig


def _export(run, out, **quant):
    return export_artifacts(ExportRequest(str(run), out, precision="int8", batch=(1, 4, 8),
                                          format_options={"int8": QuantOptions(calib_count=quant.pop("calib_count", 16), **quant)}))


@pytest.fixture(scope="module")
def static_int8(trained_run, tmp_path_factory):
    return _export(trained_run, tmp_path_factory.mktemp("int8s"))


@pytest.fixture(scope="module")
def dynamic_int8(trained_run, tmp_path_factory):
    return _export(trained_run, tmp_path_factory.mktemp("int8d"), mode="dynamic")


def _images(n, seed=0, scale=1.0):
    from wherevit.train.data.synthetic import render_scene

    return [np.clip(render_scene(seed + i, 32).astype(np.float32) * scale, 0, 255).astype(np.uint8) for i in range(n)]


def test_static_qdq_export_end_to_end(static_int8):
    res = static_int8
    assert res.onnx.name == "model_fp32.onnx" and res.int8.name == "model_int8.onnx"
    meta = read_sidecar(res.int8)
    q = meta.quantization
    assert meta.kind == "onnx" and meta.precision == "int8"
    assert q.mode == "static" and q.batch_dependent is False and q.per_channel is True
    assert q.calibration["method"] == "minmax" and q.calibration["count"] == 16
    assert q.calibration["data"].startswith("generated scenes")
    assert q.source_onnx.file == "model_fp32.onnx"
    assert isinstance(q.reduce_range, bool) and q.reduce_range_reason
    # parity: cosine (mean and min over samples) for each output, above the threshold, on disjoint images
    par = meta.parity
    assert par["passed"] is True and par["images"]["generated_seed"] != q.calibration["seed"]
    for o in par["outputs"]:
        assert o["min_cosine"] == 0.99 and 0.99 <= o["cos_min"] <= o["cos_mean"] <= 1.0 + 1e-9
    assert {o["name"] for o in par["outputs"]} == {"cls", "patch_tokens", "pooled"}
    # the graph: Q/DQ around matmuls and the patch conv; LayerNorm and Softmax stay float
    g = onnx.load(str(res.int8)).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    assert "LayerNormalization" in ops and "Softmax" in ops
    producers = {o: n for n in g.node for o in n.output}
    for n in g.node:
        if n.op_type in ("LayerNormalization", "Softmax"):
            assert producers.get(n.input[0]) is None or producers[n.input[0]].op_type != "DequantizeLinear", n.name
    for out in g.output:  # graph outputs are float, not dequantised int8
        assert g.output and producers[out.name].op_type != "DequantizeLinear"


def test_runtime_runs_int8_through_the_same_embed(static_int8):
    imgs = _images(3, seed=900)
    with runtime.load(static_int8.onnx) as fp32, runtime.load(static_int8.int8) as int8:
        a, b = fp32.embed(imgs), int8.embed(imgs)
        assert int8.backend.name == "ort-cpu" and not int8.batch_dependent
    assert b.cls.shape == a.cls.shape and b.patch_tokens.shape == a.patch_tokens.shape
    cos = (a.cls * b.cls).sum(1) / np.linalg.norm(a.cls, axis=1) / np.linalg.norm(b.cls, axis=1)
    assert cos.min() > 0.98


def test_dynamic_export_is_marked_batch_dependent_and_run_per_image(dynamic_int8):
    meta = read_sidecar(dynamic_int8.int8)
    assert meta.quantization.mode == "dynamic" and meta.quantization.batch_dependent is True
    assert meta.quantization.calibration is None and meta.parity["passed"] is True
    ops = {n.op_type for n in onnx.load(str(dynamic_int8.int8)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}
    bright = _images(1, seed=5, scale=3.0)  # a batch-mate with a wider activation range
    img = _images(1, seed=7)
    with runtime.load(dynamic_int8.int8) as model:
        assert model.batch_dependent
        alone = model.embed(img).cls
        together = model.embed(img + bright).cls[:1]
        np.testing.assert_array_equal(alone, together)  # never mixed: one image per call
        # what would happen batched: the same image's features move with its batch-mate
        x = model.preprocess(img + bright)
        raw = model.backend.infer({"images": x})["cls"][:1]
    assert np.abs(raw - alone).max() > 0


def test_constant_calibration_is_caught_and_leaves_nothing(trained_run, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(16):
        cv2.imwrite(str(calib / f"c{i:02d}.png"), np.full((32, 32, 3), 128, np.uint8))
    out = tmp_path / "out"
    with pytest.raises(ParityError, match="INT8 parity failed.*cosine"):
        _export(trained_run, out, calib=str(calib))
    assert not list(out.iterdir())


@pytest.mark.parametrize("case,msg", [
    ("missing", "does not exist"), ("file", "not a folder"), ("empty", "holds no images"),
    ("unreadable", r"unreadable: .*bad\.jpg"), ("few", "has 3 images, too few for --calib-count 16"),
])
def test_bad_calibration_input(case, msg, tmp_path):
    from wherevit.base.image import Preprocess

    folder = tmp_path / "calib"
    if case == "file":
        folder.write_text("x")
    elif case != "missing":
        folder.mkdir()
        (folder / "notes.txt").write_text("not an image")
        n = {"empty": 0, "unreadable": 16, "few": 3}[case]
        for i in range(n):
            cv2.imwrite(str(folder / f"i{i:02d}.png"), np.random.default_rng(i).integers(0, 255, (32, 32, 3), np.uint8))
        if case == "unreadable":
            (folder / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(CalibrationError, match=msg):
        calibration_set(Preprocess(size=(32, 32)), ["images"], QuantOptions(calib=str(folder), calib_count=16))


def test_bad_calibration_fails_before_exporting(trained_run, tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        _export(trained_run, tmp_path / "o", calib=str(tmp_path / "nowhere"))
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
    with pytest.raises(CalibrationError, match="at least 8"):
        QuantOptions(calib_count=4)
    with pytest.raises(ValueError, match="mode"):
        QuantOptions(mode="weights-only")


def test_folder_calibration_holds_out_the_rest_for_parity(trained_run, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, im in enumerate(_images(24, seed=300)):
        cv2.imwrite(str(folder / f"s{i:02d}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    res = _export(trained_run, tmp_path / "o", calib=str(folder), method="percentile")
    meta = read_sidecar(res.int8)
    cal = meta.quantization.calibration
    assert cal["data"] == str(folder) and cal["count"] == 16 and cal["files_in_folder"] == 24 and cal["method"] == "percentile"
    assert meta.parity["images"]["held_out_folder_images"] == 8 and meta.parity["passed"]


def test_reduce_range_follows_vnni():
    avx2 = CpuIsa(model="x", arch="x86_64", avx2=True, fma=True)
    vnni = CpuIsa(model="x", arch="x86_64", avx2=True, avx512f=True, avx512_vnni=True)
    assert reduce_range_decision(QuantOptions(), avx2)[0] is True
    assert reduce_range_decision(QuantOptions(), vnni)[0] is False
    assert reduce_range_decision(QuantOptions(reduce_range=False), avx2) == (False, "set explicitly (this CPU: AVX2 FMA)")


# -- serving: a request's result does not depend on its batch-mates -------------------------------

async def _serve_concurrently(model, xs, max_batch):
    svc = InferenceService(model, ServeConfig(batching=BatchingConfig(max_batch=max_batch, max_wait_ms=50), warmup=False))
    sizes = []
    execute = svc.batcher.execute
    svc.batcher.execute = lambda x: (sizes.append(len(x["images"])), execute(x))[1]
    await svc.start()
    try:
        outs = await asyncio.gather(*(svc.batcher.submit({"images": x}) for x in xs))
    finally:
        await svc.stop()
    return svc, sizes, [o["cls"] for o in outs]


@pytest.mark.parametrize("which", ["static", "dynamic"])
def test_server_results_do_not_depend_on_batch_mates(which, static_int8, dynamic_int8):
    art = (static_int8 if which == "static" else dynamic_int8).int8
    rng = np.random.default_rng(3)
    xs = [(rng.standard_normal((1, 3, 32, 32)) * (1 + 3 * (i % 2))).astype(np.float32) for i in range(8)]
    with runtime.load(art) as model:
        alone = [model.run(x).cls for x in xs]
        svc, sizes, outs = asyncio.run(_serve_concurrently(model, xs, max_batch=8))
    if which == "static":  # batched across requests, yet each gets its own-batch result
        assert max(sizes) > 1 and svc.notice is None
        for a, b in zip(alone, outs):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    else:  # refused batching: one image per executed batch, said at start-up
        assert svc.cfg.batching.max_batch == 1 and set(sizes) == {1}
        assert "one image at a time" in svc.notice
        for a, b in zip(alone, outs):
            np.testing.assert_array_equal(b, a)


needs_rtx = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                               reason="tensorrt_rtx is not installed (pip install tensorrt-rtx)")


@needs_rtx
def test_qdq_graph_goes_to_tensorrt_rtx_and_the_outcome_is_recorded(trained_run, tmp_path):
    res = export_artifacts(ExportRequest(str(trained_run), tmp_path, format="engine", precision="int8", batch=(1, 2, 4),
                                         format_options={"engine": {"compute_capabilities": ("SM86",)}, "int8": QuantOptions(calib_count=8)}))
    meta = read_sidecar(res.int8)
    tb = meta.quantization.tensorrt_build
    assert meta.quantization.activations.startswith("int8, symmetric")  # what TensorRT accepts
    if tb["built"]:
        assert res.engine is not None and res.engine.is_file()
        assert read_sidecar(res.engine).precision == "int8"
    else:  # the builder's own words, verbatim
        assert res.engine is None and tb["refusal"] and res.notes


@pytest.mark.parametrize("task,metric", [("depth", "depth RMSE (m)"), ("seg", "segmentation mIoU")])
def test_head_graph_int8_keeps_the_head_float_and_reports_its_metric(task, metric, trained_run, tmp_path):
    from wherevit.train.checkpoint import load_backbone
    from wherevit.train.downstream.fit import HeadTrainConfig, fit_head

    cfg = HeadTrainConfig(n_train=16, n_test=8, size=32, epochs=2, cache_dir=str(tmp_path))
    fit_head(task, load_backbone(trained_run)[0], cfg, progress=False, out_dir=tmp_path)
    res = export_artifacts(ExportRequest(str(trained_run), tmp_path / "o", head=str(tmp_path / f"head_{task}.safetensors"),
                                         precision="int8", batch=(1, 2, 4), format_options={"int8": QuantOptions(calib_count=8)}))
    meta = read_sidecar(res.int8)
    assert res.int8.name == f"{task}_int8.onnx" and meta.task == task
    q = meta.quantization
    assert q.nodes_excluded and "head layers" in q.kept_float  # the head's 1x1 conv stays float
    hm = meta.parity["head_metric"]
    assert hm["metric"] == metric and hm["scenes"] == 16
    assert np.isfinite(hm["fp32_pytorch"]) and np.isfinite(hm["int8"]) and hm["change"] == pytest.approx(hm["int8"] - hm["fp32_pytorch"])
    names = {o["name"] for o in meta.parity["outputs"]}
    assert names == ({"depth"} if task == "depth" else {"logits"})  # labels (int64) derive from the logits


def _bench(args, tmp_path):
    import json

    from click.testing import CliRunner

    from wherevit.app.cli import main

    res = CliRunner().invoke(main, ["bench", *args, "--min-seconds", "0.05", "--min-iters", "3", "--warmup", "1", "-o", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    return res, json.loads((tmp_path / "b" / "bench.json").read_text())


def test_bench_has_int8_rows_with_cosine_parity_and_the_machine_section(static_int8, dynamic_int8, tmp_path):
    import shutil

    art = tmp_path / "art"  # one folder: fp32, static and dynamic INT8 side by side
    art.mkdir()
    for p in (static_int8.onnx, static_int8.int8, dynamic_int8.int8):
        for f in (p, p.with_name(p.name + ".json")):
            shutil.copy(f, art / f.name)
    res, data = _bench([str(art / "model_fp32.onnx"), "--batch", "2", "--backends", "ort-cpu,torch-eager",
                        "--precision", "fp32,int8,int8-dynamic,bf16"], tmp_path)
    by = {(r["backend"], r["precision"]): r for r in data["rows"]}
    for prec in ("int8", "int8-dynamic"):
        row = by[("ort-cpu", prec)]
        assert row["status"] == "ok" and row["parity_ok"] is True and 0.99 <= row["cos_min"] <= 1 + 1e-9
        assert row["fraction_of_peak"] > 0 and row["artifact"].endswith(f"model_{prec.replace('-', '_')}.onnx")
        assert "runtime's quantised artifacts" in by[("torch-eager", prec)]["reason"]
    assert by[("ort-cpu", "fp32")]["rel_l2"] < 1e-4 and by[("ort-cpu", "fp32")]["fraction_of_peak"] > 0
    m = data["machine"]
    assert m["isa"]["summary"] and m["peaks"]["fp32"]["gflops"] > 0 and m["peaks"]["int8"]["kernel"].endswith("MatMulInteger")
    assert "machine:" in res.output and "GEMM peaks" in res.output and "cos 0.9" in res.output
    bf16 = by[("torch-eager", "bf16")]
    from wherevit.base.cpu import cpu_isa

    if cpu_isa().bf16:
        assert bf16["status"] == "ok" and bf16["cos_min"] >= 0.99
    else:
        assert bf16["status"] == "skipped" and "no BF16 instructions" in bf16["reason"]


def test_cpu_bf16_row_runs_autocast_where_the_isa_allows(static_int8, tmp_path, monkeypatch):
    """On a CPU with BF16 the PyTorch row runs under autocast; forced here so the path runs on any CPU."""
    import wherevit.app.machine as machine

    monkeypatch.setattr(machine, "bf16_cpu_reason", lambda isa=None: None)
    # the row is what is under test; an emulated bf16 GEMM peak on a CPU without BF16 only costs time
    monkeypatch.setattr(machine, "torch_bf16_peak", lambda *a, **k: machine.GemmPeak("bf16", "torch.mm", skipped="test"))
    _, data = _bench([str(static_int8.onnx), "--batch", "2", "--backends", "torch-eager", "--precision", "bf16"], tmp_path)
    (row,) = data["rows"]
    assert row["status"] == "ok" and row["precision"] == "bf16"
    assert 0.95 < row["cos_min"] <= 1 + 1e-9 and row["rel_l2"] > 1e-4  # really ran in bf16, directions kept
