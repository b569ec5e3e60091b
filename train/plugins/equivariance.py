"""Equivariance-coherent reconstruction (arXiv 2503.18753, AAAI-26), as a plug-in.

From the paper (METHODS.md, read from its full text) and issue 12: the network embeds a pair
``(u, g_theta u)``; K decoders reconstruct the intermediate states ``u_k = g_{k theta / (K + 1)} u``
(K = 2: a third and two thirds of the way) from the equivariant part of both views' patch
features, concatenated per token; loss ``(1/K) sum_k ||u_hat_k - u_k||^2`` (pixel MSE on
normalised pixels), weight 1 (the paper: > 5 is unstable).

* transformations (config ``transform``): ``rotation`` (+-45 deg), ``translation`` (+-10 px at
  224, i.e. a fraction of the view), ``se2`` (both), ``colour`` (brightness, contrast, saturation
  +-0.4, hue +-0.1 turn) and ``all`` (se2 + colour, the paper's best with iBOT and DINOv2). Blur is
  not offered: a partial blur is not the blur of a partial parameter. Intermediate states scale
  every parameter by k / (K + 1); rotations by quarter turns and the identity are exact.
* pairs and targets are made in the data workers from the per-sample generator (exact resume).
* equivariant features (``features``): ``projection`` -- ``Linear(D -> d_equi)`` on the student's
  patch tokens (our host has no patch-level SSL head unless iBOT is on); ``ibot_head`` (needs
  iBOT) -- the first ``d_equi`` output channels of the student's iBOT patch head on the pair's
  tokens, the paper's channel split. Unlike the paper, the host's iBOT loss still scores all of
  the head's channels (it knows nothing of the split), so the two losses share those channels.
* decoder (ours): per token ``Linear(2 d_equi -> dim)`` -> (B, dim, gh, gw) -> log2(patch)
  transposed convs (4, stride 2) + GELU, topped up with 3x3 convs to four conv layers, the last to
  3 channels.
* ``mode``: ``decoupled`` (default) -- the pair is this plug-in's own view group ``equi``, embedded
  with the crop-agnostic position embedding when the positional field is on; ``faithful`` -- a
  data hook turns the host's global view 1 (u) into ``g_theta u`` in place and the pair is the
  host's global views (0, 1), as in the paper (v1 = A1(I), v2 = g_theta(A2(I))): no extra forward
  passes, but view 1's box no longer describes its content, so it refuses ``posfield`` (its
  crop-aligned positions) and ``scrl`` (its boxes).

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

from wherevit.base.config import ConfigError
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
    mode: Literal["decoupled", "faithful"] = "decoupled"
    transform: Literal["rotation", "translation", "se2", "colour", "all"] = "all"
    n_intermediate: int = 2  # K
    max_rotation: float = 45.0  # degrees
    max_translation: float = 10 / 224  # fraction of the view side
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # fraction of a full hue turn
    crop_size: int = 224
    scale: tuple[float, float] = (0.32, 1.0)
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    features: Literal["projection", "ibot_head"] = "projection"
    d_equi: int = 256
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
        if self.d_equi < 1 or self.decoder_dim < 1:
            raise ValueError("d_equi and decoder_dim must be >= 1")


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
    ``g_theta u`` in place and adds ``sample["equi"] = {"targets": (K, 3, S, S), "params": (7,)}``."""

    def __init__(self, cfg: EquivarianceConfig):
        self.cfg = cfg

    def __call__(self, sample: dict, img: np.ndarray, rng: np.random.Generator, position: int | None) -> None:
        g = sample["global"]
        u = np.ascontiguousarray(g["images"][1].transpose(1, 2, 0))
        p = sample_transform(rng, self.cfg)
        g["images"][1] = apply_transform(u, p).transpose(2, 0, 1)
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
        # every owned parameter must be used each step (DDP): no projection when the head is split
        self.proj = nn.Linear(embed_dim, cfg.d_equi) if cfg.features == "projection" else None
        self.decoders = nn.ModuleList()
        mean, std = torch.tensor(IMAGENET_MEAN) * 255, torch.tensor(IMAGENET_STD) * 255
        self.register_buffer("mean", mean.view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 1, 3, 1, 1), persistent=False)

    @classmethod
    def check_run_config(cls, cfg: EquivarianceConfig, run: Any) -> None:
        super().check_run_config(cfg, run)
        if cfg.features == "ibot_head" and not run.ibot.enabled:
            raise ConfigError("plugins.equivariance.features: 'ibot_head' splits the iBOT patch head; set ibot.enabled: "
                              "true or use features: projection")
        if cfg.mode == "faithful":
            for other in ("posfield", "scrl"):
                section = run.plugins.get(other)
                if other in run.plugins and (section or {}).get("weight", 1.0) > 0:
                    raise ConfigError(f"plugins.equivariance.mode: 'faithful' transforms the host's global view 1, so "
                                      f"plugins.{other} would read its box against content it no longer shows; use "
                                      "mode: decoupled")

    def setup(self, host: HostSpec) -> None:
        super().setup(host)
        if self.cfg.mode == "decoupled" and self.cfg.crop_size % host.patch_size:
            raise PluginError(f"plugins.equivariance.crop_size ({self.cfg.crop_size}) must be a multiple of the patch "
                              f"size ({host.patch_size})")
        try:
            self.decoders = nn.ModuleList(EquiDecoder(2 * self.cfg.d_equi, self.cfg.decoder_dim, host.patch_size)
                                          for _ in range(self.cfg.n_intermediate))
        except ValueError as e:
            raise PluginError(f"plugins.equivariance: {e}") from e

    def view_sampler(self) -> EquiViewSampler | None:
        return EquiViewSampler(self.cfg) if self.cfg.mode == "decoupled" else None

    def data_hook(self) -> EquiFaithfulHook | None:
        return EquiFaithfulHook(self.cfg) if self.cfg.mode == "faithful" else None

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, K, 3, S, S) -> normalised float, as the backbone sees images."""
        return (x.float() - self.mean) / self.std

    def forward(self, student: Mapping[str, BackboneFeatures], teacher: Mapping[str, BackboneFeatures],
                batch: Mapping[str, Any], ctx: StepContext | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        faithful = self.cfg.mode == "faithful"
        B = batch["equi"]["targets"].shape[0]
        f = student["global" if faithful else "equi"]  # view-major: v1 (u) for every sample, then g_theta u
        f = f[: 2 * B]
        if self.proj is not None:
            z = self.proj(f.patch)
        else:
            z = ctx.student_patch_head(f.patch)
            if z.shape[-1] < self.cfg.d_equi:
                raise PluginError(f"plugins.equivariance.d_equi ({self.cfg.d_equi}) exceeds the iBOT patch head's "
                                  f"{z.shape[-1]} output channels")
            z = z[..., : self.cfg.d_equi]
        z1, z2 = z.chunk(2)
        tokens = torch.cat([z1, z2], dim=-1)
        targets = self._pixels(batch["equi"]["targets"])  # (B, K, 3, S, S)
        losses = [F.mse_loss(dec(tokens, f.grid).float(), targets[:, k]) for k, dec in enumerate(self.decoders)]
        loss = torch.stack(losses).mean()
        with torch.no_grad():  # the "copy the second view" baseline the decoders must beat
            v2 = self._pixels(batch["global" if faithful else "equi"]["images"][:, 1:2])
            copy = ((targets - v2) ** 2).mean()
        return loss, {"equivariance/copy_baseline": copy}
