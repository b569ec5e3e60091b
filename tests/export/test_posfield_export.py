"""A posfield-trained backbone exports as a plain ViT with the field baked into pos_embed, and the
ONNX graph matches the field-based forward pass of the training checkpoint."""

import numpy as np
import onnxruntime as ort
import torch
from conftest import tiny_train_dict
from safetensors.torch import load_file

from wherevit.base.config import from_dict
from wherevit.base.sidecar import read_sidecar
from wherevit.export.api import ExportRequest, export_artifacts
from wherevit.train.backbone import TokenInputs, create_backbone, forward_tokens, timm_kwargs
from wherevit.train.checkpoint import latest_checkpoint
from wherevit.train.config import TrainConfig
from wherevit.train.loop import train
from wherevit.train.plugins.posfield import PosFieldConfig, PositionalField


def test_exported_graph_with_the_baked_field_matches_the_field_forward(tmp_path):
    """(The engine build at the end runs where tensorrt_rtx is installed, as in CI.)"""
    over = {"total_steps": 2, "ckpt_every": 2, "ibot": {"enabled": True},
            "plugins": {"posfield": {"field_size": 8, "export_scale": "mean"}}}
    cfg = from_dict(TrainConfig, tiny_train_dict(**over))
    train(cfg, tmp_path / "run", progress=False)
    res = export_artifacts(ExportRequest(str(tmp_path / "run"), tmp_path / "art", batch=(1, 2, 2)))
    side = read_sidecar(res.onnx)
    positional = side.model.positional
    assert side.parity["passed"]  # the baked graph also passed export's own parity check
    assert positional["kind"] == "posfield" and positional["baked_into"] == "pos_embed"
    assert positional["export_scale"] == "mean" and positional["field_forward_max_abs_diff"] < 1e-5

    # the field-based forward, from the training checkpoint's teacher (field and all)
    state = load_file(str(latest_checkpoint(tmp_path / "run") / "model.safetensors"))
    bb_state = {k[len("teacher.backbone."):]: v for k, v in state.items() if k.startswith("teacher.backbone.")}
    assert "pos_field" in bb_state
    kw = {k: v for k, v in timm_kwargs(cfg.model).items() if k != "drop_path_rate"}
    bb = create_backbone(cfg.model.name, **kw)
    plugin = PositionalField(PosFieldConfig(field_size=8), bb.embed_dim)
    plugin.attach(bb)
    bb.load_state_dict(bb_state, strict=True)
    bb.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pos = plugin.positions(bb, "global", {"global": {"images": x[:, None]}}, crop_aligned=False)
        ref = forward_tokens(bb, x, TokenInputs(pos=pos))
    sess = ort.InferenceSession(str(res.onnx), providers=["CPUExecutionProvider"])
    cls, patch = sess.run(["cls", "patch_tokens"], {"images": x.numpy()})[:2]
    np.testing.assert_allclose(cls, ref.cls.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(patch, ref.patch.numpy(), rtol=1e-4, atol=1e-4)
    # and the field matters: timm's own (unbaked) pos_embed would give something else
    with torch.no_grad():
        unbaked = forward_tokens(bb, x)
    assert np.abs(unbaked.patch.numpy() - patch).max() > 1e-3
    # an engine builds from the baked graph like from any backbone (TensorRT-RTX builds on a CPU)
    import importlib.util

    if importlib.util.find_spec("tensorrt_rtx") is None:
        return
    eng = export_artifacts(ExportRequest(str(tmp_path / "run"), tmp_path / "eng", format="engine", batch=(1, 2, 2),
                                         format_options={"engine": {"trt_lib": "tensorrt_rtx", "compute_capabilities": ("SM86",)}}))
    meta = read_sidecar(eng.engine)
    assert eng.engine.stat().st_size > 10_000 and meta.engine.library == "tensorrt_rtx"
    assert meta.model.positional["baked_into"] == "pos_embed"
