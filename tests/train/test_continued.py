"""Continued pretraining from a weights file (``model.weights``): the run starts from the loaded
features (checked before its first step), heads fresh and equal in student and teacher, layer-wise
learning-rate decay and frozen layers as configured, exact resume, and the record of where the
weights came from in the run, its backbone and every export."""

import hashlib
import json

import pytest
import timm
import torch
from conftest import tiny_train_dict
from safetensors import safe_open
from safetensors.torch import load_file
from weight_layouts import DINOV2_REG, PLAIN, official_dinov2, tiny_model, write_layout

from wherevit.base.config import ConfigError, from_dict
from wherevit.train import loop
from wherevit.train.checkpoint import latest_checkpoint
from wherevit.train.config import TrainConfig, load_train_config
from wherevit.train.meta_arch import SSLMetaArch
from wherevit.train.schedules import Schedules
from wherevit.train.warm_start import start_from_weights
from wherevit.train.weights import WeightsError, WeightsMismatch


def _cfg(weights=None, **over) -> TrainConfig:
    d = tiny_train_dict(**over)
    d["model"]["name"] = PLAIN  # the registered tiny ViT the files are written from (same shapes as the overrides)
    if weights is not None:
        d["model"]["weights"] = str(weights)
    return from_dict(TrainConfig, d)


def _equal_states(a, b, keys=None):
    keys = keys or b.keys()
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_config_checks():
    with pytest.raises(ConfigError, match="weights and pretrained both set"):
        _cfg("w.pth", **{"model.pretrained": True})
    with pytest.raises(ConfigError, match=r"layer_decay must be in \(0, 1\]"):
        _cfg(**{"optim.layer_decay": 0.0})
    with pytest.raises(ConfigError, match="freeze_blocks must be >= 0"):
        _cfg(**{"optim.freeze_blocks": -1})
    with pytest.raises(ConfigError, match="freeze_blocks is 3, but the backbone has 2 blocks"):
        loop.build_optimizer(SSLMetaArch(_cfg(**{"optim.freeze_blocks": 3})).student, _cfg(**{"optim.freeze_blocks": 3}))


def test_layer_decay_pins_each_layers_learning_rate():
    """depth 2, decay 0.5: embeddings and the mask token at 0.5^3, block 0 at 0.5^2, block 1 at 0.5,
    the final norm, the heads and the plug-ins at the full rate; biases and tokens without decay."""
    cfg = _cfg(**{"optim.layer_decay": 0.5, "ibot.enabled": True})
    meta = SSLMetaArch(cfg)
    opt = loop.build_optimizer(meta.student, cfg)
    sched = Schedules.from_config(cfg)
    loop._apply_schedule(opt, sched, 5)
    lr, wd = float(sched.lr[5]), float(sched.weight_decay[5])
    assert lr > 0 and wd > 0
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(meta.student.named_parameters())
    want = {"backbone.patch_embed.proj.weight": (0.125, wd), "backbone.cls_token": (0.125, 0.0), "backbone.pos_embed": (0.125, 0.0),
            "mask_token": (0.125, 0.0), "backbone.blocks.0.attn.qkv.weight": (0.25, wd), "backbone.blocks.0.norm1.bias": (0.25, 0.0),
            "backbone.blocks.1.mlp.fc2.weight": (0.5, wd), "backbone.norm.weight": (1.0, 0.0), "dino_head.mlp.0.weight": (1.0, wd),
            "plugins.sp.head.0.weight": (1.0, wd)}
    for name, (scale, decay) in want.items():
        g = group_of[id(named[name])]
        assert g["lr"] == pytest.approx(lr * scale, rel=1e-12) and g["weight_decay"] == decay, name
    assert sum(len(g["params"]) for g in opt.param_groups) == len(named)  # every parameter, once


def test_layer_decay_off_keeps_the_two_groups():
    opt = loop.build_optimizer(SSLMetaArch(_cfg()).student, _cfg())
    assert [(g["apply_wd"], g["lr_scale"]) for g in opt.param_groups] == [(True, 1.0), (False, 1.0)]


