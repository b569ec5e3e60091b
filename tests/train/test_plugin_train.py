"""End-to-end training with the SCRL, GTSA and equivariance plug-ins on the CPU: each one's loss
goes down, resume is exact, two processes match one, they compose with SP, iBOT and the positional
field, and their views get crop-agnostic positions when the field is on."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_train_dict
from helpers import free_port
from safetensors.torch import load_file

from wherevit.base.config import ConfigError, from_dict
from wherevit.train.checkpoint import latest_checkpoint
from wherevit.train.config import TrainConfig
from wherevit.train.loop import train
from wherevit.train.plugins import PluginError

# tiny versions of each plug-in for the 32 px / patch-8 test model
PLUGINS = {
    "scrl": {"min_size": 8, "hidden_dim": 64, "out_dim": 32},
    "gtsa": {"n_local": 2, "global_size": 32, "local_size": 16, "projector_dim": 32, "out_dim": 32, "predictor_dim": 32,
             "rot_hidden": 32, "rot_bottleneck": 16, "roi_size": [2, 2], "num_matches": [8, 2]},
    "equivariance": {"crop_size": 32, "decoder_dim": 32},
}


def _rows(run_dir):
    return [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _cfg(**over) -> TrainConfig:
    return from_dict(TrainConfig, tiny_train_dict(**over))


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_plugin_loss_goes_down(tmp_path, name):
    # teacher, centre and the plug-ins' EMA targets held fixed (momentum 1), as in test_train.py
    # the equivariance decoders learn pixels from scratch, and in the faithful default only v2 shows u:
    # at the host's lr (3e-4 here) 40 steps barely move them, so that case trains at 5e-3
    lr = {"optim.base_lr": 0.16} if name == "equivariance" else {}
    cfg = _cfg(total_steps=40, log_every=1, ckpt_every=40, plugins={name: PLUGINS[name]},
               **{"dino.warmup_teacher_temp": 0.04, "dino.teacher_temp": 0.04, "dino.momentum_teacher": 1.0,
                  "dino.center_momentum": 1.0, "optim.warmup_steps": 1, **lr})
    res = train(cfg, tmp_path, progress=False)
    loss = [r[f"loss/{name}"] for r in _rows(tmp_path)]
    assert np.mean(loss[-8:]) < np.mean(loss[:8]) - 0.05, loss
    # heads and target projectors are training-only: the exported backbone is a plain timm ViT
    keys = load_file(str(res.backbone)).keys()
    assert not any(k.startswith(("plugins", "projector", "predictor", "target_", "decoders", "rotation")) for k in keys)


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_plugin_resume_is_exact(tmp_path, name):
    cfg = _cfg(total_steps=6, ckpt_every=3, log_every=3, plugins={name: PLUGINS[name]}, **{"model.drop_path_rate": 0.1})
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "split", stop_at=3, progress=False)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = load_file(str(latest_checkpoint(tmp_path / "straight") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "split") / "model.safetensors"))
    assert a.keys() == b.keys()
    assert any(k.startswith("student.plugins." + name + ".") for k in a)  # heads and EMA targets are checkpointed
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_all_plugins_compose_with_sp_ibot_and_the_positional_field(tmp_path):
    plugins = {"sp": {"weight": 0.5, "crop_size": 16, "scale": [0.05, 0.25], "hidden_dim": 32},
               "posfield": {"field_size": 8}, **PLUGINS}
    cfg = _cfg(total_steps=2, log_every=1, ckpt_every=2, plugins=plugins, **{"ibot.enabled": True})
    train(cfg, tmp_path, progress=False)
    last = _rows(tmp_path)[-1]
    for name in plugins:
        assert np.isfinite(last[f"loss/{name}"]), name


def test_geometric_plugin_views_get_crop_agnostic_positions():
    from wherevit.train.meta_arch import SSLMetaArch

    cfg = _cfg(plugins={"posfield": {"field_size": 8}, "gtsa": PLUGINS["gtsa"], "equivariance": PLUGINS["equivariance"]},
               **{"ibot.enabled": True})
    meta = SSLMetaArch(cfg)
    provider = meta.plugins["posfield"]
    assert not {"gtsa_global", "gtsa_local", "equi"} & meta._plan.aligned
    B = 3
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(B, 2, 4, generator=g) * 0.5 + 0.25
    batch = {"gtsa_global": {"images": torch.zeros(B, 2, 3, 32, 32, dtype=torch.uint8), "boxes": boxes,
                             "flips": torch.zeros(B, 2, dtype=torch.bool), "rot": torch.randint(0, 4, (B, 2), generator=g)},
             "posfield": {"affine": torch.rand(B, 4, generator=g)}}
    pos = provider.positions(meta.student.backbone, "gtsa_global", batch, "gtsa_global" in meta._plan.aligned)
    assert pos.shape[0] == 2 * B
    assert torch.equal(pos, pos[:1].expand_as(pos))  # the same embedding whatever the box or rotation
    aligned = provider.positions(meta.student.backbone, "gtsa_global", batch, True)
    assert not torch.equal(aligned, aligned[:1].expand_as(aligned))  # (crop-aligned ones would differ)


def test_bad_plugin_settings_name_the_key():
    with pytest.raises(ConfigError, match="plugins.gtsa.*pc_warmup"):
        _cfg(plugins={"gtsa": {**PLUGINS["gtsa"], "pc_warmup": 1.5}})
    with pytest.raises(ConfigError, match="plugins.scrl.*n_boxes"):
        _cfg(plugins={"scrl": {"n_boxes": 0}})
    from wherevit.train.meta_arch import SSLMetaArch

    with pytest.raises(ConfigError, match="plugins.scrl.min_size"):
        _cfg(plugins={"scrl": {"min_size": 32}})  # global crops are 32 px
    with pytest.raises(PluginError, match="plugins.scrl.views: 'host'.*transforms the host's global views"):
        SSLMetaArch(_cfg(plugins={"equivariance": PLUGINS["equivariance"], "scrl": {**PLUGINS["scrl"], "views": "host"}}))
    with pytest.raises(PluginError, match="plugins.scrl.views: 'host'.*positional field"):
        SSLMetaArch(_cfg(plugins={"posfield": {"field_size": 8}, "scrl": {**PLUGINS["scrl"], "views": "host"}},
                         **{"ibot.enabled": True}))
    with pytest.raises(PluginError, match="plugins.gtsa.local_size"):
        SSLMetaArch(_cfg(plugins={"gtsa": {**PLUGINS["gtsa"], "local_size": 12}}))
    with pytest.raises(PluginError, match="plugins.equivariance.crop_size"):
        SSLMetaArch(_cfg(plugins={"equivariance": {**PLUGINS["equivariance"], "mode": "decoupled", "crop_size": 30}}))
    with pytest.raises(PluginError, match="plugins.equivariance.d_equi"):
        SSLMetaArch(_cfg(plugins={"equivariance": {**PLUGINS["equivariance"], "d_equi": 128}}))  # dino.out_dim is 128


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_plugins(tmp_path):
    # SCRL's boxes are split unevenly over ranks: its batch norm and box mean are global
    cfg = tiny_train_dict(total_steps=3, log_every=1, ckpt_every=3, plugins=PLUGINS)
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "wherevit.app.cli", "train", "--config", str(cfg_file), "--no-progress"]
    subprocess.run(base + ["--out", str(tmp_path / "one")], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                    "--master_addr", "127.0.0.1", "--master_port", str(free_port())] + base[1:] + ["--out", str(tmp_path / "two")],
                   check=True, env=env, timeout=300)
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    for key in ("loss", "loss/scrl", "loss/gtsa", "loss/equivariance"):
        np.testing.assert_allclose(one[0][key], two[0][key], rtol=1e-4, err_msg=key)  # step 1: same data and weights
    a = load_file(str(latest_checkpoint(tmp_path / "one") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "two") / "model.safetensors"))
    # SCRL's MLPs (as kakaobrain/scrl's) put a bias before BatchNorm, which the norm subtracts again: its exact
    # gradient is 0, so it only ever receives rounding noise, which Adam scales up to steps of lr either way
    # (3.6e-4 apart after 3 steps; the target projector is their EMA). Nothing computes with it, so it is not
    # a parameter the runs must agree on.
    before_bn = {k for k in a if k.startswith("student.plugins.scrl.") and k.endswith("fc1.bias")}
    assert before_bn == {f"student.plugins.scrl.{m}.fc1.bias" for m in ("projector", "predictor", "target_projector")}
    for k in a.keys() - before_bn:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.parametrize("name", ["gtsa", "equivariance"])
def test_too_small_images_say_so(tmp_path, name):
    """A folder of 1x1 images stops with the decoder's clear error (changed when the shared decoder
    began refusing sides < 2); an in-memory image that small still gets the plug-in's own message."""
    import cv2

    from wherevit.train.data.sources import DataError
    from wherevit.train.plugins.equivariance import EquivarianceConfig, EquiViewSampler
    from wherevit.train.plugins.gtsa import GTSAConfig, GTSAViewSampler

    for i in range(8):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), np.full((1, 1, 3), 100, np.uint8))
    cfg = _cfg(total_steps=1, plugins={name: PLUGINS[name]}, **{"data.source": "folder", "data.path": str(tmp_path)})
    with pytest.raises(DataError, match="a 1x1 image has no pixels to look at"):
        train(cfg, tmp_path / "run", progress=False)
    sampler = GTSAViewSampler(GTSAConfig()) if name == "gtsa" else EquiViewSampler(EquivarianceConfig())
    with pytest.raises(DataError, match=f"{name}: an image of 1x1 pixels is too small"):
        sampler(np.full((1, 1, 3), 100, np.uint8), np.random.default_rng(0))


