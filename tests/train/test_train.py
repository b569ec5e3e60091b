"""End-to-end training on the CPU: loss goes down, resume is exact, DDP matches one process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_train_dict
from helpers import EXIT_PROBE, assert_left_cleanly, free_port
from safetensors.torch import load_file

from wherevit.train.checkpoint import CheckpointError, latest_checkpoint, load_backbone
from wherevit.train.loop import train


def _losses(run_dir, key):
    return [r[key] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


IBOT = {"ibot": {"enabled": True, "center_momentum": 1.0}}
POSFIELD = {"posfield": {"field_size": 8}}


@pytest.mark.parametrize("plugins, extra", [({}, {}), (None, {}), ({}, IBOT), (POSFIELD, IBOT)],
                         ids=["dino", "dino+sp", "dino+ibot", "dino+ibot+posfield"])
def test_loss_goes_down(tiny_cfg, tmp_path, plugins, extra):
    # DINO's target moves (EMA teacher, centre, temperature warm-up), and at this scale its loss
    # drifts up before it comes down. To test that the student's loss, gradients and optimizer
    # work, the teacher and centre are held fixed (momentum 1): the student must then fit them.
    over = {"total_steps": 40, "log_every": 1, "ckpt_every": 40,
            "dino.warmup_teacher_temp": 0.04, "dino.teacher_temp": 0.04, "dino.momentum_teacher": 1.0,
            "dino.center_momentum": 1.0, "optim.warmup_steps": 1}
    if plugins is not None:
        over["plugins"] = plugins
    cfg = tiny_cfg(**over, **extra)
    res = train(cfg, tmp_path, progress=False)
    total = _losses(tmp_path, "loss")
    assert np.mean(total[-8:]) < np.mean(total[:8]) - 0.05, total
    if plugins is None:
        sp = _losses(tmp_path, "loss/sp")
        assert np.mean(sp[-8:]) < np.mean(sp[:8]), sp
    if extra:  # the masked-prediction term is learnt too
        ibot = _losses(tmp_path, "loss/ibot")
        assert np.mean(ibot[-8:]) < np.mean(ibot[:8]), ibot
    if plugins == POSFIELD:
        # position-masked sites keep their content, so the student starts near the teacher there and
        # this term stays near its floor at this scale: only check that it is scored (nearly) every step
        pos = np.array(_losses(tmp_path, "loss/posfield"))
        assert (pos > 0).mean() >= 0.9, pos
    assert res.backbone.is_file()
    model, info = load_backbone(res.backbone)
    assert info["source"] == "teacher" and info["step"] == 40
    # the exported backbone is a plain timm ViT: no SP or DINO head weights inside
    keys = load_file(str(res.backbone)).keys()
    assert not any(k.startswith(("plugins", "dino_head", "head.")) for k in keys if k != "head")


@pytest.mark.parametrize("extra", [{}, {"ibot": {"enabled": True}, "plugins": {**POSFIELD, **tiny_train_dict()["plugins"]}}],
                         ids=["dino+sp", "masks+posfield+sp"])
def test_resume_is_exact(tiny_cfg, tmp_path, extra):
    cfg = tiny_cfg(total_steps=8, ckpt_every=4, **{"model.drop_path_rate": 0.1}, **extra)
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "split", stop_at=4, progress=False)
    assert latest_checkpoint(tmp_path / "split").name == "step_00000004"
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = load_file(str(latest_checkpoint(tmp_path / "straight") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "split") / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    # the two halves continue one metrics log
    steps = [r["step"] for r in map(json.loads, (tmp_path / "split" / "metrics.jsonl").read_text().splitlines())]
    assert steps == [4, 5, 8]  # logged every 5 steps and at each stop


def test_existing_run_needs_resume_and_resume_needs_a_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg(total_steps=2, plugins={})
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(cfg, tmp_path, resume=True, progress=False)
    train(cfg, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        train(cfg, tmp_path, progress=False)


def test_corrupt_images_are_skipped_during_training(tiny_cfg, tmp_path):
    from wherevit.train.data.synthetic import write_synthetic_folder

    data = tmp_path / "data"
    write_synthetic_folder(data, 12, size=48)
    (data / "scene_000003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cfg = tiny_cfg(total_steps=3, **{"data.source": "folder", "data.path": str(data), "data.global_batch_size": 12})
    res = train(cfg, tmp_path / "run", progress=False)
    assert len(res.skipped_images) == 1 and "scene_000003.png" in res.skipped_images[0]
    assert _losses(tmp_path / "run", "skipped_images")[-1] == 1


@pytest.mark.slow
@pytest.mark.parametrize("centering, extra", [("ema", {}), ("sinkhorn", {}), ("ema", {"ibot": {"enabled": True}, "plugins": POSFIELD})],
                         ids=["ema", "sinkhorn", "ema+masks+posfield"])  # all all-reduce their batch statistics
def test_two_process_ddp_matches_one_process(tmp_path, centering, extra):
    cfg = tiny_train_dict(total_steps=3, log_every=1, ckpt_every=3, **{"dino.centering": centering}, **extra)
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "wherevit.app.cli", "train", "--config", str(cfg_file), "--no-progress"]
    subprocess.run(base + ["--out", str(tmp_path / "one")], check=True, env=env, timeout=300)
    port, probe = free_port(), tmp_path / "probe"
    probe.mkdir()
    # the CLI under an exit probe: each rank also has to reach interpreter exit with its group left (issue 26)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                    "--master_addr", "127.0.0.1", "--master_port", str(port), str(EXIT_PROBE), str(probe)]
                   + base[3:] + ["--out", str(tmp_path / "two")], check=True, env=env, timeout=300)
    assert_left_cleanly(probe)
    one, two = _losses(tmp_path / "one", "loss"), _losses(tmp_path / "two", "loss")
    np.testing.assert_allclose(one[0], two[0], rtol=1e-4)  # step 1: identical data and weights
    a = load_file(str(tmp_path / "one" / "backbone.safetensors"))
    b = load_file(str(tmp_path / "two" / "backbone.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{}, {"ibot": {"enabled": True}, "plugins": POSFIELD}], ids=["dino+sp", "masks+posfield"])
def test_two_process_resume_is_exact(tmp_path, extra):
    """Each rank's drop-path RNG is saved and restored: stop + resume under DDP equals a straight run."""
    cfg = tiny_train_dict(total_steps=4, log_every=2, ckpt_every=2, **{"model.drop_path_rate": 0.2}, **extra)
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(*args):
        probe = tmp_path / f"probe{len(list(tmp_path.glob('probe*')))}"
        probe.mkdir()
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(EXIT_PROBE), str(probe), "train",
                        "--config", str(cfg_file), "--no-progress", *args], check=True, env=env, timeout=300)
        assert_left_cleanly(probe)  # also after a run stopped early (--stop-at) and after a resumed one

    torchrun("--out", str(tmp_path / "straight"))
    torchrun("--out", str(tmp_path / "split"), "--stop-at", "2")
    torchrun("--out", str(tmp_path / "split"), "--resume")
    a = load_file(str(latest_checkpoint(tmp_path / "straight") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "split") / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
