"""ONNX export, parity, sidecars and TensorRT-RTX engine building (CPU)."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from wherevit.base.io import sha256_file
from wherevit.base.sidecar import BatchRange, EngineProfile, SidecarError, TensorSpec, read_sidecar, sidecar_path
from wherevit.export.api import ExportRequest, ParityError, export_artifacts, parse_batch
from wherevit.train.backbone import backbone_features
from wherevit.train.checkpoint import CheckpointError, load_backbone


def _has(mod):
    import importlib.util

    return importlib.util.find_spec(mod) is not None


needs_rtx = pytest.mark.skipif(not _has("tensorrt_rtx"), reason="tensorrt_rtx is not installed (pip install tensorrt-rtx)")


def test_onnx_has_named_outputs_dynamic_batch_and_parity(onnx_artifact, trained_run):
    meta = read_sidecar(onnx_artifact)
    proto = onnx.load(str(onnx_artifact))
    assert [o.name for o in proto.graph.output] == ["cls", "patch_tokens", "pooled"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    assert "LayerNormalization" in {n.op_type for n in proto.graph.node}
    assert meta.parity["passed"] is True
    assert meta.parity["scenes"]["outputs"][0]["rel_l2"] < 1e-4
    # dynamic batch: 1, 3 and 7 against PyTorch
    model, _ = load_backbone(trained_run, dynamic_img_size=False)
    sess = ort.InferenceSession(str(onnx_artifact), providers=["CPUExecutionProvider"])
    for b in (1, 3, 7):
        x = np.random.default_rng(b).standard_normal((b, 3, 32, 32)).astype(np.float32)
        cls, patch, pooled = sess.run(None, {"images": x})
        with torch.no_grad():
            ref = backbone_features(model, torch.from_numpy(x))
        np.testing.assert_allclose(cls, ref.cls.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(patch, ref.patch.numpy(), rtol=1e-4, atol=1e-4)
        assert cls.shape == (b, 64) and patch.shape == (b, 16, 64)


def test_sidecar_describes_the_artifact(onnx_artifact):
    meta = read_sidecar(onnx_artifact)
    assert meta.kind == "onnx"
    assert meta.artifact.sha256 == sha256_file(onnx_artifact)
    assert meta.onnx.sha256 == sha256_file(onnx_artifact)
    assert meta.inputs == [TensorSpec("images", "float32", [-1, 3, 32, 32], meta.inputs[0].meaning, layout="NCHW")]
    assert meta.output_names == ["cls", "patch_tokens", "pooled"]
    assert meta.outputs[1].grid == [4, 4] and meta.grid == (4, 4)
    assert meta.preprocess["size"] == [32, 32] and meta.preprocess["color_order"] == "RGB"
    assert meta.batch == BatchRange(1, 4, 8)
    assert meta.model.model == "vit_tiny_patch16_224" and meta.model.source == "teacher"
    assert meta.model.timm_kwargs["embed_dim"] == 64
    assert meta.created and meta.wherevit_version and meta.precision == "fp32"


def test_tampered_artifact_fails_the_hash_check(onnx_artifact, tmp_path):
    copy = tmp_path / "model.onnx"
    copy.write_bytes(onnx_artifact.read_bytes() + b"\0")
    sidecar_path(copy).write_text(sidecar_path(onnx_artifact).read_text())
    with pytest.raises(SidecarError, match="does not match its sidecar"):
        read_sidecar(copy)
    (tmp_path / "lonely.onnx").write_bytes(b"x")
    with pytest.raises(SidecarError, match="no sidecar"):
        read_sidecar(tmp_path / "lonely.onnx")


def test_parity_failure_leaves_nothing_behind(trained_run, tmp_path):
    with pytest.raises(ParityError, match="ONNX parity failed"):
        export_artifacts(ExportRequest(str(trained_run), tmp_path, rtol=1e-30))
    assert not any(p.name.startswith("model") for p in tmp_path.iterdir())


@pytest.mark.parametrize("spec,msg", [("8:4:16", "min <= opt <= max"), ("1:2", "min:opt:max"), ("a:b:c", "integers"),
                                      ("0:1:2", "1 <= min")])
def test_bad_batch_ranges(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse_batch(spec)


def test_bad_checkpoints(trained_run, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        export_artifacts(ExportRequest(str(tmp_path / "missing.safetensors"), tmp_path / "o"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        export_artifacts(ExportRequest(str(bad), tmp_path / "o"))
    with pytest.raises(CheckpointError, match="holds a vit_tiny_patch16_224 backbone, but vit_base_patch16_224 was requested"):
        export_artifacts(ExportRequest(str(trained_run), tmp_path / "o", expect_model="vit_base_patch16_224"))


def test_unwritable_output(trained_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="cannot create output directory"):
        export_artifacts(ExportRequest(str(trained_run), blocker / "sub"))


def test_checkpoint_whose_weights_do_not_match_its_config(trained_run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = trained_run / "backbone.safetensors"
    with safe_open(str(src), "pt") as fh:
        meta = fh.metadata()
    info = json.loads(meta["wherevit"])
    info["timm_kwargs"]["depth"] = 3  # claims 3 blocks, holds 2
    meta["wherevit"] = json.dumps(info)
    save_file(load_file(str(src)), str(tmp_path / "liar.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="weights do not match"):
        export_artifacts(ExportRequest(str(tmp_path / "liar.safetensors"), tmp_path / "o"))


def test_export_by_timm_name_with_random_weights(tmp_path):
    res = export_artifacts(ExportRequest("vit_tiny_patch16_224", tmp_path, batch=(1, 2, 4), imgsz=64))
    meta = read_sidecar(res.onnx)
    assert meta.model.source == "random-init" and meta.inputs[0].shape == [-1, 3, 64, 64]
    assert meta.parity["passed"]


def test_quickstart_checkpoint_exports_with_parity(tmp_path):
    from wherevit.train.config import load_train_config
    from wherevit.train.loop import train

    cfg = load_train_config("quickstart", ["total_steps=2", "data.num_workers=0", "data.global_batch_size=8"])
    train(cfg, tmp_path / "qs", progress=False)
    res = export_artifacts(ExportRequest(str(tmp_path / "qs"), tmp_path / "art", batch=(1, 4, 8)))
    assert res.parity and read_sidecar(res.onnx).inputs[0].shape == [-1, 3, 64, 64]


@needs_rtx
def test_tensorrt_rtx_engine_from_trained_checkpoint(trained_run, tmp_path):
    import tensorrt_rtx

    res = export_artifacts(ExportRequest(str(trained_run), tmp_path, format="engine", batch=(1, 4, 8), format_options={"engine": {"trt_lib": "tensorrt_rtx", "compute_capabilities": ("SM86", "SM89")}}))
    assert res.engine.stat().st_size > 100_000
    meta = read_sidecar(res.engine)
    eng = meta.engine
    assert meta.kind == "engine"
    assert eng.library == "tensorrt_rtx" and eng.version == tensorrt_rtx.__version__
    assert eng.profile == EngineProfile(["images"], [1, 3, 32, 32], [4, 3, 32, 32], [8, 3, 32, 32])
    assert eng.compute_capabilities == ["8.6", "8.9"]
    assert eng.network_flags == ["STRONGLY_TYPED"] and eng.builder_flags == []
    assert meta.onnx.sha256 == sha256_file(res.onnx)
    assert meta.artifact.sha256 == sha256_file(res.engine)
    # the plan is a plain serialized engine: the library deserialises its header without wherevit
    assert res.engine.read_bytes()[:4] != b"{"


@needs_rtx
def test_tensorrt_rtx_fp16_engine_is_strongly_typed(trained_run, tmp_path):
    res = export_artifacts(ExportRequest(str(trained_run), tmp_path, format="engine", precision="fp16", batch=(1, 2, 4),
                                         format_options={"engine": {"trt_lib": "tensorrt_rtx", "compute_capabilities": ("SM89",)}}))
    proto = onnx.load(str(res.onnx))
    assert res.onnx.name == "model_fp16.onnx"
    fp16_inits = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert fp16_inits, "fp16 ONNX should carry fp16 weights"
    assert read_sidecar(res.onnx).parity["passed"] is None  # no fp16 CPU kernels: stated, not faked
    assert read_sidecar(res.engine).engine.onnx_precision == "fp16"


@needs_rtx
def test_rtx_refuses_hopper_target(trained_run, tmp_path):
    with pytest.raises(ValueError, match="does not support compute capability 9.0"):
        export_artifacts(ExportRequest(str(trained_run), tmp_path, format="engine", format_options={"engine": {"trt_lib": "tensorrt_rtx", "compute_capabilities": ("SM90",)}}))
