"""The self-distillation meta-architecture: DINO host + plug-ins, composed from the config.

Student and teacher are built by the same builder; the teacher is frozen and follows the student
by EMA. ``forward_losses`` returns ``(total, logs)``: the weighted sum of the DINO loss and every
enabled plug-in's loss, and detached scalars for logging.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Mapping

import torch
from torch import nn

from wherevit.base.image import IMAGENET_MEAN, IMAGENET_STD
from wherevit.train.backbone import (
    BackboneFeatures,
    backbone_features,
    create_backbone,
    timm_kwargs,
)
from wherevit.train.config import TrainConfig
from wherevit.train.heads import DINOHead
from wherevit.train.losses import DINOLoss, KoLeoLoss
from wherevit.train.plugins import Plugin, create_plugin

__all__ = ["StudentNetwork", "TeacherNetwork", "SSLMetaArch", "embed_views"]


def embed_views(backbone: nn.Module, views: Mapping[str, torch.Tensor]) -> dict[str, BackboneFeatures]:
    """Embed several view groups with one backbone call per input size (e.g. local and SP crops
    share a call), then split the result back by group."""
    by_size: dict[tuple[int, int], list[str]] = defaultdict(list)
    for name, x in views.items():
        by_size[tuple(x.shape[-2:])].append(name)
    out: dict[str, BackboneFeatures] = {}
    for names in by_size.values():
        x = torch.cat([views[n] for n in names]) if len(names) > 1 else views[names[0]]
        feats = backbone_features(backbone, x)
        start = 0
        for n in names:
            stop = start + views[n].shape[0]
            out[n] = feats[start:stop]
            start = stop
    return out


class StudentNetwork(nn.Module):
    """Backbone + DINO head + plug-in heads. Its forward is what DDP wraps."""

    def __init__(self, backbone: nn.Module, dino_head: DINOHead, plugins: Mapping[str, Plugin]):
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.plugins = nn.ModuleDict(dict(plugins))

    def forward(self, views: Mapping[str, torch.Tensor], teacher: Mapping[str, BackboneFeatures],
                batch: Mapping[str, Any], dino_groups: tuple[str, ...]):
        feats = embed_views(self.backbone, views)
        cls = torch.cat([feats[g].cls for g in dino_groups])
        dino_logits = self.dino_head(cls)
        plugin_out = {name: p(feats, teacher, batch) for name, p in self.plugins.items()}
        return dino_logits, feats["global"].cls, plugin_out


class TeacherNetwork(nn.Module):
    def __init__(self, backbone: nn.Module, dino_head: DINOHead):
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head

    @torch.no_grad()
    def forward(self, views: Mapping[str, torch.Tensor]) -> tuple[dict[str, BackboneFeatures], torch.Tensor]:
        feats = embed_views(self.backbone, views)
        return feats, self.dino_head(feats["global"].cls)


class SSLMetaArch(nn.Module):
    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.cfg = cfg
        kw = timm_kwargs(cfg.model)
        student_bb = create_backbone(cfg.model.name, pretrained=cfg.model.pretrained, **kw)
        teacher_bb = create_backbone(cfg.model.name, pretrained=False, **{**kw, "drop_path_rate": 0.0})
        d = cfg.dino
        dim = student_bb.embed_dim
        make_head = lambda: DINOHead(dim, d.out_dim, d.hidden_dim, d.bottleneck_dim, d.n_layers, d.norm_last_layer)
        plugins = {name: create_plugin(name, params or {}, dim) for name, params in cfg.plugins.items()}
        plugins = {n: p for n, p in plugins.items() if p.weight > 0}
        self.student = StudentNetwork(student_bb, make_head(), plugins)
        self.teacher = TeacherNetwork(teacher_bb, make_head())
        self.teacher.load_state_dict(
            {"backbone." + k: v for k, v in student_bb.state_dict().items()}
            | {"dino_head." + k: v for k, v in self.student.dino_head.state_dict().items()}
        )
        self.teacher.requires_grad_(False)
        self.dino_loss = DINOLoss(d.out_dim, d.student_temp, d.center_momentum, d.centering, d.sinkhorn_iterations)
        self.koleo_loss = KoLeoLoss()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.dino_groups = ("global", "local") if cfg.data.crops.n_local > 0 else ("global",)
        self.student_groups = self.dino_groups + tuple(g for p in plugins.values() for g in p.student_views)
        self.teacher_groups = ("global",) + tuple(g for p in plugins.values() for g in p.teacher_views)

    @property
    def plugins(self) -> Mapping[str, Plugin]:
        return self.student.plugins

    def view_samplers(self) -> dict[str, Callable]:
        return {n: s for n, p in self.plugins.items() if (s := p.view_sampler()) is not None}

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, S, S) uint8 -> (V * B, 3, S, S) float, view-major (all view-0 images first)."""
        B, V = images.shape[:2]
        x = images.transpose(0, 1).reshape(B * V, *images.shape[2:]).float()
        return (x - self.mean) / self.std

    def forward_losses(self, batch: Mapping[str, Any], teacher_temp: float,
                       student_fn: Callable | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and log scalars for one batch. ``student_fn`` is the (DDP-wrapped) student."""
        student_fn = student_fn or self.student
        groups = set(self.student_groups) | set(self.teacher_groups)
        views = {g: self._normalise(batch[g]["images"]) for g in groups}
        teacher_feats, t_logits = self.teacher({g: views[g] for g in self.teacher_groups})
        s_logits, s_global_cls, plugin_out = student_fn({g: views[g] for g in self.student_groups}, teacher_feats, batch, self.dino_groups)

        B = batch["global"]["images"].shape[0]
        q = self.dino_loss.teacher_probs(t_logits, teacher_temp)  # (n_global * B, K)
        dino = self.dino_loss(list(s_logits.split(B)), list(q.chunk(self.cfg.data.crops.n_global)))
        # collapse watch (log K is the ceiling): per-sample entropy near log K means uniform targets,
        # nothing to distil; batch entropy well below log K means the batch piles onto few prototypes
        with torch.no_grad():
            qm = q.mean(0)
            watch = {"dino/teacher_entropy": -(q * q.clamp_min(1e-12).log()).sum(-1).mean(),
                     "dino/teacher_batch_entropy": -(qm * qm.clamp_min(1e-12).log()).sum()}
        self.dino_loss.update_center(t_logits)

        total = self.cfg.dino.weight * dino
        logs = {"loss/dino": dino.detach(), **watch}
        if self.cfg.dino.koleo_weight > 0:
            # per global crop, as in DINOv2: neighbours are searched within one view of the batch
            koleo = sum(self.koleo_loss(c) for c in s_global_cls.chunk(self.cfg.data.crops.n_global))
            total = total + self.cfg.dino.koleo_weight * koleo
            logs["loss/koleo"] = koleo.detach()
        for name, (loss, extra) in plugin_out.items():
            total = total + self.plugins[name].weight * loss
            logs[f"loss/{name}"] = loss.detach()
            logs.update({k: v.detach() for k, v in extra.items()})
        logs["loss"] = total.detach()
        return total, logs

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- m * teacher + (1 - m) * student, for backbone and DINO head."""
        s = [p for m in (self.student.backbone, self.student.dino_head) for p in m.parameters()]
        t = [p for m in (self.teacher.backbone, self.teacher.dino_head) for p in m.parameters()]
        torch._foreach_mul_(t, momentum)
        torch._foreach_add_(t, s, alpha=1 - momentum)
