"""The DINO self-distillation loss, with its centre kept in a buffer."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["DINOLoss"]


class DINOLoss(nn.Module):
    """Cross-entropy between teacher softmax((t - c) / tau_t) and student log-softmax(s / tau_s).

    Summed over every (teacher global view, student view) pair with different views, averaged over
    pairs and batch. The centre ``c`` is an EMA of the teacher's mean output, all-reduced across
    ranks so every rank keeps the same centre.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        return F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    def forward(self, student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor]) -> torch.Tensor:
        """``student_logits``: one (B, K) tensor per student view, the global views first and in
        the same order as ``teacher_probs`` (one per teacher global view)."""
        log_p = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student_logits]
        total, n_terms = 0.0, 0
        for iq, q in enumerate(teacher_probs):
            for v, lp in enumerate(log_p):
                if v == iq:
                    continue
                total = total + torch.sum(-q * lp, dim=-1).mean()
                n_terms += 1
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        batch_sum = teacher_logits.float().sum(dim=0, keepdim=True)
        count = torch.tensor([teacher_logits.shape[0]], dtype=torch.float32, device=batch_sum.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1 - self.center_momentum)
