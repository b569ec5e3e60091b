"""The self-distillation meta-architecture: DINO host (+ iBOT option) + plug-ins, composed from the config.

Student and teacher are built by the same builder; the teacher is frozen and follows the student
by EMA (backbone, DINO head, iBOT head, and every plug-in's EMA targets). Both embed their views
through the token-level path (``backbone.forward_tokens``): the student's global crops carry the
iBOT content masks and the positional masks, and a positional provider plug-in (``posfield``) may
replace the positional embedding of every view. ``forward_losses`` returns ``(total, logs)``: the
weighted sum of the DINO loss, the iBOT loss and every enabled plug-in's loss, and detached scalars
for logging. The plug-in interface is documented in ``plugins/base.py``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Mapping

import torch
from torch import nn

from wherevit.base.config import ConfigError
from wherevit.base.image import IMAGENET_MEAN, IMAGENET_STD
from wherevit.train.backbone import (
    BackboneFeatures,
    TokenInputs,
    create_backbone,
    forward_tokens,
    patch_grid,
    timm_kwargs,
)
from wherevit.train.config import TrainConfig
from wherevit.train.data.dataset import SampleHook, ViewSampler
from wherevit.train.data.masking import ContentMasker, MaskPlan
from wherevit.train.heads import DINOHead
from wherevit.train.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss
from wherevit.train.plugins import HostSpec, Plugin, StepContext, create_plugin, view_major

__all__ = ["StudentNetwork", "TeacherNetwork", "SSLMetaArch", "PatchSites", "embed_views"]


def _token_mask(x: torch.Tensor) -> torch.Tensor:
    """(B, V, gh, gw) worker mask -> (V * B, N) bool over the row-major patch tokens."""
    return view_major(x).flatten(1).bool()


def embed_views(backbone: nn.Module, views: Mapping[str, torch.Tensor], inputs: Mapping[str, TokenInputs] | None = None,
                mask_token: torch.Tensor | None = None, pos_mask_token: torch.Tensor | None = None) -> dict[str, BackboneFeatures]:
    """Embed several view groups with one backbone call per input size (e.g. local and SP crops
    share a call), then split the result back by group."""
    inputs = inputs or {}
    by_size: dict[tuple[int, int], list[str]] = defaultdict(list)
    for name, x in views.items():
        by_size[tuple(x.shape[-2:])].append(name)
    out: dict[str, BackboneFeatures] = {}
    for names in by_size.values():
        x = torch.cat([views[n] for n in names]) if len(names) > 1 else views[names[0]]
        parts = [inputs.get(n) or TokenInputs() for n in names]
        if all(p.empty for p in parts):
            tok = None
        elif len(parts) == 1:
            tok = parts[0]
        else:
            gh, gw = patch_grid(backbone, tuple(x.shape[-2:]))
            tok = TokenInputs.cat(parts, [views[n].shape[0] for n in names], gh * gw, x.device)
        feats = forward_tokens(backbone, x, tok, mask_token, pos_mask_token)
        start = 0
        for n in names:
            stop = start + views[n].shape[0]
            out[n] = feats[start:stop]
            start = stop
    return out


class PatchSites:
    """The masked sites of the student's global crops, by per-view mask field, for the iBOT loss.

    ``union`` (V*B, N) marks every site any field marks; heads run once on the union's tokens,
    and each field's loss selects its own tokens from that.
    """

    def __init__(self, batch: Mapping[str, Any], fields: tuple[str, ...], loss: IBOTPatchLoss):
        grp = batch["global"]
        self.fields = {f: _token_mask(grp[f]) for f in fields if f in grp}
        missing = [f for f in fields if f not in grp]
        if missing:
            raise KeyError(f"the global view group has no mask field(s) {missing}; the data hooks did not add them")
        it = iter(self.fields.values())
        self.union = next(it).clone()
        for m in it:
            self.union |= m
        self.loss_fn = loss
        self.n_crops = self.union.shape[0]
        self.teacher_probs: torch.Tensor | None = None

    def loss(self, field: str, student_logits: torch.Tensor) -> torch.Tensor:
        """The iBOT loss over ``field``'s sites (``student_logits`` are the union's tokens)."""
        if field not in self.fields:
            raise KeyError(f"no iBOT sites named {field!r} (have {sorted(self.fields)})")
        m = self.fields[field]
        sel = m[self.union]  # which union tokens belong to this field
        per_crop = 1.0 / m.sum(dim=1, keepdim=True).clamp_min(1)
        weights = per_crop.expand_as(m)[self.union][sel]
        return self.loss_fn(student_logits[sel], self.teacher_probs[sel], weights, self.n_crops)


def _token_inputs(backbone: nn.Module, views: Mapping[str, torch.Tensor], batch: Mapping[str, Any],
                  provider: Plugin | None, aligned: frozenset[str], masked: bool) -> dict[str, TokenInputs]:
    """Per group: the content / positional masks (student only) and the provider's positions."""
    out = {}
    for g in views:
        grp = batch[g]
        mask = _token_mask(grp["masks"]) if masked and "masks" in grp else None
        pos_mask = _token_mask(grp["pos_masks"]) if masked and "pos_masks" in grp else None
        pos = provider.positions(backbone, g, batch, g in aligned) if provider is not None else None
        out[g] = TokenInputs(mask, pos, pos_mask)
    return out


