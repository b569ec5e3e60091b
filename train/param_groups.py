"""The student's AdamW parameter groups: weight decay, layer-wise learning-rate decay, frozen layers.

Continued pretraining from loaded weights (``model.weights``) wants the early layers to move less
than the late ones and the fresh heads (BEiT / DINOv2 ``layerwise_decay``): a parameter of layer
``i`` trains at ``lr * layer_decay ** (L + 1 - i)``, where the patch embedding and the CLS,
register, position and mask tokens are layer 0, block ``k`` is layer ``k + 1``, and the final norm,
the DINO / iBOT heads and every plug-in's modules are layer ``L + 1`` (the full rate).
``freeze_blocks = N`` keeps the patch embedding, those tokens and blocks ``0 .. N-1`` as loaded
(``requires_grad`` off before the optimizer and DDP see them). Biases, norms, tokens and
position embeddings get no weight decay. Each group carries ``lr_scale`` and ``apply_wd``; the
loop's schedule multiplies its lr by ``lr_scale``.
"""

from __future__ import annotations

import re

from torch import nn

from wherevit.base.config import ConfigError

__all__ = ["layer_id", "freeze_layers", "param_groups"]

# Parameters named by these (under ``backbone.``) are input embeddings: layer 0. The loaded ones are
# frozen with the first blocks; a plug-in's positional field is new, so it always trains.
_LOADED_EMBEDDINGS = ("patch_embed.", "cls_token", "reg_token", "pos_embed")
_EMBEDDINGS = _LOADED_EMBEDDINGS + ("pos_field",)
_NO_DECAY = (".bias", "pos_embed", "pos_field", "cls_token", "reg_token", "mask_token")


def layer_id(name: str, depth: int) -> int:
    """The layer of a student parameter (see the module docstring), 0 .. depth + 1."""
    if name == "mask_token" or name.startswith(tuple(f"backbone.{e}" for e in _EMBEDDINGS)):
        return 0
    m = re.match(r"backbone\.blocks\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    return depth + 1


def freeze_layers(student: nn.Module, n_blocks: int) -> list[str]:
    """Turn off gradients of the backbone's patch embedding, tokens and first ``n_blocks`` blocks; their names."""
    if n_blocks <= 0:
        return []
    depth = len(student.backbone.blocks)
    if n_blocks > depth:
        raise ConfigError(f"optim.freeze_blocks is {n_blocks}, but the backbone has {depth} blocks")
    frozen = []
    for name, p in student.named_parameters():
        if name.startswith(tuple(f"backbone.{e}" for e in _LOADED_EMBEDDINGS)) or (
                name.startswith("backbone.blocks.") and layer_id(name, depth) <= n_blocks):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def param_groups(student: nn.Module, layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups by (layer, weight decay or not) over the trainable parameters, each with ``lr_scale``."""
    depth = len(student.backbone.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in student.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or name.endswith(_NO_DECAY))
        layer = layer_id(name, depth) if layer_decay != 1.0 else depth + 1
        g = groups.setdefault((layer, decay), {"params": [], "apply_wd": decay,
                                               "lr_scale": float(layer_decay ** (depth + 1 - layer)), "layer": layer})
        g["params"].append(p)
    # decay first, then by layer: the order the single-group optimizer had (decay, no decay) when layer_decay is off
    return [groups[k] for k in sorted(groups, key=lambda k: (not k[1], k[0]))]
