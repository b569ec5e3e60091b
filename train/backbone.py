"""Backbones: timm VisionTransformers by name, and their typed feature output.

``create_backbone`` builds any timm ViT with config overrides (no classifier, fused SDPA attention,
``pretrained=False`` unless asked). ``backbone_features`` returns a ``BackboneFeatures`` (CLS token
and patch grid) -- the one return type heads, plug-ins, export and evaluations consume.

``forward_tokens`` is the token-level path pretraining uses: timm's own sub-modules in timm's order
(patch embed -> [content mask token] -> positional embedding [per-sample override, positional mask
token] -> prefix tokens -> blocks -> norm), without forking timm. With no ``TokenInputs`` it computes
exactly what ``forward_features`` computes (tested bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from wherevit.base.errors import InvalidRequest

__all__ = [
    "BackboneFeatures", "TokenInputs", "timm_kwargs", "create_backbone", "backbone_features", "forward_tokens",
    "patch_grid", "patch_pos_embed", "describe_backbone", "embed_images",
]


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

    def patch_map(self) -> torch.Tensor:
        """The patch tokens as a (B, D, gh, gw) feature map."""
        B, _, D = self.patch.shape
        return self.patch.transpose(1, 2).reshape(B, D, *self.grid)

    def roi_align(self, rois: torch.Tensor, output_size: tuple[int, int], sampling_ratio: int = -1) -> torch.Tensor:
        """RoIAlign over the patch grid (torchvision, ``aligned=True``): ``rois`` (K, 5) rows
        ``(image index, x0, y0, x1, y1)`` in normalised view coordinates -> (K, D, oh, ow).
        The box (0, 0, 1, 1) with ``output_size == grid`` returns the patch grid itself."""
        from torchvision.ops import roi_align

        gh, gw = self.grid
        scale = torch.tensor([1.0, gw, gh, gw, gh], dtype=rois.dtype, device=rois.device)
        fmap = self.patch_map()
        return roi_align(fmap, (rois * scale).to(fmap.dtype), output_size, spatial_scale=1.0,
                         sampling_ratio=sampling_ratio, aligned=True)


@dataclass
class TokenInputs:
    """Per-sample inputs of ``forward_tokens``; each is optional, N = patches of the input's grid.

    ``mask`` (B, N) bool: content masking -- those patch embeddings are replaced by the mask token
    before the positional embedding is added (iBOT). ``pos`` (B, N, D): positional embedding of the
    patch tokens, replacing timm's (prefix tokens keep timm's own). ``pos_mask`` (B, N) bool:
    positional masking -- those patches get the positional mask token instead of any embedding.
    """

    mask: torch.Tensor | None = None
    pos: torch.Tensor | None = None
    pos_mask: torch.Tensor | None = None

    @property
    def empty(self) -> bool:
        return self.mask is None and self.pos is None and self.pos_mask is None

    @staticmethod
    def cat(parts: list["TokenInputs"], sizes: list[int], n_tokens: int, device: torch.device) -> "TokenInputs":
        """Concatenate along the batch; a field one part lacks is filled with its neutral value
        (no mask; for ``pos``, which has no neutral value, every part must have it or none)."""
        def join(field: str, fill):
            vals = [getattr(p, field) for p in parts]
            if all(v is None for v in vals):
                return None
            return torch.cat([v if v is not None else fill(n) for v, n in zip(vals, sizes)])

        def no_pos(n):
            raise ValueError("positional overrides must be given for every view group embedded in one call, or for none")

        no_mask = lambda n: torch.zeros(n, n_tokens, dtype=torch.bool, device=device)  # noqa: E731
        return TokenInputs(join("mask", no_mask), join("pos", no_pos), join("pos_mask", no_mask))


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


def patch_grid(model: VisionTransformer, hw: tuple[int, int]) -> tuple[int, int]:
    """The (gh, gw) patch grid ``model`` makes of an ``hw`` input."""
    gh, gw = model.patch_embed.dynamic_feat_size(hw) if model.dynamic_img_size else model.patch_embed.grid_size
    return int(gh), int(gw)


def patch_pos_embed(model: VisionTransformer, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's positional embedding for a ``grid`` input, split as (prefix part, patch part).

    The prefix part is empty for ``no_embed_class`` models (their prefix tokens get no embedding).
    """
    if model.pos_embed is None:
        raise ValueError(f"{type(model).__name__} has no positional embedding (pos_embed is None)")
    pe = model.pos_embed
    n_pe_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    if model.dynamic_img_size:
        pe = resample_abs_pos_embed(pe, new_size=grid, old_size=model.patch_embed.grid_size, num_prefix_tokens=n_pe_prefix)
    return pe[:, :n_pe_prefix], pe[:, n_pe_prefix:]


def forward_tokens(model: VisionTransformer, x: torch.Tensor, inputs: TokenInputs | None = None,
                   mask_token: torch.Tensor | None = None, pos_mask_token: torch.Tensor | None = None) -> BackboneFeatures:
    """``forward_features`` of a timm ViT, opened at the token level (see ``TokenInputs``).

    ``mask_token`` / ``pos_mask_token`` (D,) are learned by the caller (they are training-only and
    never part of the exported backbone). Additions happen in timm's order, so with no inputs the
    result equals ``forward_features`` exactly.
    """
    inputs = inputs or TokenInputs()
    tokens = model.patch_embed(x)
    if tokens.ndim == 4:  # dynamic_img_size: NHWC
        B, H, W, D = tokens.shape
        grid = (H, W)
        tokens = tokens.view(B, -1, D)
    else:
        B, _, D = tokens.shape
        grid = tuple(int(g) for g in model.patch_embed.grid_size)
    if inputs.mask is not None:
        if mask_token is None:
            raise ValueError("a content mask needs a mask_token")
        tokens = torch.where(inputs.mask.unsqueeze(-1), mask_token.to(tokens.dtype), tokens)

    prefix = [t.expand(B, -1, -1) for t in (model.cls_token, model.reg_token) if t is not None]
    if model.pos_embed is None:
        if inputs.pos is not None or inputs.pos_mask is not None:
            raise ValueError(f"{type(model).__name__} has no positional embedding to override or mask")
        tokens = torch.cat(prefix + [tokens], dim=1)
    else:
        pe_prefix, pe_patch = patch_pos_embed(model, grid)
        if inputs.pos is not None:
            pe_patch = inputs.pos
        if inputs.pos_mask is not None:
            if pos_mask_token is None:
                raise ValueError("a positional mask needs a pos_mask_token")
            pe_patch = torch.where(inputs.pos_mask.unsqueeze(-1), pos_mask_token.to(pe_patch.dtype), pe_patch)
        tokens = tokens + pe_patch
        if prefix:
            prefix_tokens = torch.cat(prefix, dim=1)
            if not model.no_embed_class:
                prefix_tokens = prefix_tokens + pe_prefix
            tokens = torch.cat([prefix_tokens, tokens], dim=1)
    tokens = model.pos_drop(tokens)
    tokens = model.patch_drop(tokens)
    tokens = model.norm_pre(tokens)
    if model.grad_checkpointing and not torch.jit.is_scripting():
        from timm.models._manipulate import checkpoint_seq

        tokens = checkpoint_seq(model.blocks, tokens)
    else:
        tokens = model.blocks(tokens)
    tokens = model.norm(tokens)
    n_prefix = model.num_prefix_tokens
    return BackboneFeatures(cls=tokens[:, 0], patch=tokens[:, n_prefix:], grid=grid)


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
