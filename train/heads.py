"""Projection heads used during pretraining (never exported with the backbone)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DINOHead", "mlp"]


def mlp(in_dim: int, hidden: int, out_dim: int, n_layers: int, act_layer: type[nn.Module] = nn.GELU) -> nn.Sequential:
    """``n_layers`` linear layers with activations between them."""
    dims = [in_dim] + [hidden] * (n_layers - 1) + [out_dim]
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < n_layers - 1:
            layers.append(act_layer())
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINO projection head: MLP -> l2-normalise -> weight-normalised linear to ``out_dim`` prototypes.

    The last layer's weight rows are normalised in the forward pass, which is DINO's weight norm
    with the magnitude fixed to 1 (``norm_last_layer=True``); with ``norm_last_layer=False`` the
    magnitude is a learned per-prototype scale.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 n_layers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        self.mlp = mlp(in_dim, hidden_dim, bottleneck_dim, n_layers)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.norm_last_layer = norm_last_layer
        if not norm_last_layer:
            self.last_scale = nn.Parameter(torch.ones(out_dim))
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, channels: slice | None = None) -> torch.Tensor:
        """Prototype logits (..., out_dim), or only output ``channels`` (a slice of the prototypes:
        the same numbers as slicing the full output, without computing the rest)."""
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        weight = self.last_layer.weight if channels is None else self.last_layer.weight[channels]
        w = F.normalize(weight, dim=1)  # row-wise: a slice of rows normalises as in the full matrix
        if not self.norm_last_layer:
            w = w * (self.last_scale if channels is None else self.last_scale[channels])[:, None]
        return F.linear(x, w)
