"""posfield -- the crop-aligned positional field with positional masking (Liu, Suganuma, Okatani 2025).

docs/METHODS.md, "Crop-aligned positional field". A learnable field P (1, D, S, S) lives in the backbone
(``backbone.pos_field``: the teacher gets it by EMA, checkpoints carry it). Each view's patch
positional embeddings are P sampled (bilinear, ``align_corners=False``) at the view's patch centres
in original-image coordinates, after a per-image scale/translation ``(u, v) = s (x, y) + t``
(s ~ Beta(2, 5), t ~ U(0, 1 - s) per axis) shared by all views of the image. CLS keeps timm's
embedding. The DINO views (and the groups a plug-in lists in ``crop_aligned_views``) are
crop-aligned; every other plug-in group gets the crop-agnostic embedding -- the field over the full
frame at the export setting, the same for every box -- so no geometric target leaks.

Positional masking (content kept, positional embedding replaced by a learned ``pos_mask_token`` at
a cross-wise pattern of whole rows and columns) never overlaps content masking on a crop. Which
crops get it (``pos_mask_on``):

* ``content_masked`` (default; the paper as our second-hand reading has it: 50:50 per image) -- of
  the global crops the iBOT hook masked, a share ``pos_mask_share`` (0.5) is masked positionally
  instead, with as many sites. DINO + iBOT + posfield then content-masks half as many crops as
  DINO + iBOT.
* ``unmasked`` (an option, used by the study) -- of the global crops iBOT left unmasked, a share
  ``pos_mask_share`` gets a positional mask at a ratio drawn from ``ibot.mask_ratio``; content
  masking is exactly DINO + iBOT's (the iBOT hook's own generator draws the same masks), so a
  contrast against DINO + iBOT isolates the field and L_pos. With iBOT's 0.5 probability and share
  0.5, a quarter of the crops is position-masked in both modes.

The iBOT loss at the position-masked sites is this plug-in's loss (L_pos); the host's iBOT loss
covers the content-masked ones (L_content).

A host view whose content no longer matches its box (per-view field ``crop_agnostic``, set by EC's
faithful mode) gets the crop-agnostic embedding as well.

Export bakes the field, sampled over the full image at ``export_scale`` ("mean": s = E[s], centred;
"full": s = 1), into timm's standard ``pos_embed`` and drops ``pos_field``: the exported backbone is
a plain timm ViT, and its info records the choice.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wherevit.base.config import ConfigError
from wherevit.train.backbone import BackboneFeatures, TokenInputs, forward_tokens, patch_grid
from wherevit.train.data.masking import MASK_PATTERNS, make_mask
from wherevit.train.plugins.base import Plugin, PluginConfig, StepContext, register_plugin, view_major

__all__ = ["PosFieldConfig", "PositionalField", "PosFieldHook", "patch_centres", "field_grid", "sample_field",
           "export_affine"]


@dataclass
class PosFieldConfig(PluginConfig):
    weight: float = 1.0  # of L_pos, the iBOT loss at position-masked sites
    field_size: int = 50  # S: the field is D x S x S (the paper ablates 19)
    init_std: float = 0.02
    augment: bool = True  # per-image scale/translation of the positions
    scale_beta: tuple[float, float] = (2.0, 5.0)  # s ~ Beta(a, b)
    pos_mask_share: float = 0.5  # share of the pos_mask_on crops masked positionally (0: no positional masking)
    pos_mask_on: Literal["content_masked", "unmasked"] = "content_masked"  # which global crops (module doc)
    mask_pattern: str = "cross"  # positional mask pattern: "cross" (rows and columns), "block" or "random"
    export_scale: Literal["mean", "full"] = "mean"  # field region baked into pos_embed at export

    def validate(self) -> None:
        if self.mask_pattern not in MASK_PATTERNS:
            raise ConfigError(f"plugins.posfield.mask_pattern: unknown mask pattern {self.mask_pattern!r}; "
                              f"choose from {', '.join(MASK_PATTERNS)}")
        if not 0 <= self.pos_mask_share <= 1:
            raise ConfigError(f"plugins.posfield.pos_mask_share must be in [0, 1], got {self.pos_mask_share}")
        if self.field_size < 2:
            raise ConfigError(f"plugins.posfield.field_size must be >= 2, got {self.field_size}")
        if min(self.scale_beta) <= 0:
            raise ConfigError(f"plugins.posfield.scale_beta must be positive, got {list(self.scale_beta)}")
        if self.weight < 0:
            raise ConfigError("plugins.posfield.weight must be >= 0")


def export_affine(cfg: PosFieldConfig) -> tuple[float, float, float]:
    """(s, tx, ty) of the crop-agnostic / exported embedding: the mean scale centred, or identity."""
    if cfg.export_scale == "full" or not cfg.augment:
        return 1.0, 0.0, 0.0
    a, b = cfg.scale_beta
    s = a / (a + b)
    return s, (1 - s) / 2, (1 - s) / 2


def patch_centres(boxes: torch.Tensor, flips: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch centres in normalised original-image coordinates: (M, 4) (cx, cy, w, h) boxes and (M,)
    flips -> (M, gh, gw, 2) as (x, y). A flipped view's column j shows the box's column gw - 1 - j."""
    gh, gw = grid
    boxes = boxes.float()
    x0 = boxes[:, 0] - boxes[:, 2] / 2
    y0 = boxes[:, 1] - boxes[:, 3] / 2
    j = torch.arange(gw, device=boxes.device, dtype=torch.float32) + 0.5
    i = torch.arange(gh, device=boxes.device, dtype=torch.float32) + 0.5
    j = torch.where(flips.bool()[:, None], gw - j[None], j[None])  # (M, gw)
    xs = x0[:, None] + j * (boxes[:, 2:3] / gw)
    ys = y0[:, None] + i[None] * (boxes[:, 3:4] / gh)
    return torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)


