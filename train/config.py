"""Training configuration: validated dataclasses loaded from YAML (see ``configs/``).

Every field has a default that is sensible at ImageNet/ViT-S scale; the presets in ``configs/``
override what differs. Unknown keys are errors (``wherevit.base.config.from_dict``). Plug-in sections
are validated by each plug-in's own config dataclass when the config loads (``TrainConfig.validate``).

``CropConfig`` and ``IBOTConfig`` live in ``train/host_config.py`` (re-exported here): plug-ins read
them through ``HostSpec``, so they sit below both this module and the plug-ins, and the plug-ins never
import this one (this module imports the plug-in registry to validate ``plugins:``, not the reverse).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from wherevit.base.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from wherevit.train.host_config import CropConfig, IBOTConfig  # re-exported: the sections plug-ins see (HostSpec)

__all__ = [
    "ModelConfig", "CropConfig", "DataConfig", "DinoConfig", "IBOTConfig", "OptimConfig", "TrainConfig",
    "load_train_config", "preset_names", "config_path", "METHODS_VERSION",
]

# What a config trains, beyond its values: bump when a default changes the method (2: faithful
# equivariance, iBOT centring per dino.centering, per-module clipping, SCRL's own views under posfield).
# Study cache keys hash only non-default values, so they include this to never reuse older runs.
METHODS_VERSION = 2


@dataclass
class ModelConfig:
    """A timm VisionTransformer by name, with overrides (None keeps timm's value)."""

    name: str = "vit_small_patch16_224"
    img_size: int = 224
    patch_size: Optional[int] = None
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    drop_path_rate: float = 0.1
    pretrained: bool = False  # True downloads timm weights: never in tests or CI
    kwargs: dict[str, Any] = field(default_factory=dict)  # any other timm VisionTransformer argument
    # Start from a weights file (train/weights.py reads timm, DINO, DINOv2, iBOT, MAE and wherevit
    # layouts): student and teacher backbones both load it, its position grid resampled to img_size
    # by timm; heads start fresh. Ignored on --resume (the checkpoint holds everything).
    weights: Optional[str] = None
    weights_network: Literal["teacher", "student"] = "teacher"  # which network of a two-network checkpoint

    def validate(self) -> None:
        if self.img_size <= 0:
            raise ValueError(f"img_size must be positive, got {self.img_size}")
        if self.weights and self.pretrained:
            raise ValueError("weights and pretrained both set: start from the file (weights) or timm's download (pretrained), not both")
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")


@dataclass
class DataConfig:
    """Where images come from and how they are batched."""

    # folder: images under `path`; synthetic: generated 2-D scenes; scenes3d: views of generated 3-D
    # scenes (the downstream heads' renderer). The synthetic_* fields size both generated sources.
    source: Literal["folder", "synthetic", "scenes3d"] = "folder"
    path: Optional[str] = None  # folder of images (recursive) when source == "folder"
    synthetic_count: int = 4096
    synthetic_size: int = 128
    synthetic_seed: int = 0
    global_batch_size: int = 256  # summed over all ranks; must divide by the world size
    num_workers: int = 8
    crops: CropConfig = field(default_factory=CropConfig)

    def validate(self) -> None:
        if self.source == "folder" and not self.path:
            raise ValueError("data.path is required when data.source is 'folder'")
        if self.global_batch_size <= 0:
            raise ValueError("global_batch_size must be positive")


@dataclass
class DinoConfig:
    """DINO head, loss and teacher schedules (docs/METHODS.md defaults)."""

    weight: float = 1.0
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    n_layers: int = 3
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 0  # 0: 30% of the run
    center_momentum: float = 0.9
    # "ema": DINO's running centre; "sinkhorn": DINOv2's Sinkhorn-Knopp batch centring, which
    # spreads each teacher batch evenly over the prototypes (see benchmarks/README.md for its effect)
    centering: Literal["ema", "sinkhorn"] = "ema"
    sinkhorn_iterations: int = 3
    koleo_weight: float = 0.0  # DINOv2's KoLeo spreading term on the student's global CLS tokens
    momentum_teacher: float = 0.996  # cosine to momentum_teacher_end
    momentum_teacher_end: float = 1.0
    freeze_last_layer_steps: int = 0

    def validate(self) -> None:
        if self.sinkhorn_iterations < 1:
            raise ValueError(f"sinkhorn_iterations must be >= 1, got {self.sinkhorn_iterations}")
        if self.koleo_weight < 0:
            raise ValueError(f"koleo_weight must be >= 0, got {self.koleo_weight}")


@dataclass
class OptimConfig:
    """AdamW with cosine schedules; lr = base_lr * global_batch_size / 256."""

    base_lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_steps: int = 0  # 0: 10% of the run
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float = 3.0  # 0 disables
    # "module": each student module's own norm (DINOv2); "parameter": each parameter's (DINO); "global":
    # one norm over backbone and heads (before methods version 2). train/clipping.py says more.
    clip_mode: Literal["module", "parameter", "global"] = "module"
    # Continued pretraining (train/param_groups.py): block i of L trains at lr * layer_decay ** (L - i),
    # the embeddings at layer_decay ** (L + 1), the final norm and the heads at lr (1.0: off); and the
    # patch embedding, the tokens and the first freeze_blocks blocks stay as loaded (0: none frozen).
    layer_decay: float = 1.0
    freeze_blocks: int = 0

    def validate(self) -> None:
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.freeze_blocks < 0:
            raise ValueError(f"freeze_blocks must be >= 0, got {self.freeze_blocks}")


@dataclass
class TrainConfig:
    """A whole pretraining run."""

    seed: int = 0
    total_steps: int = 1000
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    log_every: int = 10
    ckpt_every: int = 500
    keep_ckpts: int = 2
    export_from: Literal["teacher", "student"] = "teacher"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    ibot: IBOTConfig = field(default_factory=IBOTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        if self.total_steps <= 0:
            raise ValueError("total_steps must be positive")
        from wherevit.train.plugins.base import PLUGINS

        for name in self.plugins:
            cls = PLUGINS.get(name, label=f"plugins.{name}")  # an unknown name lists the registered plug-ins
            pcfg = cls.parse_config(self.plugins[name] or {}, path=f"plugins.{name}")
            if pcfg.weight > 0:
                cls.check_run_config(pcfg, self)

    def to_dict(self) -> dict:
        return to_dict(self)


def preset_names() -> list[str]:
    """Names of the training presets shipped in ``configs/`` (``study_*.yaml`` are study files, not presets)."""
    root = importlib.resources.files("wherevit.configs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml") and not p.name.startswith("study_"))


def config_path(config: str | Path) -> Path | None:
    """The YAML file behind a preset name (``quickstart``) or a path; None when there is none."""
    p = Path(config)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    root = importlib.resources.files("wherevit.configs")
    cand = root / f"{config}.yaml"
    return Path(str(cand)) if cand.is_file() else None


def load_train_config(config: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a preset by name (``quickstart``) or a YAML path, apply ``key=value`` overrides, validate."""
    data: dict = {}
    if config is not None:
        path = config_path(config)
        if path is None:
            raise ConfigError(f"no config file or preset named {config!r}; presets: {', '.join(preset_names())}")
        data = load_yaml(path)
    apply_overrides(data, list(overrides or []))
    return from_dict(TrainConfig, data)