def test_a_run_continued_from_weights_starts_from_the_loaded_features(tmp_path, monkeypatch):
    source = tiny_model(PLAIN)
    file = write_layout("dino-train", source, tmp_path / "dino_vit_tiny_checkpoint.pth")
    cfg = _cfg(file, total_steps=3, ckpt_every=3)
    real, seen = loop._optimise, {}
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def first_step_check(run, batch, step, params):
        if not seen:  # before the first optimizer step
            ref = source.state_dict()
            for role in ("student", "teacher"):
                net = getattr(run.meta, role)
                assert _equal_states(net.backbone.state_dict(), ref), role
                with torch.no_grad():
                    assert torch.equal(net.backbone.forward_features(x), source.forward_features(x)), role
            # the DINO head is fresh, and the same in both networks
            assert _equal_states(run.meta.teacher.dino_head.state_dict(), run.meta.student.dino_head.state_dict())
            seen["step"] = step
        return real(run, batch, step, params)

    monkeypatch.setattr(loop, "_optimise", first_step_check)
    res = loop.train(cfg, tmp_path / "run", progress=False)
    assert seen == {"step": 0}
    sha = hashlib.sha256(file.read_bytes()).hexdigest()
    record = json.loads((tmp_path / "run" / "weights.json").read_text())
    assert record["sha256"] == sha and record["layout"] == "dino-train" and record["network"] == "teacher"
    events = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert events[0] == {"step": 0, "event": "weights", **record}
    with safe_open(str(res.backbone), "pt") as fh:
        assert json.loads(fh.metadata()["wherevit"])["initialised_from"]["sha256"] == sha
    assert (tmp_path / "run" / "config.yaml").read_text().count(str(file)) == 1
    # and every export of the run says what it started from
    from wherevit.export.api import ExportRequest, export_artifacts

    art = export_artifacts(ExportRequest(str(tmp_path / "run"), tmp_path / "art", batch=(1, 1, 1)))
    from wherevit.base.sidecar import read_sidecar

    model = read_sidecar(art.onnx).model
    assert model.initialised_from["sha256"] == sha and model.weights["layout"] == "wherevit-backbone"


def test_a_dinov2_file_starts_ibot_with_its_mask_token_and_timms_resampled_grid(tmp_path):
    source = tiny_model(DINOV2_REG)
    file = write_layout("dinov2-reg4", source, tmp_path / "dinov2.pth")
    d = tiny_train_dict(**{"ibot.enabled": True})
    d["model"] = {"name": DINOV2_REG, "img_size": 56, "drop_path_rate": 0.0, "weights": str(file)}
    cfg = from_dict(TrainConfig, d)
    meta = SSLMetaArch(cfg)
    record = start_from_weights(meta, cfg)
    ref = timm.create_model(DINOV2_REG, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)), num_classes=0, img_size=56)
    assert _equal_states(meta.student.backbone.state_dict(), ref.state_dict())
    assert _equal_states(meta.teacher.backbone.state_dict(), ref.state_dict())
    assert torch.equal(meta.student.mask_token, official_dinov2(source.state_dict())["mask_token"].reshape(-1))
    assert record["mask_token"] == "loaded" and record["adapted"]["pos_embed"]["grid_to"] == [4, 4]


def test_freezing_keeps_the_embeddings_and_first_blocks_as_loaded(tmp_path):
    source = tiny_model(PLAIN)
    file = write_layout("timm", source, tmp_path / "w.pth")
    cfg = _cfg(file, total_steps=3, ckpt_every=3, **{"optim.freeze_blocks": 1})
    loop.train(cfg, tmp_path / "run", progress=False)
    state = load_file(str(latest_checkpoint(tmp_path / "run") / "model.safetensors"))
    student = {k[len("student.backbone."):]: v for k, v in state.items() if k.startswith("student.backbone.")}
    ref = source.state_dict()
    frozen = [k for k in ref if k.startswith(("patch_embed.", "cls_token", "pos_embed", "blocks.0."))]
    trained = [k for k in ref if k.startswith(("blocks.1.", "norm."))]
    assert frozen and all(torch.equal(student[k], ref[k]) for k in frozen)
    assert all(not torch.equal(student[k], ref[k]) for k in trained)


