"""Equivariance-coherent reconstruction (arXiv 2503.18753, AAAI-26), as a plug-in.

From the paper (its full text was read; summarised in METHODS.md): the SSL views are
``v1 = A1(I)`` and ``v2 = g_theta(u)`` with ``u = A2(I)``; K decoders reconstruct the intermediate
states ``u_k = g_{k theta / (K + 1)} u`` (K = 2: a third and two thirds of the way) from the
equivariant part of both views' patch features, concatenated per token; loss
``(1/K) sum_k ||u_hat_k - u_k||^2`` (pixel MSE on normalised pixels), weight 1 (the paper: > 5 is
unstable). The paper's method is the default (``mode: faithful``, ``features: head``):

* ``mode: faithful`` -- a data hook turns the host's global view 1 (u) into ``g_theta u`` in place,
  so v2 *is* one of the host's SSL views (student and teacher, DINO and iBOT losses) and the pair is
  the host's global views (0, 1): no extra forward pass. The hook marks view 1 ``crop_agnostic``:
  its box no longer describes its content, so a positional field embeds it crop-agnostically (the
  composition rule: the transformation must not be readable off the positions), and SCRL takes its
  own views instead of the host's.
* ``features: head`` -- z_equi is the first ``d_equi`` output channels of the SSL head's patch
  output (the student's patch head: iBOT's, or the DINO head applied to patch tokens when iBOT is
  off or shares it), and those channels are *reserved*: the host leaves them out of every SSL loss
  reading that head (softmax, centre and Sinkhorn over the remaining prototypes), as the paper
  splits z_inv (SSL loss) from z_equi. ``d_equi: 0`` (default) is a quarter of the head's width
  (the paper: 2048 of iBOT's 8192).
* transformations (``transform``): ``rotation`` (+-45 deg), ``translation`` (+-10 px at 224, i.e. a
  fraction of the view), ``se2`` (both), ``colour`` (brightness, contrast, saturation +-0.4, hue
  +-0.1 turn) and ``all`` (se2 + colour, the paper's best with iBOT and DINOv2). Intermediate states
  scale every parameter by k / (K + 1); rotations by quarter turns and the identity are exact.
* pairs and targets are made in the data workers from the per-sample generator (exact resume).

Options we keep, with why (not the paper's method):

* ``mode: decoupled`` -- the pair ``(u, g_theta u)`` is this plug-in's own student-only view group
  ``equi`` (never in the SSL loss; crop-agnostic positions under the field). It leaves the host's
  views untouched, at the price of two extra student forwards.
* ``features: projection`` -- ``Linear(D -> d_equi)`` on the student's patch tokens, no channel of
  any SSL head reserved (our earlier reconstruction, before the head split was implemented).
* Blur is not offered: a partial blur is not the blur of a partial parameter.
* The decoder is ours (the paper: one linear layer and four conv layers): per token
  ``Linear(2 d_equi -> dim)`` -> (B, dim, gh, gw) -> log2(patch) transposed convs (4, stride 2) +
  GELU, topped up with 3x3 convs to four conv layers, the last to 3 channels.

Angles are counter-clockwise in the image as displayed (OpenCV's and ``np.rot90``'s convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wherevit.base.image import IMAGENET_MEAN, IMAGENET_STD
from wherevit.train.backbone import BackboneFeatures
from wherevit.train.data.sources import DataError
from wherevit.train.data.views import ViewSpec, make_view
from wherevit.train.plugins.base import HostSpec, Plugin, PluginConfig, PluginError, StepContext, register_plugin

__all__ = ["Equivariance", "EquivarianceConfig", "sample_transform", "apply_transform", "intermediate_targets", "EquiViewSampler",
           "EquiFaithfulHook", "EquiDecoder"]

_KINDS = {"rotation": ("rotation",), "translation": ("translation",), "se2": ("rotation", "translation"),
          "colour": ("colour",), "all": ("rotation", "translation", "colour")}


@dataclass
class EquivarianceConfig(PluginConfig):
    """Hyper-parameters of the equivariance-coherence plug-in (paper defaults)."""

    weight: float = 1.0
    mode: Literal["faithful", "decoupled"] = "faithful"
    transform: Literal["rotation", "translation", "se2", "colour", "all"] = "all"
    n_intermediate: int = 2  # K
    max_rotation: float = 45.0  # degrees
    max_translation: float = 10 / 224  # fraction of the view side
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # fraction of a full hue turn
    crop_size: int = 224  # decoupled mode's own views
    scale: tuple[float, float] = (0.32, 1.0)
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    features: Literal["head", "projection"] = "head"
    d_equi: int = 0  # 0: a quarter of the patch head's width (features: head) or of the embedding (projection)
    decoder_dim: int = 256

    def validate(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")
        if self.n_intermediate < 1:
            raise ValueError(f"n_intermediate must be >= 1, got {self.n_intermediate}")
        if not 0 <= self.max_rotation <= 180:
            raise ValueError(f"max_rotation must be in [0, 180] degrees, got {self.max_rotation}")
        if not 0 <= self.max_translation < 0.5:
            raise ValueError(f"max_translation must be a fraction of the view in [0, 0.5), got {self.max_translation}")
        for key in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        if self.crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {self.crop_size}")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if self.d_equi < 0 or self.decoder_dim < 1:
            raise ValueError("d_equi must be >= 0 (0: a quarter of the head width) and decoder_dim >= 1")


def sample_transform(rng: np.random.Generator, cfg: EquivarianceConfig) -> np.ndarray:
    """g_theta's parameters ``(angle_deg, tx, ty, brightness, contrast, saturation, hue)``: zero
    for every part the configured ``transform`` leaves out (translations as view fractions,
    colour as offsets from the identity factor 1, hue as a fraction of a turn)."""
    parts = _KINDS[cfg.transform]
    p = np.zeros(7, np.float64)
    if "rotation" in parts:
        p[0] = rng.uniform(-cfg.max_rotation, cfg.max_rotation)
    if "translation" in parts:
        p[1:3] = rng.uniform(-cfg.max_translation, cfg.max_translation, 2)
    if "colour" in parts:
        p[3:6] = rng.uniform(-1, 1, 3) * (cfg.brightness, cfg.contrast, cfg.saturation)
        p[6] = rng.uniform(-cfg.hue, cfg.hue)
    return p


def _colour(img: np.ndarray, b: float, c: float, s: float, h: float) -> np.ndarray:
    out = img.astype(np.float32) * (1 + b)
    mean = out.mean()
    out = (out - mean) * (1 + c) + mean
    gray = out @ np.array([0.299, 0.587, 0.114], np.float32)
    out = np.clip((out - gray[..., None]) * (1 + s) + gray[..., None], 0, 255)
    if h != 0:
        hsv = cv2.cvtColor(out.astype(np.uint8), cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + h * 256) % 256
        out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def apply_transform(img: np.ndarray, params: np.ndarray, frac: float = 1.0) -> np.ndarray:
    """``g_{frac * theta}`` of an HxWx3 uint8 image (every parameter scaled by ``frac``).

    Geometry first (rotation about the image centre, then translation; uncovered pixels black),
    then colour. The identity and rotations by whole quarter turns without translation are exact
    (``np.rot90``), so ``frac = 0`` gives the image back and 270 deg in thirds gives rot90, rot180.
    """
    angle, tx, ty, b, c, s, h = (float(v) * frac for v in params)
    H, W = img.shape[:2]
    out = img
    quarter = angle / 90.0
    if tx == 0 and ty == 0 and abs(quarter - round(quarter)) < 1e-9:
        k = int(round(quarter)) % 4
        if k:
            out = np.ascontiguousarray(np.rot90(out, k))
    else:
        m = cv2.getRotationMatrix2D(((W - 1) / 2, (H - 1) / 2), angle, 1.0)
        m[:, 2] += (tx * W, ty * H)
        out = cv2.warpAffine(out, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if b or c or s or h:
        out = _colour(out, b, c, s, h)
    return out


def intermediate_targets(u: np.ndarray, params: np.ndarray, k: int) -> list[np.ndarray]:
    """``[g_{j theta / (k + 1)} u for j = 1..k]``: the states between u and g_theta u."""
    return [apply_transform(u, params, j / (k + 1)) for j in range(1, k + 1)]


class EquiViewSampler:
    """Data-side half (picklable): group ``equi`` = views ``[u, g_theta u]`` (same box, unflipped),
    with ``targets`` (K, 3, S, S) uint8 and ``params`` (7,) float32."""

    def __init__(self, cfg: EquivarianceConfig):
        self.cfg = cfg
        self.spec = ViewSpec(cfg.crop_size, cfg.scale, flip_p=0.0, color_jitter_p=cfg.color_jitter_p,
                             grayscale_p=cfg.grayscale_p)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> dict:
        if min(img.shape[:2]) < 2:
            raise DataError(f"equivariance: an image of {img.shape[0]}x{img.shape[1]} pixels is too small to crop a view from")
        chw, box, _ = make_view(img, self.spec, rng)
        u = chw.transpose(1, 2, 0)
        p = sample_transform(rng, self.cfg)
        v2 = apply_transform(u, p)
        targets = intermediate_targets(u, p, self.cfg.n_intermediate)
        hwc_to_chw = lambda a: np.ascontiguousarray(a.transpose(2, 0, 1))
        return {"equi": {
            "images": np.stack([chw, hwc_to_chw(v2)]),
            "boxes": np.stack([box, box]).astype(np.float32),
            "flips": np.zeros(2, bool),
            "targets": np.stack([hwc_to_chw(t) for t in targets]),
            "params": p.astype(np.float32),
        }}


class EquiFaithfulHook:
    """Faithful mode's data half (picklable sample hook): turns the host's global view 1 (u) into
    ``v2 = g_theta u`` in place, marks it ``crop_agnostic`` (its box no longer describes it), and adds
    ``sample["equi"] = {"targets": (K, 3, S, S), "params": (7,)}``."""

    view = 1  # the host global view that becomes v2 (view 0 stays v1 = A1(I))

    def __init__(self, cfg: EquivarianceConfig):
        self.cfg = cfg

    def __call__(self, sample: dict, img: np.ndarray, rng: np.random.Generator, position: int | None) -> None:
        g = sample["global"]
        u = np.ascontiguousarray(g["images"][self.view].transpose(1, 2, 0))
        p = sample_transform(rng, self.cfg)
        g["images"][self.view] = apply_transform(u, p).transpose(2, 0, 1)
        agnostic = g.get("crop_agnostic")
        if agnostic is None:
            agnostic = np.zeros(len(g["images"]), dtype=bool)
        agnostic[self.view] = True
        g["crop_agnostic"] = agnostic
        targets = intermediate_targets(u, p, self.cfg.n_intermediate)
        sample["equi"] = {"targets": np.stack([t.transpose(2, 0, 1) for t in targets]), "params": p.astype(np.float32)}


class EquiDecoder(nn.Module):
    """Per-token linear layer, then four conv layers back to a (B, 3, gh p, gw p) image."""

    def __init__(self, in_dim: int, dim: int, patch: int, n_conv: int = 4):
        super().__init__()
        n_up = int(round(math.log2(patch)))
        if 2**n_up != patch:
            raise ValueError(f"equivariance decoder: patch size {patch} is not a power of two")
        self.linear = nn.Linear(in_dim, dim)
        layers: list[nn.Module] = []
        ch = dim
        n = max(n_conv, n_up)
        for i in range(n):
            last = i == n - 1
            nxt = 3 if last else max(ch // 2, 16)
            if i < n_up:
                layers.append(nn.ConvTranspose2d(ch, nxt, 4, stride=2, padding=1))
            else:
                layers.append(nn.Conv2d(ch, nxt, 3, padding=1))
            if not last:
                layers.append(nn.GELU())
            ch = nxt
        self.convs = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """tokens (B, N, in_dim) on a gh x gw grid -> (B, 3, gh * patch, gw * patch)."""
        x = self.linear(tokens)
        B, N, D = x.shape
        return self.convs(x.transpose(1, 2).reshape(B, D, grid[0], grid[1]))


@register_plugin
class Equivariance(Plugin):
    """Reconstruct the intermediate states of ``u -> g_theta u`` from both views' patch features."""

    name = "equivariance"
    Config = EquivarianceConfig
    student_views = ("equi",)

    def __init__(self, cfg: EquivarianceConfig, embed_dim: int):
        super().__init__(cfg, embed_dim)
        if cfg.mode == "faithful":
            self.student_views = ()  # the pair is the host's global views
            self.alters_host_views = True
        self.proj: nn.Linear | None = None  # features: projection (built in setup, when d_equi is known)
        self.decoders = nn.ModuleList()
        self.d_equi = cfg.d_equi
        mean, std = torch.tensor(IMAGENET_MEAN) * 255, torch.tensor(IMAGENET_STD) * 255
        self.register_buffer("mean", mean.view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 1, 3, 1, 1), persistent=False)

    def setup(self, host: HostSpec) -> None:
        super().setup(host)
        c = self.cfg
        if c.mode == "decoupled" and c.crop_size % host.patch_size:
            raise PluginError(f"plugins.equivariance.crop_size ({c.crop_size}) must be a multiple of the patch "
                              f"size ({host.patch_size})")
        if c.features == "head":
            self.d_equi = c.d_equi or max(1, host.patch_head_dim // 4)  # the paper's split: a quarter of the head
            if self.d_equi >= host.patch_head_dim:
                raise PluginError(f"plugins.equivariance.d_equi ({self.d_equi}) must be smaller than the patch head's "
                                  f"{host.patch_head_dim} output channels: the SSL losses keep the rest")
            self.reserved_head_channels = self.d_equi
        else:
            self.d_equi = c.d_equi or max(1, self.embed_dim // 4)
            self.proj = nn.Linear(self.embed_dim, self.d_equi)
        try:
            self.decoders = nn.ModuleList(EquiDecoder(2 * self.d_equi, c.decoder_dim, host.patch_size)
                                          for _ in range(c.n_intermediate))
        except ValueError as e:
            raise PluginError(f"plugins.equivariance: {e}") from e

    def view_sampler(self) -> EquiViewSampler | None:
        return EquiViewSampler(self.cfg) if self.cfg.mode == "decoupled" else None

    def data_hook(self) -> EquiFaithfulHook | None:
        return EquiFaithfulHook(self.cfg) if self.cfg.mode == "faithful" else None

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, K, 3, S, S) -> normalised float, as the backbone sees images."""
        return (x.float() - self.mean) / self.std

    def equivariant_features(self, patch: torch.Tensor, ctx: StepContext | None) -> torch.Tensor:
        """z_equi (..., N, d_equi) of patch tokens (..., N, D): the reserved leading channels of the
        student's patch head (``features: head``) or the projection."""
        if self.proj is not None:
            return self.proj(patch)
        if ctx is None or ctx.student_patch_head is None:
            raise PluginError("plugins.equivariance.features: 'head' needs the host's patch head (ctx.student_patch_head)")
        return ctx.student_patch_head(patch, channels=slice(0, self.d_equi))

    def forward(self, student: Mapping[str, BackboneFeatures], teacher: Mapping[str, BackboneFeatures],
                batch: Mapping[str, Any], ctx: StepContext | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        faithful = self.cfg.mode == "faithful"
        B = batch["equi"]["targets"].shape[0]
        f = student["global" if faithful else "equi"]  # view-major: view 0 (v1 / u) of every sample, then view 1
        f = f[: 2 * B]
        z1, z2 = self.equivariant_features(f.patch, ctx).chunk(2)
        tokens = torch.cat([z1, z2], dim=-1)
        targets = self._pixels(batch["equi"]["targets"])  # (B, K, 3, S, S)
        losses = [F.mse_loss(dec(tokens, f.grid).float(), targets[:, k]) for k, dec in enumerate(self.decoders)]
        loss = torch.stack(losses).mean()
        with torch.no_grad():  # the "copy the second view" baseline the decoders must beat
            v2 = self._pixels(batch["global" if faithful else "equi"]["images"][:, 1:2])
            copy = ((targets - v2) ** 2).mean()
        return loss, {"equivariance/copy_baseline": copy}
