"""The plug-in interface (host v2) and its registry.

A plug-in attaches a pretext task to the DINO host. It is one file holding an ``nn.Module``
subclass of ``Plugin`` registered with ``@register_plugin`` (built-ins) or through the entry-point
group ``wherevit.plugins`` (a user's own package: ``[project.entry-points."wherevit.plugins"]
mytask = "mypkg.mytask:MyTask"``); a duplicate name is refused. It is enabled in YAML under
``plugins: {name: {weight: ..., ...}}``, validated against its ``Config`` dataclass. Its heads live
inside it, so they train with the student and never reach an exported backbone.

Layout. The host's view groups are ``global`` (``n_global`` crops: student, masked when iBOT is
on, and teacher) and ``local`` (``n_local`` crops, student only; absent when 0). In ``batch`` every
group is sample-major as collated, ``batch[group][field]`` of shape (B, V, ...); features are
view-major, row ``v * B + b`` is view ``v`` of sample ``b`` (``view_major`` here converts).
Plug-in view samplers run in config order on the sample's shared view generator, after the host's
groups; sample hooks each get their own generator.

What the host gives a plug-in, in the order the host uses it (every hook is optional):

Build time (``SSLMetaArch.__init__``)
  ``__init__(cfg, embed_dim)``      build heads (SP-style plug-ins need nothing else).
  ``setup(host: HostSpec)``         called once after construction: patch size, image and crop
                                    sizes, augmentation settings, the iBOT settings, total steps,
                                    seed. Build modules that depend on them here (stored as
                                    ``self.host``).
  ``attach(backbone)``              called for the student's and the teacher's backbone before the
                                    teacher is initialised from the student. Parameters registered on
                                    the backbone (e.g. a positional field) are trained with it, copied
                                    to the teacher by the host's EMA and checkpointed with it; export
                                    removes or bakes them with ``export_backbone_state``.
  ``add_ema_target(name, online)``  (helper, call in ``__init__``/``setup``) registers a frozen copy of
                                    ``online`` as ``self.<name>``; the host updates it after every
                                    optimizer step with the teacher's momentum (target projectors).
  ``reserved_head_channels``        (int, after ``setup``) leading output channels of the student's
                                    patch head (``HostSpec.patch_head_dim`` wide: the iBOT head, or the
                                    DINO head when iBOT is off or shares it) that this plug-in takes for
                                    itself: every SSL loss reading that head leaves them out (EC's
                                    channel split). At most one plug-in reserves channels.
  ``requires_ibot = True``          refuse to run unless ``ibot.enabled`` (error names the key);
                                    ``check_run_config(cfg, run)`` (classmethod) holds any other check
                                    across config sections, run when the config is loaded.

Data workers (picklable objects; per-sample RNG, so resume and 1 -> N ranks stay exact)
  ``view_sampler()``                extra view groups ``{group: ViewGroup}`` made from the original
                                    image with the sample's view generator (SP's pairs, GTSA's rotated
                                    views, EC's pairs). A ``ViewGroup`` has ``images`` (V,3,S,S) uint8,
                                    ``boxes`` (V,4), ``flips`` (V,) and any per-view field (V, ...):
                                    rotation k, transformation parameters, reconstruction targets.
  ``data_hook()``                   a ``SampleHook`` run after all views and the iBOT masks, with its
                                    own generator: add per-view fields to any group (including the
                                    host's ``global``/``local``), top-level per-sample entries, or
                                    transform a host group's images in place (EC's faithful mode).
                                    Reserved per-view fields the host reads: ``masks`` (content mask,
                                    (V,gh,gw) bool, student only), ``pos_masks`` (positional mask) and
                                    ``crop_agnostic`` ((V,) bool: the view's content no longer matches
                                    its box, so a position provider gives it the crop-agnostic
                                    embedding). A plug-in that transforms host views sets
                                    ``alters_host_views`` so others know the boxes are not the content.
  ``student_views`` / ``teacher_views``  groups each network embeds (with the host's groups).

Forward (inside the student's DDP forward)
  ``positions(backbone, group, batch, crop_aligned)``  only for a plug-in with
                                    ``provides_positions = True`` (at most one): the per-sample patch
                                    positional embedding (V*B, N, D) for ``group``, from ``backbone``
                                    (student's or teacher's). ``crop_aligned`` is True for the DINO
                                    groups and for the groups a plug-in lists in
                                    ``crop_aligned_views``; other plug-in groups must get a
                                    crop-agnostic embedding (identical for every box and rotation), so
                                    no geometric target is readable off the input. Sites in a group's
                                    ``pos_masks`` get the provider's ``pos_mask_token`` instead.
  ``forward(student, teacher, batch, ctx)`` -> ``(loss, logs)``: ``student``/``teacher`` map group
                                    names to ``BackboneFeatures`` (CLS + patch grid, view-major: all
                                    view-0 images of the batch first). The student's ``global`` group
                                    is the masked forward when iBOT is on (a plug-in wanting unmasked
                                    student views asks for its own group). ``batch`` is the collated
                                    sample dict (groups, hook entries), on the device. ``ctx`` is a
                                    ``StepContext``: step, total steps and progress (warm-ups), the
                                    teacher temperature, the student and teacher DINO heads, the patch
                                    heads (iBOT's, or the DINO heads when iBOT is off or shares them;
                                    ``head(x, channels=slice)`` computes only some output channels)
                                    and ``ctx.ibot_loss(field)`` (the iBOT loss at the
                                    global crops' sites in per-view field ``field``, e.g. ``pos_masks``,
                                    for plug-ins listing it in ``ibot_sites``). Return an unweighted
                                    scalar loss and detached scalar tensors to log; the host multiplies
                                    by ``weight`` and adds it to the total.

Export
  ``export_backbone_state(cfg, state, backbone)`` (classmethod): rewrite a backbone state dict into
                                    a plain timm ViT's (drop or bake what ``attach`` added; ``backbone``
                                    is a plain ViT of the same architecture, for its grid and prefix
                                    tokens) and return notes merged into the backbone's info (export
                                    copies ``info["positional"]`` into the sidecar). The host calls it
                                    through ``plain_backbone_state`` for every configured plug-in.

Helpers for box-based plug-ins: ``BackboneFeatures.patch_map()`` / ``.roi_align(rois, size)``
(torchvision RoIAlign over the patch grid, boxes in normalised view coordinates) and
``train/data/geometry.py`` (``intersection`` of two crops, ``image_to_view`` with flips, the SP
target, disentangled pairs).

A plug-in's loss must use every parameter it owns each step (DDP runs without unused-parameter
detection): compute on empty selections rather than skipping a head.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from wherevit.base.config import ConfigError, from_dict
from wherevit.base.registry import Registry
from wherevit.train.backbone import BackboneFeatures
from wherevit.train.data.dataset import SampleHook, ViewSampler

if TYPE_CHECKING:
    from wherevit.train.host_config import CropConfig, IBOTConfig

__all__ = [
    "Plugin", "PluginConfig", "PluginError", "HostSpec", "StepContext", "register_plugin", "registered_plugins",
    "create_plugin", "plain_backbone_state", "view_major", "ENTRY_POINT_GROUP",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "wherevit.plugins"


class PluginError(ConfigError):
    """A plug-in that cannot be registered or built as configured (an unknown name is one: a config error)."""


PLUGINS: Registry = Registry("plug-in", ENTRY_POINT_GROUP, error=PluginError)


@dataclass
class PluginConfig:
    """Fields every plug-in has; subclasses add their hyper-parameters."""

    weight: float = 1.0


@dataclass(frozen=True)
class HostSpec:
    """What the host tells a plug-in at build time (``Plugin.setup``)."""

    embed_dim: int
    patch_size: int
    img_size: int  # the backbone's nominal input size (export size)
    num_prefix_tokens: int
    has_pos_embed: bool
    crops: "CropConfig"  # multi-crop sizes and augmentation settings
    ibot: "IBOTConfig"
    dino_groups: tuple[str, ...]  # ("global", "local") or ("global",)
    total_steps: int
    seed: int
    global_batch_size: int
    patch_head_dim: int = 0  # output width of the student's patch head (iBOT's, or the DINO head's)
    positions_provided: bool = False  # a plug-in replaces positional embeddings (posfield)
    host_views_altered: bool = False  # a plug-in transforms host global views: their boxes no longer fit


@dataclass
class StepContext:
    """What the host passes to ``Plugin.forward`` each step."""

    step: int
    total_steps: int
    teacher_temp: float
    student_head: nn.Module  # the student's DINO head (gradients flow)
    teacher_head: nn.Module  # the teacher's DINO head (call under torch.no_grad)
    # the patch heads: iBOT's, or the DINO heads when iBOT is off or shares them
    student_patch_head: nn.Module | None = None
    teacher_patch_head: nn.Module | None = None
    ibot_loss_fn: Callable[[str], torch.Tensor] | None = None

    @property
    def progress(self) -> float:
        """Fraction of training done before this step, in [0, 1)."""
        return self.step / max(self.total_steps, 1)

    def ibot_loss(self, field: str) -> torch.Tensor:
        """The iBOT patch loss at the sites of the student's global crops marked in per-view field
        ``field`` (0 when none is marked). Only for fields a plug-in lists in ``ibot_sites``."""
        if self.ibot_loss_fn is None:
            raise PluginError("ctx.ibot_loss needs ibot.enabled: true")
        return self.ibot_loss_fn(field)


class Plugin(nn.Module):
    name: ClassVar[str]
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    student_views: ClassVar[tuple[str, ...]] = ()
    teacher_views: ClassVar[tuple[str, ...]] = ()
    crop_aligned_views: ClassVar[tuple[str, ...]] = ()  # own groups that may get crop-aligned positions
    requires_ibot: ClassVar[bool] = False
    ibot_sites: ClassVar[tuple[str, ...]] = ()  # per-view mask fields of "global" scored by the iBOT loss
    provides_positions: ClassVar[bool] = False
    alters_host_views: bool = False  # transforms host global views in the data workers (EC's faithful mode)
    reserved_head_channels: int = 0  # leading patch-head channels kept out of the SSL losses (set in setup)

    def __init__(self, cfg: PluginConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = embed_dim
        self.host: HostSpec | None = None
        self._ema_names: list[tuple[str, str]] = []

    @property
    def weight(self) -> float:
        return self.cfg.weight

    @classmethod
    def parse_config(cls, params: Mapping[str, Any], path: str = "") -> PluginConfig:
        return from_dict(cls.Config, params, _path=path or f"plugins.{cls.name}")

    @classmethod
    def check_run_config(cls, cfg: PluginConfig, run: Any) -> None:
        """Checks across config sections, run when the config loads (``run`` is the TrainConfig):
        raise ``ConfigError`` naming the keys. The default enforces ``requires_ibot``."""
        if cls.requires_ibot is True and not run.ibot.enabled:
            raise ConfigError(f"plugins.{cls.name} needs iBOT masked prediction: set ibot.enabled: true")

    # --- build time -------------------------------------------------------------------------
    def setup(self, host: HostSpec) -> None:
        """Called once after construction; override to build host-dependent modules (call super)."""
        self.host = host

    def attach(self, backbone: nn.Module) -> None:
        """Called for the student's and the teacher's backbone (see the module docstring)."""

    def add_ema_target(self, name: str, online: nn.Module) -> nn.Module:
        """Register a frozen copy of ``online`` as ``self.<name>``, updated by the host's EMA."""
        target = copy.deepcopy(online).requires_grad_(False)
        self.add_module(name, target)
        online_name = next((n for n, m in self.named_modules() if m is online), None)
        if online_name is None:
            raise PluginError(f"{type(self).__name__}.add_ema_target({name!r}): register the online module on the plug-in first")
        self._ema_names.append((online_name, name))
        return target

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) module pairs the host updates by EMA after each optimizer step."""
        return [(self.get_submodule(o), self.get_submodule(t)) for o, t in self._ema_names]

    # --- data workers ----------------------------------------------------------------------------
    def view_sampler(self) -> ViewSampler | None:
        return None

    def data_hook(self) -> SampleHook | None:
        return None

    # --- forward -----------------------------------------------------------------------------------
    def positions(self, backbone: nn.Module, group: str, batch: Mapping[str, Any], crop_aligned: bool) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not provide positional embeddings")

    def forward(
        self,
        student: Mapping[str, BackboneFeatures],
        teacher: Mapping[str, BackboneFeatures],
        batch: Mapping[str, Any],
        ctx: StepContext | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    # --- export ------------------------------------------------------------------------------------
    @classmethod
    def export_backbone_state(cls, cfg: PluginConfig, state: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, Any]:
        """Make ``state`` (a backbone state dict, edited in place) a plain timm ViT's; return notes."""
        return {}


