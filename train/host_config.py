"""The config sections the DINO host shares with plug-ins (``plugins/base.py: HostSpec``): multi-crop and iBOT.

They are part of ``TrainConfig`` (``train/config.py`` re-exports them) but live here, below both the
config and the plug-ins, so a plug-in can name their types without importing the training config
(which imports the plug-in registry to validate its ``plugins:`` section).
"""

from __future__ import annotations

from dataclasses import dataclass

from wherevit.base.config import ConfigError

__all__ = ["CropConfig", "IBOTConfig"]


@dataclass
class CropConfig:
    """DINO multi-crop: global views go to student and teacher, local views to the student only."""

    n_global: int = 2
    global_size: int = 224
    global_scale: tuple[float, float] = (0.32, 1.0)
    n_local: int = 8
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.32)
    flip_p: float = 0.5
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    solarize_p: float = 0.1

    def validate(self) -> None:
        if self.n_global < 2:
            raise ValueError("n_global must be >= 2 (DINO compares different views)")
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")


@dataclass
class IBOTConfig:
    """iBOT masked patch prediction, a host option (docs/METHODS.md, iBOT section; DINOv2 defaults).

    The student's global crops are masked (blocks of patch embeddings replaced by a learned mask
    token); its patch tokens at masked sites predict the teacher's patch distribution on the
    unmasked crop. The masked forward also feeds the DINO loss. The teacher temperature follows the
    DINO schedule (``dino.warmup_teacher_temp`` -> ``dino.teacher_temp``).
    """

    enabled: bool = False
    weight: float = 1.0
    mask_probability: float = 0.5  # share of global crops that are masked (stratified per batch)
    mask_ratio: tuple[float, float] = (0.1, 0.5)  # masked share of a masked crop's patches
    mask_pattern: str = "block"  # "block" (BEiT), "random" or "cross" (whole rows / columns)
    student_temp: float = 0.1
    center_momentum: float = 0.9
    separate_head: bool = False  # False: the patch head is the DINO head (DINOv2 default)
    out_dim: int = 0  # separate head only; 0: dino.out_dim

    def validate(self) -> None:
        # ConfigError with the full key: this section always sits at "ibot"
        from wherevit.train.data.masking import MASK_PATTERNS

        if self.mask_pattern not in MASK_PATTERNS:
            raise ConfigError(f"ibot.mask_pattern: unknown mask pattern {self.mask_pattern!r}; choose from {', '.join(MASK_PATTERNS)}")
        if not 0 <= self.mask_probability <= 1:
            raise ConfigError(f"ibot.mask_probability must be in [0, 1], got {self.mask_probability}")
        lo, hi = self.mask_ratio
        if not 0 <= lo <= hi <= 1:
            raise ConfigError(f"ibot.mask_ratio must satisfy 0 <= min <= max <= 1, got {[lo, hi]}")
        if self.weight < 0 or self.out_dim < 0:
            raise ConfigError("ibot.weight and ibot.out_dim must be >= 0")
