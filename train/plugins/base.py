"""The plug-in interface and its registry.

A plug-in is a small ``nn.Module`` that attaches a spatial pretext task to the DINO host:

* ``view_sampler()`` -- optional, picklable: extra view groups it needs, made in the data workers
  from the original image (with boxes, like every view);
* ``student_views`` / ``teacher_views`` -- which view groups it wants embedded by each network;
* ``forward(student, teacher, batch)`` -- its loss (a scalar, unweighted) and a dict of detached
  scalar tensors to log (tensors, so logging does not force a device sync every step). The host multiplies by ``weight`` and adds it to the total.

Its heads live inside the plug-in, so they are trained with the student and never reach an
exported backbone; a run without the plug-in is a plain DINO backbone. Register with
``@register_plugin``; enable in YAML under ``plugins: {name: {weight: ..., ...}}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from wherevit.base.config import from_dict
from wherevit.train.backbone import BackboneFeatures
from wherevit.train.data.dataset import ViewSampler

__all__ = ["Plugin", "PluginConfig", "register_plugin", "registered_plugins", "create_plugin"]

_REGISTRY: dict[str, type["Plugin"]] = {}


@dataclass
class PluginConfig:
    """Fields every plug-in has; subclasses add their hyper-parameters."""

    weight: float = 1.0


class Plugin(nn.Module):
    name: ClassVar[str]
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    student_views: ClassVar[tuple[str, ...]] = ()
    teacher_views: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: PluginConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = embed_dim

    @property
    def weight(self) -> float:
        return self.cfg.weight

    @classmethod
    def parse_config(cls, params: Mapping[str, Any], path: str = "") -> PluginConfig:
        return from_dict(cls.Config, params, _path=path or f"plugins.{cls.name}")

    def view_sampler(self) -> ViewSampler | None:
        return None

    def forward(
        self,
        student: Mapping[str, BackboneFeatures],
        teacher: Mapping[str, BackboneFeatures],
        batch: Mapping[str, Any],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


def register_plugin(cls: type[Plugin]) -> type[Plugin]:
    """Class decorator: make a plug-in available by its ``name`` in configs."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a class attribute 'name'")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"plug-in name {cls.name!r} is already registered by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def registered_plugins() -> dict[str, type[Plugin]]:
    return dict(_REGISTRY)


def create_plugin(name: str, params: Mapping[str, Any], embed_dim: int) -> Plugin:
    """Build plug-in ``name`` from its YAML section (validated against its Config dataclass)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown plug-in {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name]
    return cls(cls.parse_config(params), embed_dim)
