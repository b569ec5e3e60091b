"""Shared fixtures: tiny models and configs the tests build themselves (no downloads, CPU only)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


def tiny_train_dict(**over) -> dict:
    """A 2-block, width-64 ViT on 32 px crops of generated 48 px scenes: a training step takes ~50 ms."""
    d = {
        "seed": 0,
        "total_steps": 20,
        "device": "cpu",
        "log_every": 5,
        "ckpt_every": 10,
        "model": {"name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "embed_dim": 64,
                  "depth": 2, "num_heads": 2, "drop_path_rate": 0.0},
        "data": {"source": "synthetic", "synthetic_count": 64, "synthetic_size": 48, "global_batch_size": 8,
                 "num_workers": 0,
                 "crops": {"n_global": 2, "global_size": 32, "global_scale": [0.4, 1.0], "n_local": 2,
                           "local_size": 16, "local_scale": [0.1, 0.4], "blur_p": 0.0, "solarize_p": 0.0}},
        "dino": {"out_dim": 128, "hidden_dim": 64, "bottleneck_dim": 32, "warmup_teacher_temp_steps": 5},
        "optim": {"base_lr": 0.01, "warmup_steps": 3},
        "plugins": {"sp": {"weight": 0.5, "crop_size": 16, "scale": [0.05, 0.25], "hidden_dim": 64}},
    }
    for key, value in over.items():
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return d


@pytest.fixture
def tiny_cfg():
    """Factory: ``tiny_cfg(**{"plugins": {}, "total_steps": 10})`` -> validated TrainConfig."""
    from wherevit.base.config import from_dict
    from wherevit.train.config import TrainConfig

    def make(**over):
        return from_dict(TrainConfig, tiny_train_dict(**over))

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny DINO+SP run (3 steps): a real training checkpoint for export and runtime tests."""
    from wherevit.base.config import from_dict
    from wherevit.train.config import TrainConfig
    from wherevit.train.loop import train

    run = tmp_path_factory.mktemp("run")
    train(from_dict(TrainConfig, tiny_train_dict(total_steps=3, ckpt_every=3)), run, progress=False)
    return run


@pytest.fixture(scope="session")
def onnx_artifact(trained_run, tmp_path_factory):
    """fp32 ONNX (batch 1:4:8) + sidecar exported from ``trained_run``."""
    from wherevit.export.api import ExportRequest, export_artifacts

    out = tmp_path_factory.mktemp("art")
    return export_artifacts(ExportRequest(str(trained_run), out, batch=(1, 4, 8))).onnx
