"""Tiny timm ViTs and weights files in the layouts people publish, written by the tests (no download).

Importing this module registers three tiny architectures with timm, the way a user registers a
custom one (``@register_model``), so the CLI can name them:

* ``wvtest_tiny_patch8_32``: a plain ViT (patch 8, 32 px, width 64, 2 blocks): the DINO, iBOT, MAE
  and timm layouts.
* ``wvtest_tiny_patch14_dinov2`` / ``wvtest_tiny_patch14_reg4_dinov2``: ``vit_small_patch14_dinov2``
  (and its reg4 variant) at width 64 and 2 blocks, with DINOv2's layer scale and its 518 px
  (37 x 37) position grid. The reg4 model's pretrained config (tag ``wvtest``) names
  ``PRETRAINED_FILE``, so ``pretrained=True`` loads it through timm's own pretrained path with no
  network.

``write_layout(layout, model, path)`` writes ``model``'s weights in one layout; the two-network
layouts put ``model`` in the teacher and a perturbed copy in the student.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import _cfg, _create_vision_transformer

PRETRAINED_FILE = Path(tempfile.gettempdir()) / f"wherevit-wvtest-{os.getpid()}" / "tiny_reg4_dinov2.pth"

_IN = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, num_classes=0)
default_cfgs = generate_default_cfgs({  # read by @register_model from this module
    "wvtest_tiny_patch8_32.wvtest": _cfg(input_size=(3, 32, 32), **_IN),
    "wvtest_tiny_patch14_dinov2.wvtest": _cfg(input_size=(3, 518, 518), crop_pct=1.0, **_IN),
    "wvtest_tiny_patch14_reg4_dinov2.wvtest": _cfg(file=str(PRETRAINED_FILE), input_size=(3, 518, 518), crop_pct=1.0, **_IN),
})


@register_model
def wvtest_tiny_patch8_32(pretrained: bool = False, **kwargs):
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
    return _create_vision_transformer("wvtest_tiny_patch8_32", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def wvtest_tiny_patch14_dinov2(pretrained: bool = False, **kwargs):
    args = dict(img_size=518, patch_size=14, embed_dim=64, depth=2, num_heads=2, init_values=1e-5)
    return _create_vision_transformer("wvtest_tiny_patch14_dinov2", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def wvtest_tiny_patch14_reg4_dinov2(pretrained: bool = False, **kwargs):
    args = dict(img_size=518, patch_size=14, embed_dim=64, depth=2, num_heads=2, init_values=1e-5, reg_tokens=4,
                no_embed_class=True)
    return _create_vision_transformer("wvtest_tiny_patch14_reg4_dinov2", pretrained=pretrained, **dict(args, **kwargs))


PLAIN, DINOV2, DINOV2_REG = "wvtest_tiny_patch8_32", "wvtest_tiny_patch14_dinov2", "wvtest_tiny_patch14_reg4_dinov2"
# layout -> the tiny model it is written from
LAYOUT_MODELS = {
    "timm": PLAIN, "timm-safetensors": PLAIN, "timm-train": PLAIN, "dino-release": PLAIN, "dino-train": PLAIN,
    "ibot-train": PLAIN, "ibot-release": PLAIN, "mae": PLAIN, "dinov2": DINOV2, "dinov2-reg4": DINOV2_REG,
    "dinov2-train": DINOV2_REG,
}
# what read_weights reports for each
DETECTED = {"timm": "timm", "timm-safetensors": "timm", "timm-train": "timm-train", "dino-release": "timm",
            "dino-train": "dino-train", "ibot-train": "ibot-train", "ibot-release": "state_dict", "mae": "mae",
            "dinov2": "dinov2", "dinov2-reg4": "dinov2", "dinov2-train": "dinov2-train"}


def tiny_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """``name`` with every tensor drawn from ``seed`` (no zero biases or constant layer scales: a
    dropped or swapped tensor changes the features)."""
    import timm

    gen = torch.Generator().manual_seed(seed)
    model = timm.create_model(name, num_classes=0, **kwargs)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if pname.endswith(("norm1.weight", "norm2.weight", "norm.weight")) else 0.1 * noise)
    return model.eval()


def _perturbed(state: dict, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in state.items()}


def official_dinov2(state: dict, seed: int = 2) -> dict:
    """A timm DINOv2 state dict in the official release's names: ``register_tokens``, the CLS slot in
    ``pos_embed`` (with a position of its own), and the ``mask_token``."""
    gen = torch.Generator().manual_seed(seed)
    dim = state["cls_token"].shape[-1]
    out = {("register_tokens" if k == "reg_token" else k): v.clone() for k, v in state.items()}
    if "reg_token" in state:  # timm folds the CLS position into cls_token; the release keeps it in pos_embed
        cls_pos = 0.1 * torch.randn(1, 1, dim, generator=gen)
        out["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
        out["cls_token"] = state["cls_token"] - cls_pos
    out["mask_token"] = 0.1 * torch.randn(1, dim, generator=gen)
    return out


def _chunked(state: dict, n_chunks: int) -> dict:
    """DINOv2's FSDP block chunks: ``blocks.<i>.`` -> ``blocks.<chunk>.<i>.``."""
    import re

    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    per = depth // n_chunks
    return {re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m.group(1)) // per}.{m.group(1)}.", k): v for k, v in state.items()}