def plain_backbone_state(plugins: Mapping[str, Mapping[str, Any] | None], state: dict[str, torch.Tensor],
                         backbone: nn.Module) -> dict[str, Any]:
    """Apply every configured plug-in's ``export_backbone_state`` to ``state`` (in place); merged notes.

    ``plugins`` is a training config's ``plugins`` section; ``backbone`` a plain ViT of the same
    architecture. Afterwards ``state`` loads strictly into a plain timm ViT.
    """
    notes: dict[str, Any] = {}
    for name, params in plugins.items():
        cls = PLUGINS.get(name, label=f"plugins.{name}")
        notes.update(cls.export_backbone_state(cls.parse_config(params or {}), state, backbone))
    return notes


def view_major(x: torch.Tensor) -> torch.Tensor:
    """(B, V, ...) per-sample batch field -> (V * B, ...) view-major, the layout of images and features."""
    B, V = x.shape[:2]
    return x.transpose(0, 1).reshape(V * B, *x.shape[2:])


PLUGINS.base = Plugin
register_plugin = PLUGINS.register  # class decorator: available by ``name`` in configs; a duplicate name is refused
registered_plugins = PLUGINS.items  # built-ins plus the ``wherevit.plugins`` entry-point group


def create_plugin(name: str, params: Mapping[str, Any], embed_dim: int) -> Plugin:
    """Build plug-in ``name`` from its YAML section (validated against its Config dataclass)."""
    cls = PLUGINS.get(name, label=f"plugins.{name}")  # an unknown name lists the registered ones
    return cls(cls.parse_config(params), embed_dim)
