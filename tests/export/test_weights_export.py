"""Exporting and benchmarking from a weights file (``--weights``): the artifact computes what timm's
model with those weights computes (DINOv2's 518 px grid resampled by timm's own code), and its
sidecar says where the weights came from."""

import hashlib
import json

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
from click.testing import CliRunner
from weight_layouts import DETECTED, DINOV2_REG, LAYOUT_MODELS, tiny_model, write_layout

from wherevit.app.cli import main
from wherevit.base.sidecar import read_sidecar
from wherevit.export.api import ExportRequest, export_artifacts


def _onnx(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x})))


def _tokens(model, x):
    with torch.no_grad():
        t = model.forward_features(torch.from_numpy(x))
    return t[:, 0].numpy(), t[:, model.num_prefix_tokens:].numpy()


def test_a_dinov2_file_exported_smaller_matches_timms_own_resampling(tmp_path):
    file = write_layout("dinov2-reg4", tiny_model(DINOV2_REG), tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    out = tmp_path / "art" / "dinov2.onnx"
    res = CliRunner().invoke(main, ["export", DINOV2_REG, "--weights", str(file), "--imgsz", "56", "--batch", "1:2:4", "-o", str(out)])
    assert res.exit_code == 0, res.output
    # timm's own pretrained loading of the same file at 56 px: checkpoint_filter_fn resamples 37 x 37 -> 4 x 4
    ref = timm.create_model(DINOV2_REG, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)), num_classes=0, img_size=56).eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 56, 56)).astype(np.float32)
    got = _onnx(out, x)
    cls, patch = _tokens(ref, x)
    assert got["patch_tokens"].shape == (3, 16, 64)  # the 4 registers are split off
    np.testing.assert_allclose(got["cls"], cls, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["patch_tokens"], patch, rtol=1e-4, atol=1e-5)
    meta = read_sidecar(out)
    w = meta.model.weights
    assert w["file"] == file.name and w["layout"] == "dinov2" and w["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert w["adapted"]["pos_embed"] == {"grid_from": [37, 37], "grid_to": [4, 4], "interpolation": "bicubic", "antialias": True}
    assert meta.model.checkpoint == DINOV2_REG and meta.model.timm_kwargs["img_size"] == 56
    assert meta.grid == (4, 4) and meta.preprocess["size"] == [56, 56] and meta.parity["passed"] is True
    assert "weights: dinov2_vits14_reg4_pretrain.pth (dinov2 layout" in res.output


@pytest.mark.parametrize("layout", ["dino-train", "ibot-train", "mae", "timm-train"])
def test_training_checkpoints_export_their_teacher(tmp_path, layout):
    name = LAYOUT_MODELS[layout]
    source = tiny_model(name)
    file = write_layout(layout, source, tmp_path / "ckpt.pth")
    res = export_artifacts(ExportRequest(name, tmp_path / "art", batch=(1, 2, 2), weights=str(file)))
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    got = _onnx(res.onnx, x)
    cls, patch = _tokens(source, x)
    np.testing.assert_allclose(got["cls"], cls, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["patch_tokens"], patch, rtol=1e-4, atol=1e-5)
    assert read_sidecar(res.onnx).model.weights["layout"] == DETECTED[layout]


def test_bench_from_a_weights_file_rebuilds_the_same_reference(tmp_path):
    from wherevit.app.torch_backend import reference_model

    name = LAYOUT_MODELS["dino-train"]
    source = tiny_model(name)
    file = write_layout("dino-train", source, tmp_path / "dino.pth")
    res = CliRunner().invoke(main, ["bench", name, "--weights", str(file), "--batch", "2", "--backends", "ort-cpu,torch-eager",
                                    "--min-seconds", "0.05", "--min-iters", "3", "--warmup", "1", "-o", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]
    assert {r["backend"]: (r["status"], r["parity_ok"]) for r in rows} == {"ort-cpu": ("ok", True), "torch-eager": ("ok", True)}
    meta = read_sidecar(tmp_path / "b" / "artifacts" / "model_fp32.onnx")
    assert meta.model.weights["layout"] == "dino-train" and meta.model.weights["loaded_by"] == "weights"
    ref = reference_model(meta)  # what the PyTorch rows and the parity column run: the file's teacher
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ref(x)[0], source.forward_features(x)[:, 0])
    artifact = CliRunner().invoke(main, ["bench", str(tmp_path / "b" / "artifacts" / "model_fp32.onnx"), "--weights", str(file)])
    assert artifact.exit_code != 0 and "not an artifact" in artifact.output