class StudentNetwork(nn.Module):
    """Backbone + DINO head (+ iBOT head and mask token) + plug-ins. Its forward is what DDP wraps."""

    def __init__(self, backbone: nn.Module, dino_head: DINOHead, plugins: Mapping[str, Plugin],
                 ibot_head: DINOHead | None = None, mask_token: bool = False):
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.plugins = nn.ModuleDict(dict(plugins))
        self.ibot_head = ibot_head
        # training-only, outside the backbone so the exported backbone stays a plain timm ViT
        self.mask_token = nn.Parameter(torch.zeros(backbone.embed_dim)) if mask_token else None

    @property
    def patch_head(self) -> nn.Module:
        return self.ibot_head if self.ibot_head is not None else self.dino_head

    def forward(self, views: Mapping[str, torch.Tensor], batch: Mapping[str, Any],
                teacher: Mapping[str, BackboneFeatures], plan: "_Plan", sites: PatchSites | None, ctx: StepContext):
        provider = plan.provider
        inputs = _token_inputs(self.backbone, views, batch, provider, plan.aligned, masked=True)
        pos_mask_token = getattr(provider, "pos_mask_token", None)
        feats = embed_views(self.backbone, views, inputs, self.mask_token, pos_mask_token)
        dino_logits = self.dino_head(torch.cat([feats[g].cls for g in plan.dino_groups]), plan.dino_channels)
        patch_logits = None
        if sites is not None:
            patch_logits = self.patch_head(feats["global"].patch[sites.union], plan.patch_channels)
            ctx.ibot_loss_fn = lambda field: sites.loss(field, patch_logits)
        plugin_out = {name: p(feats, teacher, batch, ctx) for name, p in self.plugins.items()}
        return dino_logits, feats["global"].cls, patch_logits, plugin_out


class TeacherNetwork(nn.Module):
    def __init__(self, backbone: nn.Module, dino_head: DINOHead, ibot_head: DINOHead | None = None):
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head

    @property
    def patch_head(self) -> nn.Module:
        return self.ibot_head if self.ibot_head is not None else self.dino_head

    @torch.no_grad()
    def forward(self, views: Mapping[str, torch.Tensor], batch: Mapping[str, Any] | None = None,
                plan: "_Plan | None" = None) -> tuple[dict[str, BackboneFeatures], torch.Tensor]:
        inputs = None
        if plan is not None and plan.provider is not None:
            inputs = _token_inputs(self.backbone, views, batch, plan.provider, plan.aligned, masked=False)
        feats = embed_views(self.backbone, views, inputs)
        return feats, self.dino_head(feats["global"].cls, plan.dino_channels if plan is not None else None)