def test_resume_is_exact_with_weights_layer_decay_and_freezing(tmp_path):
    file = write_layout("ibot-train", tiny_model(PLAIN), tmp_path / "ibot.pth")
    cfg = _cfg(file, total_steps=4, ckpt_every=2, log_every=2,
               **{"optim.layer_decay": 0.75, "optim.freeze_blocks": 1, "ibot.enabled": True, "model.drop_path_rate": 0.1})
    loop.train(cfg, tmp_path / "straight", progress=False)
    loop.train(cfg, tmp_path / "split", stop_at=2, progress=False)
    file.unlink()  # a resume restores everything from the checkpoint: the file is not read again
    loop.train(cfg, tmp_path / "split", resume=True, progress=False)
    a = load_file(str(latest_checkpoint(tmp_path / "straight") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "split") / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_a_file_that_does_not_fit_stops_the_run_before_training(tmp_path):
    file = write_layout("mae", tiny_model(PLAIN), tmp_path / "mae.pth")
    with pytest.raises(WeightsMismatch, match=r"(?s)model.weights: mae.pth \(mae layout\) does not fit .*"
                                              r"the file fits: wvtest_tiny_patch8_32.*the config's model"):
        loop.train(_cfg(file, **{"model.depth": 3}), tmp_path / "run", progress=False)
    with pytest.raises(WeightsError, match="model.weights: weights file not found"):
        loop.train(_cfg(tmp_path / "missing.pth"), tmp_path / "run2", progress=False)


def test_dinov2_presets_continue_from_the_release():
    base = load_train_config("vit_s14_dinov2_reg4").to_dict()
    assert base["model"]["name"] == "vit_small_patch14_reg4_dinov2" and base["model"]["weights"] == "dinov2_vits14_reg4_pretrain.pth"
    assert base["optim"]["layer_decay"] < 1 and base["ibot"]["enabled"] and base["plugins"] == {}
    assert base["data"]["crops"]["global_size"] % 14 == 0 and base["data"]["crops"]["local_size"] % 14 == 0
    for name, plugins in (("vit_s14_dinov2_reg4_sp", ["sp"]), ("vit_s14_dinov2_reg4_all", ["posfield", "sp", "scrl", "gtsa"])):
        other = load_train_config(name).to_dict()
        assert {k for k in base if base[k] != other[k]} == {"plugins"} and list(other["plugins"]) == plugins


def test_the_all_plugins_preset_trains_on_a_loaded_dinov2_backbone(tmp_path):
    """vit_s14_dinov2_reg4_all at toy scale: its model family (registers, layer scale, 14 px patches)
    loaded from a DINOv2-layout file, every plug-in of the preset on, one step with finite losses.
    (Equivariance is not in the preset: its decoder refuses a 14 px patch, checked here too.)"""
    import yaml

    from wherevit.train.config import config_path

    file = write_layout("dinov2-reg4", tiny_model(DINOV2_REG), tmp_path / "dinov2.pth")
    d = yaml.safe_load(config_path("vit_s14_dinov2_reg4_all").read_text())
    d.update(total_steps=1, log_every=1, ckpt_every=1, compile=False, device="cpu", precision="fp32")
    d["model"] = {"name": DINOV2_REG, "img_size": 56, "drop_path_rate": 0.0, "weights": str(file)}
    d["data"] = {"source": "synthetic", "synthetic_count": 8, "synthetic_size": 84, "global_batch_size": 2, "num_workers": 0,
                 "crops": {"n_global": 2, "global_size": 56, "n_local": 2, "local_size": 28, "blur_p": 0.0, "solarize_p": 0.0}}
    d["dino"].update(out_dim=64, hidden_dim=32, bottleneck_dim=16, warmup_teacher_temp_steps=1, freeze_last_layer_steps=0)
    d["optim"]["warmup_steps"] = 1
    p = d["plugins"]
    p["posfield"]["field_size"] = 8
    p["sp"].update(crop_size=28, hidden_dim=32)
    p["scrl"].update(min_size=14, hidden_dim=32, out_dim=16)
    p["gtsa"].update(n_local=2, global_size=56, local_size=28, projector_dim=16, out_dim=16, predictor_dim=16, rot_hidden=16,
                     rot_bottleneck=8, roi_size=[2, 2], num_matches=[8, 2])
    cfg = from_dict(TrainConfig, d)
    res = loop.train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["event"] == "weights" and rows[0]["mask_token"] == "loaded"
    for name in ("dino", "ibot", "koleo", *p):
        assert torch.isfinite(torch.tensor(rows[-1][f"loss/{name}"])), name
    assert res.step == 1
    from wherevit.train.plugins import PluginError

    d["plugins"]["equivariance"] = {"crop_size": 56, "d_equi": 8, "decoder_dim": 16}
    with pytest.raises(PluginError, match="patch size 14 is not a power of two"):
        SSLMetaArch(from_dict(TrainConfig, d))


@pytest.mark.slow
def test_two_processes_start_from_the_same_weights(tmp_path):
    """Under torchrun every rank loads the file; the 2-process run equals the 1-process one. (The
    subprocesses do not see the test's registered tiny names: timm's own DINOv2 model with the
    tiny shape as config overrides.)"""
    import os
    import subprocess
    import sys

    import numpy as np
    import yaml
    from helpers import free_port

    file = write_layout("dinov2-train", tiny_model(DINOV2_REG), tmp_path / "dinov2_train.pth")
    d = tiny_train_dict(total_steps=2, log_every=1, ckpt_every=2, plugins={}, **{"optim.layer_decay": 0.8})
    d["model"] = {"name": "vit_small_patch14_reg4_dinov2", "embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 28,
                  "drop_path_rate": 0.0, "weights": str(file)}
    d["data"]["crops"].update(global_size=28, local_size=14)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(d))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = ["-m", "wherevit.app.cli", "train", "--config", str(tmp_path / "cfg.yaml"), "--no-progress"]
    subprocess.run([sys.executable, *base, "--out", str(tmp_path / "one")], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(free_port()), *base, "--out", str(tmp_path / "two")], check=True, env=env,
                   timeout=300)
    rows = {n: [json.loads(r) for r in (tmp_path / n / "metrics.jsonl").read_text().splitlines()] for n in ("one", "two")}
    assert rows["one"][0] == rows["two"][0] and rows["two"][0]["layout"] == "dinov2-train"  # one record, from rank 0
    np.testing.assert_allclose(rows["one"][1]["loss"], rows["two"][1]["loss"], rtol=1e-4)
    a, b = load_file(str(tmp_path / "one" / "backbone.safetensors")), load_file(str(tmp_path / "two" / "backbone.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)