def _head(prefix: str, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {f"{prefix}mlp.0.weight": torch.randn(32, 64, generator=gen), f"{prefix}mlp.0.bias": torch.randn(32, generator=gen),
            f"{prefix}last_layer.weight_g": torch.ones(128, 1), f"{prefix}last_layer.weight_v": torch.randn(128, 32, generator=gen)}


def write_layout(layout: str, model: torch.nn.Module, path: Path) -> Path:
    """``model``'s weights as ``layout`` (see ``LAYOUT_MODELS``) at ``path``."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    dim = sd["cls_token"].shape[-1]
    gen = torch.Generator().manual_seed(3)
    args = argparse.Namespace(arch="vit_small", patch_size=8, out_dim=128, lr=5e-4, data_path="/data/imagenet")
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}
    if layout == "timm-safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
        return path
    if layout in ("timm", "dino-release"):
        obj = sd
    elif layout == "timm-train":
        obj = {"epoch": 7, "arch": "vit_small_patch8_224", "state_dict": _perturbed(sd), "state_dict_ema": sd,
               "optimizer": optimizer, "args": args, "version": 2}
    elif layout in ("dino-train", "ibot-train"):
        teacher = {f"backbone.{k}": v for k, v in sd.items()} | _head("head.", 4)
        student = {f"module.backbone.{k}": v for k, v in _perturbed(sd).items()} | _head("module.head.", 5)
        obj = {"student": student, "teacher": teacher, "optimizer": optimizer, "epoch": 3, "args": args}
        if layout == "ibot-train":
            teacher["backbone.masked_embed"] = 0.1 * torch.randn(1, dim, generator=gen)
            student["module.backbone.masked_embed"] = teacher["backbone.masked_embed"] + 1
            obj["ibot_loss"] = {"center": torch.randn(1, 128, generator=gen), "center2": torch.randn(1, 1, 128, generator=gen)}
        else:
            obj["dino_loss"] = {"center": torch.randn(1, 128, generator=gen)}
    elif layout == "ibot-release":
        obj = {"state_dict": sd | {"masked_embed": 0.1 * torch.randn(1, dim, generator=gen)}}
    elif layout == "mae":
        dec = {"mask_token": torch.randn(1, 1, 32, generator=gen), "decoder_embed.weight": torch.randn(32, dim, generator=gen),
               "decoder_embed.bias": torch.randn(32, generator=gen), "decoder_pos_embed": torch.randn(1, 17, 32, generator=gen),
               "decoder_blocks.0.norm1.weight": torch.randn(32, generator=gen), "decoder_norm.weight": torch.randn(32, generator=gen),
               "decoder_pred.weight": torch.randn(192, 32, generator=gen)}
        obj = {"model": sd | dec, "optimizer": optimizer, "epoch": 1, "scaler": {"scale": 65536.0}, "args": args}
    elif layout in ("dinov2", "dinov2-reg4"):
        obj = official_dinov2(sd)
    elif layout == "dinov2-train":
        teacher = _chunked(official_dinov2(sd), 2)
        student = _chunked(official_dinov2(_perturbed(sd)), 2)
        obj = {"model": {f"teacher.backbone.{k}": v for k, v in teacher.items()} | _head("teacher.dino_head.", 6)
               | {f"student.backbone.{k}": v for k, v in student.items()} | _head("student.dino_head.", 7),
               "optimizer": optimizer, "iteration": 1249}
    else:
        raise ValueError(f"no writer for layout {layout!r}")
    torch.save(obj, path)
    return path