class _Plan:
    """Per-run constants the networks' forwards need (not modules: nothing here is trained).

    ``dino_channels`` / ``patch_channels``: the output channels of the DINO / patch head the SSL
    losses score (None: all); a plug-in's reserved channels (EC's z_equi) are left out of both.
    """

    def __init__(self, dino_groups: tuple[str, ...], aligned: frozenset[str], provider: Plugin | None,
                 dino_channels: slice | None = None, patch_channels: slice | None = None):
        self.dino_groups, self.aligned, self.provider = dino_groups, aligned, provider
        self.dino_channels, self.patch_channels = dino_channels, patch_channels


class SSLMetaArch(nn.Module):
    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.cfg = cfg
        kw = timm_kwargs(cfg.model)
        student_bb = create_backbone(cfg.model.name, pretrained=cfg.model.pretrained, **kw)
        teacher_bb = create_backbone(cfg.model.name, pretrained=False, **{**kw, "drop_path_rate": 0.0})
        d, ib = cfg.dino, cfg.ibot
        dim = student_bb.embed_dim
        make_head = lambda out_dim: DINOHead(dim, out_dim, d.hidden_dim, d.bottleneck_dim, d.n_layers, d.norm_last_layer)  # noqa: E731
        dino_groups = ("global", "local") if cfg.data.crops.n_local > 0 else ("global",)
        ibot_out = ib.out_dim or d.out_dim
        sep = ib.enabled and ib.separate_head
        plugins = {name: create_plugin(name, params or {}, dim) for name, params in cfg.plugins.items()}
        plugins = {n: p for n, p in plugins.items() if p.weight > 0}
        self._check_plugins(plugins)
        host = HostSpec(
            embed_dim=dim, patch_size=int(student_bb.patch_embed.patch_size[0]), img_size=cfg.model.img_size,
            num_prefix_tokens=int(student_bb.num_prefix_tokens), has_pos_embed=student_bb.pos_embed is not None,
            crops=cfg.data.crops, ibot=ib, dino_groups=dino_groups, total_steps=cfg.total_steps, seed=cfg.seed,
            global_batch_size=cfg.data.global_batch_size, patch_head_dim=ibot_out if sep else d.out_dim,
            positions_provided=any(p.provides_positions for p in plugins.values()),
            host_views_altered=any(p.alters_host_views for p in plugins.values()),
        )
        for p in plugins.values():
            p.setup(host)
            p.attach(student_bb)
            p.attach(teacher_bb)
        reserved = self._reserved_channels(plugins, host.patch_head_dim)
        self.student = StudentNetwork(student_bb, make_head(d.out_dim), plugins,
                                      ibot_head=make_head(ibot_out) if sep else None, mask_token=ib.enabled)
        self.teacher = TeacherNetwork(teacher_bb, make_head(d.out_dim), ibot_head=make_head(ibot_out) if sep else None)
        teacher_keys = set(self.teacher.state_dict())
        self.teacher.load_state_dict({k: v for k, v in self.student.state_dict().items() if k in teacher_keys})
        self.teacher.requires_grad_(False)
        # reserved channels of the patch head leave every SSL loss reading that head (the DINO loss too
        # when the DINO head is the patch head)
        dino_reserved = 0 if sep else reserved
        self.dino_loss = DINOLoss(d.out_dim - dino_reserved, d.student_temp, d.center_momentum, d.centering,
                                  d.sinkhorn_iterations)
        self.koleo_loss = KoLeoLoss()
        self.ibot_loss = IBOTPatchLoss(host.patch_head_dim - reserved, ib.student_temp, ib.center_momentum, d.centering,
                                       d.sinkhorn_iterations) if ib.enabled else None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.host = host
        self.dino_groups = dino_groups
        self.student_groups = dino_groups + tuple(g for p in plugins.values() for g in p.student_views)
        self.teacher_groups = ("global",) + tuple(g for p in plugins.values() for g in p.teacher_views if g != "global")
        provider = next((p for p in plugins.values() if p.provides_positions), None)
        aligned = frozenset(dino_groups) | {g for p in plugins.values() for g in p.crop_aligned_views}
        self._plan = _Plan(dino_groups, aligned, provider, slice(dino_reserved, None) if dino_reserved else None,
                           slice(reserved, None) if reserved else None)
        self.ibot_fields = ("masks",) + tuple(f for p in plugins.values() for f in p.ibot_sites)

    def _check_plugins(self, plugins: Mapping[str, Plugin]) -> None:
        for p in plugins.values():  # the plug-in's own cross-section checks (requires_ibot, ...): one rule, Plugin.check_run_config
            type(p).check_run_config(p.cfg, self.cfg)
        providers = [n for n, p in plugins.items() if p.provides_positions]
        if len(providers) > 1:
            raise ConfigError(f"plug-ins {', '.join(f'plugins.{n}' for n in providers)} all replace the positional "
                              "embedding; enable at most one")

    @staticmethod
    def _reserved_channels(plugins: Mapping[str, Plugin], width: int) -> int:
        """Patch-head channels reserved by a plug-in (at most one may), checked against the head's width."""
        claims = {n: p.reserved_head_channels for n, p in plugins.items() if p.reserved_head_channels > 0}
        if len(claims) > 1:
            raise ConfigError(f"plug-ins {', '.join(f'plugins.{n}' for n in claims)} all reserve patch-head channels; "
                              "enable at most one of them")
        for name, n in claims.items():
            if n >= width:
                raise ConfigError(f"plugins.{name} reserves {n} of the patch head's {width} output channels; the SSL "
                                  "losses need some: lower its d_equi or raise dino.out_dim / ibot.out_dim")
        return sum(claims.values())

    @property
    def plugins(self) -> Mapping[str, Plugin]:
        return self.student.plugins

    def clip_groups(self) -> dict[str, list[nn.Parameter]]:
        """The student's trainable parameters by module, as DINOv2 clips them (``train.py``: one
        ``clip_grad_norm_`` per student module): the backbone (with the training-only mask token,
        which sits in DINOv2's backbone), the DINO head, the iBOT head, and each plug-in."""
        s = self.student
        mods: dict[str, list[nn.Parameter]] = {
            "backbone": list(s.backbone.parameters()) + ([s.mask_token] if s.mask_token is not None else []),
            "dino_head": list(s.dino_head.parameters()),
        }
        if s.ibot_head is not None:
            mods["ibot_head"] = list(s.ibot_head.parameters())
        for name, p in s.plugins.items():
            mods[f"plugins.{name}"] = list(p.parameters())
        return {k: [p for p in v if p.requires_grad] for k, v in mods.items()}

    def view_samplers(self) -> dict[str, ViewSampler]:
        return {n: s for n, p in self.plugins.items() if (s := p.view_sampler()) is not None}

    def data_hooks(self) -> dict[str, SampleHook]:
        """Sample hooks in the order they run: the iBOT masks first, then the plug-ins'."""
        hooks: dict[str, SampleHook] = {}
        ib, c = self.cfg.ibot, self.cfg.data.crops
        if ib.enabled:
            g = c.global_size // self.host.patch_size
            plan = MaskPlan(ib.mask_probability, ib.mask_ratio, c.n_global, self.cfg.data.global_batch_size, self.cfg.seed)
            hooks["ibot"] = ContentMasker(plan, (g, g), ib.mask_pattern)
        for n, p in self.plugins.items():
            if (h := p.data_hook()) is not None:
                hooks[f"plugins.{n}"] = h
        return hooks

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, S, S) uint8 -> (V * B, 3, S, S) float, view-major (all view-0 images first)."""
        B, V = images.shape[:2]
        x = images.transpose(0, 1).reshape(B * V, *images.shape[2:]).float()
        return (x - self.mean) / self.std

    def forward_losses(self, batch: Mapping[str, Any], teacher_temp: float, student_fn: Callable | None = None,
                       step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and log scalars for one batch. ``student_fn`` is the (DDP-wrapped) student."""
        student_fn = student_fn or self.student
        groups = set(self.student_groups) | set(self.teacher_groups)
        views = {g: self._normalise(batch[g]["images"]) for g in groups}
        plan = self._plan
        teacher_feats, t_logits = self.teacher({g: views[g] for g in self.teacher_groups}, batch, plan)
        sites, t_patch_logits = None, None
        if self.ibot_loss is not None:
            sites = PatchSites(batch, self.ibot_fields, self.ibot_loss)
            with torch.no_grad():
                t_patch_logits = self.teacher.patch_head(teacher_feats["global"].patch[sites.union], plan.patch_channels)
                sites.teacher_probs = self.ibot_loss.teacher_probs(t_patch_logits, teacher_temp)
        ctx = StepContext(step=step, total_steps=self.cfg.total_steps, teacher_temp=teacher_temp,
                          student_head=self.student.dino_head, teacher_head=self.teacher.dino_head,
                          student_patch_head=self.student.patch_head, teacher_patch_head=self.teacher.patch_head)
        s_logits, s_global_cls, s_patch_logits, plugin_out = student_fn(
            {g: views[g] for g in self.student_groups}, batch, teacher_feats, plan, sites, ctx)

        n_global = self.cfg.data.crops.n_global
        B = batch["global"]["images"].shape[0]
        q = self.dino_loss.teacher_probs(t_logits, teacher_temp)  # (n_global * B, K)
        dino = self.dino_loss(list(s_logits.split(B)), list(q.chunk(n_global)))
        # collapse watch (log K is the ceiling): per-sample entropy near log K means uniform targets,
        # nothing to distil; batch entropy well below log K means the batch piles onto few prototypes
        with torch.no_grad():
            qm = q.mean(0)
            watch = {"dino/teacher_entropy": -(q * q.clamp_min(1e-12).log()).sum(-1).mean(),
                     "dino/teacher_batch_entropy": -(qm * qm.clamp_min(1e-12).log()).sum()}
        self.dino_loss.update_center(t_logits)

        total = self.cfg.dino.weight * dino
        logs = {"loss/dino": dino.detach(), **watch}
        if sites is not None:
            ibot = sites.loss("masks", s_patch_logits)
            total = total + self.cfg.ibot.weight * ibot
            logs["loss/ibot"] = ibot.detach()
            logs["ibot/masked_share"] = sites.union.float().mean()
            self.ibot_loss.update_center(t_patch_logits)
        if self.cfg.dino.koleo_weight > 0:
            # per global crop, as in DINOv2: neighbours are searched within one view of the batch
            koleo = sum(self.koleo_loss(c) for c in s_global_cls.chunk(n_global))
            total = total + self.cfg.dino.koleo_weight * koleo
            logs["loss/koleo"] = koleo.detach()
        for name, (loss, extra) in plugin_out.items():
            total = total + self.plugins[name].weight * loss
            logs[f"loss/{name}"] = loss.detach()
            logs.update({k: v.detach() for k, v in extra.items()})
        logs["loss"] = total.detach()
        return total, logs

    def _ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.student.backbone, self.teacher.backbone), (self.student.dino_head, self.teacher.dino_head)]
        if self.student.ibot_head is not None:
            pairs.append((self.student.ibot_head, self.teacher.ibot_head))
        return pairs + [pair for p in self.plugins.values() for pair in p.ema_pairs()]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """target <- m * target + (1 - m) * online: teacher backbone and heads, plug-in EMA targets."""
        s, t = [], []
        for online, target in self._ema_pairs():
            s += list(online.parameters())
            t += list(target.parameters())
        torch._foreach_mul_(t, momentum)
        torch._foreach_add_(t, s, alpha=1 - momentum)