@pytest.mark.parametrize("mode", ["faithful", "decoupled"])
def test_equivariance_on_a_split_of_the_separate_ibot_patch_head(tmp_path, mode):
    from wherevit.train.meta_arch import SSLMetaArch

    section = {**PLUGINS["equivariance"], "mode": mode}
    cfg = _cfg(total_steps=2, log_every=1, ckpt_every=2, plugins={"equivariance": section},
               **{"ibot.enabled": True, "ibot.separate_head": True, "ibot.out_dim": 64})
    meta = SSLMetaArch(cfg)
    assert meta.plugins["equivariance"].proj is None and meta.plugins["equivariance"].reserved_head_channels == 16
    assert meta.ibot_loss.center.shape[-1] == 48 and meta.dino_loss.center.shape[-1] == 128  # DINO's head is not split
    train(cfg, tmp_path, progress=False)
    assert np.isfinite(_rows(tmp_path)[-1]["loss/equivariance"])


def test_equivariance_faithful_mode_turns_global_view_one(tmp_path):
    from wherevit.train.plugins.equivariance import EquiFaithfulHook, EquivarianceConfig, apply_transform

    cfg = EquivarianceConfig(mode="faithful", transform="se2")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 3, 32, 32), dtype=np.uint8)
    sample = {"global": {"images": images.copy()}}
    EquiFaithfulHook(cfg)(sample, None, np.random.default_rng(1), 0)
    p = sample["equi"]["params"].astype(np.float64)
    assert np.array_equal(sample["global"]["images"][0], images[0])  # v1 untouched
    u = images[1].transpose(1, 2, 0)
    assert np.array_equal(sample["global"]["images"][1].transpose(1, 2, 0), apply_transform(u, p))
    assert sample["equi"]["targets"].shape == (2, 3, 32, 32)
    run = _cfg(total_steps=2, log_every=1, ckpt_every=2, plugins={"equivariance": {**PLUGINS["equivariance"], "mode": "faithful"}})
    train(run, tmp_path, progress=False)
    row = _rows(tmp_path)[-1]
    assert np.isfinite(row["loss/equivariance"]) and row["equivariance/copy_baseline"] > 0
