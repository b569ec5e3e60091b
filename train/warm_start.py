"""Continued pretraining: a run's student and teacher backbones start from a weights file.

``start_from_weights(meta, cfg)`` reads ``model.weights`` (any layout ``train/weights.py`` knows),
builds the configured model at ``model.img_size`` through timm's filter (DINOv2's 518 px grid is
resampled once, by timm), and loads the result into the student's and the teacher's backbone. The
DINO / iBOT heads and every plug-in stay as the seeded constructor made them (fresh), identical in
student and teacher. A mask token the file trained (DINOv2's ``mask_token``, iBOT's
``masked_embed``) initialises the student's iBOT mask token. The provenance (file, SHA-256, layout,
what was resampled) goes to ``run/weights.json``; ``initialised_from(run_dir)`` reads it back for the
exported backbone's record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from wherevit.base.config import ConfigError
from wherevit.base.io import atomic_write_text
from wherevit.train.backbone import timm_kwargs
from wherevit.train.config import TrainConfig
from wherevit.train.weights import WeightsError, WeightsMismatch, backbone_from_weights, read_weights

__all__ = ["start_from_weights", "initialised_from", "WEIGHTS_RECORD"]

WEIGHTS_RECORD = "weights.json"


def start_from_weights(meta: torch.nn.Module, cfg: TrainConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Load ``cfg.model.weights`` into ``meta.student.backbone`` and ``meta.teacher.backbone``; the record.

    ``run_dir`` (the main process's) receives ``weights.json``. Raises ``WeightsMismatch`` naming the
    keys when the file does not fit ``cfg.model``.
    """
    try:
        weights = read_weights(cfg.model.weights, cfg.model.weights_network)
    except WeightsError as e:
        raise WeightsError(f"model.weights: {e} (set it with --set model.weights=PATH)") from e
    kw = timm_kwargs(cfg.model)
    try:
        plain, info = backbone_from_weights(cfg.model.name, weights, img_size=cfg.model.img_size, timm_kwargs=kw)
    except WeightsMismatch as e:
        raise WeightsMismatch(f"model.weights: {e}\n  (the config's model: {cfg.model.name} with {kw})") from e
    state = plain.state_dict()
    for role, backbone in (("student", meta.student.backbone), ("teacher", meta.teacher.backbone)):
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        # plug-ins may attach parameters of their own to the backbone (posfield's field): only those may be missing
        plugin_keys = set(backbone.state_dict()) - set(state)
        if unexpected or set(missing) - plugin_keys:
            raise ConfigError(f"model.weights: the {role} backbone does not take the loaded weights "
                              f"(missing {sorted(set(missing) - plugin_keys)}, unexpected {sorted(unexpected)})")
    record = dict(info["weights"])
    token = getattr(meta.student, "mask_token", None)
    if token is not None and "mask_token" in weights.extras:
        src = weights.extras["mask_token"]
        if src.numel() != token.numel():
            raise ConfigError(f"model.weights: the file's mask token has {src.numel()} values, the model's {token.numel()}")
        with torch.no_grad():
            token.copy_(src.reshape(token.shape).to(token.dtype))
        record["mask_token"] = "loaded"
    if run_dir is not None:
        atomic_write_text(Path(run_dir) / WEIGHTS_RECORD, json.dumps(record, indent=2) + "\n")
    return record


def initialised_from(run_dir: str | Path) -> dict[str, Any]:
    """``{"initialised_from": record}`` when the run started from a weights file, else ``{}``."""
    file = Path(run_dir) / WEIGHTS_RECORD
    return {"initialised_from": json.loads(file.read_text())} if file.is_file() else {}
