"""``--quant nncf``: NNCF's INT8 graph through the same parity gate and sidecar record; both CPU backends run it."""

import numpy as np
import onnx
import pytest

from wherevit import runtime
from wherevit.app.bench import bench_precision
from wherevit.base.errors import InvalidRequest
from wherevit.base.sidecar import read_sidecar
from wherevit.export.api import ExportRequest, ParityError, export_artifacts
from wherevit.export.quantize import CALIB_SEED, QuantOptions
from wherevit.runtime.backends.openvino import openvino_version
from wherevit.runtime.compare import compare

nncf = pytest.importorskip("nncf", reason="NNCF is not installed (pip install 'wherevit[nncf]')")


def _export(run, out, fmt="onnx", **quant):
    return export_artifacts(ExportRequest(str(run), out, format=fmt, precision="int8", batch=(1, 4, 8),
                                          format_options={"int8": QuantOptions(mode="nncf", **quant)}))


@pytest.fixture(scope="module")
def nncf_int8(trained_run, tmp_path_factory):
    # the tiny, barely trained model's CLS token is the hardest output: 64 images and a 0.97 gate (ViT-S/16 passes 0.99)
    return _export(trained_run, tmp_path_factory.mktemp("nncf"), calib_count=64, min_cosine=0.97)


def test_nncf_export_is_recorded_and_gated(nncf_int8):
    res = nncf_int8
    assert res.int8.name == "model_int8_nncf.onnx" and res.onnx.name == "model_fp32.onnx"
    meta = read_sidecar(res.int8)
    q = meta.quantization
    assert meta.kind == "onnx" and meta.precision == "int8" and bench_precision(meta) == "int8-nncf"
    assert q.mode == "nncf" and q.batch_dependent is False and q.tool.startswith(f"nncf {nncf.__version__}")
    assert "ModelType.TRANSFORMER" in q.tool and q.source_onnx.file == "model_fp32.onnx"
    assert q.calibration["count"] == 64 and q.calibration["seed"] == CALIB_SEED  # the same sources as --quant static
    assert q.nncf["overflow_fix"] == ("enable" if q.reduce_range else "disable") and q.nncf["model_type"] == "TRANSFORMER"
    par = meta.parity
    assert par["passed"] is True and par["images"]["generated_seed"] != CALIB_SEED
    assert {o["name"] for o in par["outputs"]} == {"cls", "patch_tokens", "pooled"}
    assert all(o["min_cosine"] == 0.97 and 0.97 <= o["cos_min"] <= 1 + 1e-9 for o in par["outputs"])
    # the transformer preset: every MatMul reads int8 (dequantised) operands, attention's Q.K^T included, except
    # A.V, which reads the float softmax
    g = onnx.load(str(res.int8)).graph
    producer = {o: n.op_type for n in g.node for o in n.output}
    matmuls = [[producer.get(i) for i in n.input] for n in g.node if n.op_type == "MatMul"]
    assert len(matmuls) == 2 * 6  # 2 blocks x (qkv, q.k, a.v, proj, fc1, fc2)
    assert sum(ops == ["DequantizeLinear"] * 2 for ops in matmuls) == 2 * 5
    assert sum(ops[0] == "Softmax" for ops in matmuls) == 2
    assert any(n.op_type == "LayerNormalization" for n in g.node) and any(n.op_type == "Softmax" for n in g.node)


@pytest.mark.skipif(openvino_version() is None, reason="openvino is not installed (pip install 'wherevit[openvino]')")
def test_both_cpu_backends_run_the_nncf_graph_and_our_qdq_graph(nncf_int8, trained_run, tmp_path):
    static = export_artifacts(ExportRequest(str(trained_run), tmp_path, precision="int8", batch=(1, 4, 8),
                                            format_options={"int8": QuantOptions(calib_count=16)})).int8
    x = np.random.default_rng(5).standard_normal((6, 3, 32, 32)).astype(np.float32)
    with runtime.load(nncf_int8.onnx, backend="ort-cpu") as fp32:
        ref = fp32.run(x).outputs
    outs = {}
    for art in (nncf_int8.int8, static):
        for backend in ("openvino", "ort-cpu"):
            with runtime.load(art, backend=backend) as m:
                outs[(art.name, backend)] = m.run(x).outputs
                cmp = compare(ref, outs[(art.name, backend)], min_cosine=0.95)
                assert cmp, f"{art.name} on {backend}:\n{cmp.summary()}"
    # the two runtimes run one graph: far closer to each other than either is to fp32
    for name in ("model_int8_nncf.onnx", static.name):
        assert compare(outs[(name, "ort-cpu")], outs[(name, "openvino")], min_cosine=0.999)


def test_the_gate_refuses_and_leaves_nothing(trained_run, tmp_path):
    with pytest.raises(ParityError, match="INT8 parity failed for model_int8_nncf.onnx"):
        _export(trained_run, tmp_path, calib_count=8, min_cosine=0.999999)
    assert not list(tmp_path.glob("*.onnx"))


def test_engines_and_a_missing_nncf_are_refused_before_exporting(trained_run, tmp_path, monkeypatch):
    with pytest.raises(InvalidRequest, match=r"TensorRT engines \(engine\) take the static Q/DQ graph"):
        _export(trained_run, tmp_path, fmt="engine", calib_count=8)
    import wherevit.export.nncf_quant as nq

    monkeypatch.setattr(nq, "nncf_unavailable_reason", lambda: "--quant nncf needs NNCF: pip install 'wherevit[nncf]'")
    with pytest.raises(InvalidRequest, match=r"wherevit\[nncf\]"):
        _export(trained_run, tmp_path, calib_count=8)
    assert not list(tmp_path.iterdir())