def field_grid(centres: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """grid_sample coordinates in [-1, 1] of centres (M, gh, gw, 2) under (M, 3) (s, tx, ty)."""
    s = affine[:, 0].view(-1, 1, 1, 1)
    t = affine[:, 1:3].view(-1, 1, 1, 2)
    return 2 * (s * centres + t) - 1


def sample_field(field: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Field (1, D, S, S) at (M, gh, gw, 2) coordinates -> (M, gh * gw, D) positional embeddings."""
    M = grid.shape[0]
    out = F.grid_sample(field.expand(M, -1, -1, -1), grid.to(field.dtype), mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out.flatten(2).transpose(1, 2)


_FULL_FRAME = torch.tensor([[0.5, 0.5, 1.0, 1.0]])  # (cx, cy, w, h): the whole image


@torch.no_grad()
def _bake_check(backbone: nn.Module, with_field: dict, baked: dict, pos: torch.Tensor) -> float:
    """Max |difference| between the baked plain ViT and the field-based forward on one random image
    (recorded with the export notes, so every export says how well the bake holds)."""
    field_model, plain = copy.deepcopy(backbone).eval(), copy.deepcopy(backbone).eval()
    field_model.register_parameter("pos_field", nn.Parameter(with_field["pos_field"].clone()))
    field_model.load_state_dict(with_field, strict=True)
    plain.load_state_dict(baked, strict=True)
    size = tuple(int(v) for v in backbone.patch_embed.img_size)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    ref = forward_tokens(field_model, x, TokenInputs(pos=pos))
    out = plain.forward_features(x)
    return float(max((out[:, 0] - ref.cls).abs().max(), (out[:, plain.num_prefix_tokens:] - ref.patch).abs().max()))


class PosFieldHook:
    """Sample hook (picklable): the image's (s, tx, ty) and the positional masks of the global crops."""

    def __init__(self, cfg: PosFieldConfig, global_grid: tuple[int, int], n_global: int,
                 mask_ratio: tuple[float, float] = (0.1, 0.5)):
        self.cfg, self.grid, self.n_global = cfg, tuple(global_grid), n_global
        self.mask_ratio = tuple(mask_ratio)

    def __call__(self, sample: dict, img: np.ndarray, rng: np.random.Generator, position: int | None) -> None:
        c = self.cfg
        if c.augment:
            s = float(rng.beta(*c.scale_beta))
            tx, ty = rng.uniform(0.0, 1.0 - s, size=2)
        else:
            s, tx, ty = 1.0, 0.0, 0.0
        sample["posfield"] = {"affine": np.array([s, tx, ty], dtype=np.float32)}
        grp = sample["global"]
        pos = np.zeros((self.n_global, *self.grid), dtype=bool)
        masks = grp.get("masks")
        if masks is not None and c.pos_mask_share > 0:
            n_sites = self.grid[0] * self.grid[1]
            for v in range(self.n_global):
                n = int(masks[v].sum())
                if c.pos_mask_on == "content_masked":
                    if n and rng.random() < c.pos_mask_share:  # exclusive: this crop keeps its content
                        pos[v] = make_mask(c.mask_pattern, rng, self.grid, n)
                        masks[v] = False
                elif not n and rng.random() < c.pos_mask_share:  # a crop iBOT left unmasked
                    ratio = rng.uniform(*self.mask_ratio)
                    pos[v] = make_mask(c.mask_pattern, rng, self.grid, max(1, int(round(ratio * n_sites))))
        grp["pos_masks"] = pos


@register_plugin
class PositionalField(Plugin):
    name = "posfield"
    Config = PosFieldConfig
    provides_positions = True

    def __init__(self, cfg: PosFieldConfig, embed_dim: int):
        super().__init__(cfg, embed_dim)
        self.pos_mask_token = nn.Parameter(torch.zeros(embed_dim))

    @property
    def requires_ibot(self) -> bool:  # positional masking is scored by the iBOT loss
        return self.cfg.pos_mask_share > 0

    @classmethod
    def check_run_config(cls, cfg: PosFieldConfig, run: Any) -> None:
        if cfg.pos_mask_share > 0 and not run.ibot.enabled:
            raise ConfigError("plugins.posfield needs iBOT masked prediction for positional masking: set ibot.enabled: true "
                              "(or plugins.posfield.pos_mask_share: 0 for the field alone)")

    @property
    def ibot_sites(self) -> tuple[str, ...]:
        return ("pos_masks",) if self.cfg.pos_mask_share > 0 else ()

    def attach(self, backbone: nn.Module) -> None:
        if getattr(backbone, "pos_embed", None) is None:
            raise ConfigError("plugins.posfield needs a backbone with a positional embedding, but this model.name has "
                              "none (pos_embed is None); choose a ViT with pos_embed or disable the plug-in")
        S = self.cfg.field_size
        field = torch.empty(1, backbone.embed_dim, S, S)
        nn.init.trunc_normal_(field, std=self.cfg.init_std)
        backbone.register_parameter("pos_field", nn.Parameter(field))

    def data_hook(self) -> PosFieldHook:
        g = self.host.crops.global_size // self.host.patch_size
        return PosFieldHook(self.cfg, (g, g), self.host.crops.n_global, self.host.ibot.mask_ratio)

    def positions(self, backbone: nn.Module, group: str, batch: Mapping[str, Any], crop_aligned: bool) -> torch.Tensor:
        grp = batch[group]
        B, V = grp["images"].shape[:2]
        grid = patch_grid(backbone, tuple(grp["images"].shape[-2:]))
        field = backbone.pos_field
        full = self.agnostic_positions(field, grid)  # (1, N, D): one full-frame embedding, nothing of the box
        if not crop_aligned:
            return full.expand(V * B, -1, -1)
        boxes, flips = view_major(grp["boxes"]), view_major(grp["flips"])
        affine = batch["posfield"]["affine"].float().repeat(V, 1)  # view v, sample b -> row v * B + b
        pos = sample_field(field, field_grid(patch_centres(boxes, flips, grid), affine))
        if "crop_agnostic" in grp:  # views whose content no longer matches their box (EC's v2)
            pos = torch.where(view_major(grp["crop_agnostic"]).bool()[:, None, None], full, pos)
        return pos

    def agnostic_positions(self, field: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The crop-agnostic embedding (1, gh * gw, D): the field over the full frame at the export setting."""
        full = _FULL_FRAME.to(field.device)
        affine = torch.tensor([export_affine(self.cfg)], device=field.device)
        return sample_field(field, field_grid(patch_centres(full, torch.zeros(1, device=field.device), grid), affine))

    def forward(self, student: Mapping[str, BackboneFeatures], teacher: Mapping[str, BackboneFeatures],
                batch: Mapping[str, Any], ctx: StepContext | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if ctx is None or ctx.ibot_loss_fn is None or not self.ibot_sites:
            # field only: no loss of its own; tie the mask token in so DDP sees every parameter used
            return self.pos_mask_token.sum() * 0.0, {}
        loss = ctx.ibot_loss("pos_masks")
        return loss, {"posfield/masked_share": batch["global"]["pos_masks"].float().mean()}

    @classmethod
    def export_backbone_state(cls, cfg: PosFieldConfig, state: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, Any]:
        if "pos_field" not in state:
            return {}
        with_field = {k: v for k, v in state.items()}
        field = state.pop("pos_field").float()
        n_pe_prefix = 0 if backbone.no_embed_class else backbone.num_prefix_tokens
        grid = tuple(int(g) for g in backbone.patch_embed.grid_size)
        s, tx, ty = export_affine(cfg)
        with torch.no_grad():
            pos = sample_field(field, field_grid(patch_centres(_FULL_FRAME, torch.zeros(1), grid), torch.tensor([[s, tx, ty]])))
        pe = state["pos_embed"]
        state["pos_embed"] = torch.cat([pe[:, :n_pe_prefix], pos.to(pe.dtype)], dim=1).contiguous()
        return {"positional": {"kind": "posfield", "baked_into": "pos_embed", "export_scale": cfg.export_scale,
                               "affine": [s, tx, ty], "field_size": int(field.shape[-1]), "grid": list(grid),
                               "field_forward_max_abs_diff": _bake_check(backbone, with_field, state, pos)}}
