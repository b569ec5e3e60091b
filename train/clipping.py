"""Gradient clipping as the sources do it: per module (DINOv2) or per parameter (DINO / iBOT).

DINOv2 (``dinov2/train/train.py``) clips each student module on its own:
``for v in model.student.values(): v.clip_grad_norm_(cfg.optim.clip_grad)`` -- the backbone, the
DINO head and the iBOT head each get their own gradient norm (3.0). DINO and iBOT
(``utils.clip_gradients``) clip every parameter's gradient norm separately:
``clip_coef = clip / (norm + 1e-6)``, applied when below 1. Neither clips one norm over the
backbone and every head together: there, a large gradient in a plug-in's head would shrink the
backbone's step.

``mode`` (``optim.clip_mode``): ``"module"`` (default; our host follows DINOv2: its meta-architecture,
Sinkhorn centring, KoLeo and iBOT defaults), ``"parameter"`` (DINO's), or ``"global"`` -- one norm over
all groups together, wherevit's behaviour before methods version 2, kept to reproduce old runs.
Every mode returns each group's gradient norm before clipping, for the logs.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch

__all__ = ["CLIP_MODES", "clip_gradients"]

CLIP_MODES = ("module", "parameter", "global")
ClipMode = Literal["module", "parameter", "global"]


def _grads(params: Sequence[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def _norm(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The l2 norm of a list of gradients as one vector (0 for none)."""
    if not grads:
        return torch.zeros((), device=device)
    norms = torch.stack(torch._foreach_norm(grads))
    return torch.linalg.vector_norm(norms.to(torch.promote_types(norms.dtype, torch.float32)))  # bf16 up, fp64 kept


@torch.no_grad()
def clip_gradients(groups: Mapping[str, Sequence[torch.nn.Parameter]], max_norm: float,
                   mode: ClipMode = "module") -> dict[str, torch.Tensor]:
    """Clip the gradients of ``groups`` (name -> parameters, e.g. ``SSLMetaArch.clip_groups()``) in
    place; returns ``{"grad_norm/<group>": norm before clipping}``. ``max_norm <= 0`` only measures."""
    if mode not in CLIP_MODES:
        raise ValueError(f"clip mode must be one of {', '.join(CLIP_MODES)}, got {mode!r}")
    grads = {name: _grads(params) for name, params in groups.items()}
    device = next((g[0].device for g in grads.values() if g), torch.device("cpu"))
    norms = {name: _norm(g, device) for name, g in grads.items()}
    logs = {f"grad_norm/{name}": n.detach() for name, n in norms.items()}
    if max_norm <= 0:
        return logs
    if mode == "parameter":
        flat = [g for gs in grads.values() for g in gs]
        if flat:
            per_param = torch._foreach_norm(flat)
            coefs = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in per_param]
            torch._foreach_mul_(flat, coefs)
        return logs
    if mode == "global":
        total = torch.linalg.vector_norm(torch.stack(list(norms.values()))) if norms else torch.zeros((), device=device)
        scopes = [([g for gs in grads.values() for g in gs], total)]
    else:
        scopes = [(grads[name], norms[name]) for name in grads]
    for gs, norm in scopes:
        if gs:
            # as torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1
            torch._foreach_mul_(gs, torch.clamp(max_norm / (norm + 1e-6), max=1.0).to(gs[0].dtype))
    return logs
