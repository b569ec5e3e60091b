"""Backbones: timm VisionTransformers by name, and their typed feature output.

``create_backbone`` builds any timm ViT with config overrides (no classifier, fused SDPA attention,
``pretrained=False`` unless asked). ``backbone_features`` returns a ``BackboneFeatures`` (CLS token
and patch grid) -- the one return type heads, plug-ins, export and evaluations consume.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from wherevit.base.errors import InvalidRequest

__all__ = ["BackboneFeatures", "timm_kwargs", "create_backbone", "backbone_features", "describe_backbone", "embed_images"]


@dataclass
class BackboneFeatures:
    """Output of a ViT on a batch: ``cls`` (B, D), ``patch`` (B, N, D) with N = grid[0] * grid[1]."""

    cls: torch.Tensor
    patch: torch.Tensor
    grid: tuple[int, int]

    def pooled(self, kind: str = "cls") -> torch.Tensor:
        """One vector per image: the CLS token ("cls") or the mean patch token ("mean")."""
        if kind == "cls":
            return self.cls
        if kind == "mean":
            return self.patch.mean(dim=1)
        raise InvalidRequest(f"unknown pooling {kind!r} (use 'cls' or 'mean')")

    def __getitem__(self, sl: slice) -> "BackboneFeatures":
        return BackboneFeatures(self.cls[sl], self.patch[sl], self.grid)


def timm_kwargs(model_cfg) -> dict:
    """The keyword arguments ``timm.create_model`` gets for a ``ModelConfig`` (None values dropped)."""
    kw = {
        "img_size": model_cfg.img_size,
        "patch_size": model_cfg.patch_size,
        "embed_dim": model_cfg.embed_dim,
        "depth": model_cfg.depth,
        "num_heads": model_cfg.num_heads,
        "drop_path_rate": model_cfg.drop_path_rate,
    }
    kw = {k: v for k, v in kw.items() if v is not None}
    kw.update(model_cfg.kwargs)
    return kw


def create_backbone(name: str, *, pretrained: bool = False, dynamic_img_size: bool = True, **kwargs) -> VisionTransformer:
    """A timm VisionTransformer without classifier.

    ``dynamic_img_size`` lets one model embed 224 global and 96 local crops (the position embedding
    is interpolated per input size); export turns it off for fixed-size graphs.
    """
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, dynamic_img_size=dynamic_img_size, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            vits = [m for m in timm.list_models("vit_*")][:8]
            raise InvalidRequest(f"unknown timm model {name!r}; ViT examples: {', '.join(vits)}, ...") from e
        raise
    if not isinstance(model, VisionTransformer):
        raise InvalidRequest(f"{name!r} is a {type(model).__name__}, not a timm VisionTransformer")
    return model


def backbone_features(model: VisionTransformer, x: torch.Tensor) -> BackboneFeatures:
    """Run ``model.forward_features`` and split prefix (CLS, registers) from patch tokens."""
    tokens = model.forward_features(x)
    n_prefix = model.num_prefix_tokens
    gh, gw = model.patch_embed.dynamic_feat_size(x.shape[-2:]) if model.dynamic_img_size else model.patch_embed.grid_size
    return BackboneFeatures(cls=tokens[:, 0], patch=tokens[:, n_prefix:], grid=(int(gh), int(gw)))


@torch.no_grad()
def embed_images(model: VisionTransformer, rgb, batch_size: int = 128) -> BackboneFeatures:
    """Frozen features of (N, H, W, 3) uint8 RGB images (ImageNet normalisation), as CPU tensors."""
    from wherevit.base.image import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    device = next(model.parameters()).device
    cls, patch, grid = [], [], None
    for i in range(0, len(rgb), batch_size):
        x = (torch.from_numpy(rgb[i : i + batch_size]).permute(0, 3, 1, 2).float() / 255 - mean) / std
        f = backbone_features(model.eval(), x.to(device))
        cls.append(f.cls.float().cpu())
        patch.append(f.patch.float().cpu())
        grid = f.grid
    return BackboneFeatures(torch.cat(cls), torch.cat(patch), grid)


def describe_backbone(model: VisionTransformer) -> dict:
    """Architecture facts recorded in checkpoints and sidecars."""
    return {
        "embed_dim": int(model.embed_dim),
        "depth": len(model.blocks),
        "num_heads": int(model.blocks[0].attn.num_heads),
        "patch_size": list(model.patch_embed.patch_size),
        "img_size": list(model.patch_embed.img_size),
        "num_prefix_tokens": int(model.num_prefix_tokens),
        "fused_attn": bool(getattr(model.blocks[0].attn, "fused_attn", False)),
        "params": int(sum(p.numel() for p in model.parameters())),
    }
