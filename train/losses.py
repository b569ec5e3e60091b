"""The DINO self-distillation loss (EMA or Sinkhorn-Knopp centring), iBOT's masked patch loss and
DINOv2's KoLeo term."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from wherevit.train.distributed import is_distributed

__all__ = ["DINOLoss", "IBOTPatchLoss", "KoLeoLoss", "sinkhorn_knopp"]


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, n_iterations: int = 3) -> torch.Tensor:
    """Teacher targets by Sinkhorn-Knopp (SwAV / DINOv2): rows of the returned (B, K) matrix sum to
    1, and over the global batch (all ranks) every prototype receives the same total mass.

    Equal mass per prototype stops the teacher from putting the whole batch on a few prototypes, and
    unlike the EMA centre it acts within the current batch, so it needs no long history to work.
    The number of samples is summed over ranks, so ranks may hold different numbers of rows (iBOT's
    masked tokens; DINOv2 ``iBOTPatchLoss.sinkhorn_knopp_teacher`` all-reduces ``n_masked_patches``).
    """
    x = logits.float() / temp
    # One shift for the whole global batch: it only scales every entry by the same factor, which the
    # first normalisation by the total removes, so this is DINOv2's exp(t / temp) exactly, without
    # overflow for large logits. (A per-sample shift would not be: it rescales columns before the
    # first row normalisation, which changes the result of a finite number of iterations.)
    shift = x.max().reshape(1) if x.numel() else x.new_full((1,), -math.inf)
    if is_distributed():
        dist.all_reduce(shift, op=dist.ReduceOp.MAX)
    q = torch.exp(x - shift).t()  # (K, B)
    n_protos = q.shape[0]
    stats = torch.stack([q.sum(), q.new_tensor(float(q.shape[1]))])  # total mass, number of samples
    if is_distributed():
        dist.all_reduce(stats)
    total, n_samples = stats[0], stats[1]
    q /= total
    for _ in range(n_iterations):
        rows = q.sum(dim=1, keepdim=True)
        if is_distributed():
            dist.all_reduce(rows)
        q /= rows.clamp_min(1e-30) * n_protos  # each prototype gets 1 / K (one no sample is near keeps zero)
        q /= q.sum(dim=0, keepdim=True).clamp_min(1e-30) * n_samples  # each sample gets 1 / B
    return (q * n_samples).t()


class DINOLoss(nn.Module):
    """Cross-entropy between teacher softmax((t - c) / tau_t) and student log-softmax(s / tau_s).

    Summed over every (teacher global view, student view) pair with different views, averaged over
    pairs and batch. With ``centering="ema"`` the centre ``c`` is an EMA of the teacher's mean
    output, all-reduced across ranks so every rank keeps the same centre; with ``"sinkhorn"`` the
    teacher targets come from :func:`sinkhorn_knopp` over the global batch instead.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "ema", sinkhorn_iterations: int = 3):
        super().__init__()
        if centering not in ("ema", "sinkhorn"):
            raise ValueError(f"centering must be 'ema' or 'sinkhorn', got {centering!r}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(teacher_logits, teacher_temp, self.sinkhorn_iterations)
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
        """EMA of the teacher's batch mean. Kept with either centring (it is cheap), so a run can
        switch from Sinkhorn to the EMA centre on resume with a warm centre."""
        batch_sum = teacher_logits.float().sum(dim=0, keepdim=True)
        count = torch.tensor([teacher_logits.shape[0]], dtype=torch.float32, device=batch_sum.device)
        if is_distributed():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1 - self.center_momentum)


class IBOTPatchLoss(nn.Module):
    """iBOT's masked patch loss; the teacher's patch targets are centred as ``dino.centering`` says.

    Per masked token: ``-sum q * log_softmax(s / tau_s)`` with ``q = softmax((t - c2) / tau_t)``
    (``centering="ema"``, c2 an EMA of the teacher's masked-token logits) or Sinkhorn-Knopp over the
    masked tokens of the global batch (``"sinkhorn"``), as DINOv2 centres patch targets the way it
    centres CLS targets (``ssl_meta_arch.py`` ``get_teacher_output``). Each token is weighted by one
    over its crop's number of masked tokens, summed, and divided by the number of crops (masked or
    not, as DINOv2's ``forward_masked`` does): each masked crop counts once whatever its ratio.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "ema", sinkhorn_iterations: int = 3):
        super().__init__()
        if centering not in ("ema", "sinkhorn"):
            raise ValueError(f"centering must be 'ema' or 'sinkhorn', got {centering!r}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(teacher_logits, teacher_temp, self.sinkhorn_iterations)
        return F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor, token_weights: torch.Tensor,
                n_crops: int) -> torch.Tensor:
        """``student_logits``/``teacher_probs`` (M, K) at M masked tokens, ``token_weights`` (M,)."""
        lp = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        return (torch.sum(-teacher_probs * lp, dim=-1) * token_weights).sum() / max(n_crops, 1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA of the mean teacher logit over the masked tokens of the global batch (all ranks);
        unchanged when no rank had a masked token. Kept under Sinkhorn centring too (cheap), like
        ``DINOLoss.update_center``."""
        batch_sum = teacher_logits.float().sum(dim=0, keepdim=True)  # (1, K), zeros for no tokens
        count = torch.tensor([teacher_logits.shape[0]], dtype=torch.float32, device=batch_sum.device)
        if is_distributed():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        # torch.where, not an if on count: no host sync per step
        updated = self.center * self.center_momentum + batch_sum / count.clamp_min(1) * (1 - self.center_momentum)
        self.center.copy_(torch.where(count > 0, updated, self.center))


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy estimator (DINOv2): -mean log distance of each l2-normalised
    feature to its nearest neighbour in the (local) batch. Pushes features apart within a batch."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.float(), p=2, dim=-1, eps=self.eps)
        with torch.no_grad():
            dots = x @ x.t()
            dots.fill_diagonal_(-2.0)  # never pick yourself as the neighbour
            nn_idx = dots.argmax(dim=1)
        dist_nn = F.pairwise_distance(x, x[nn_idx], p=2, eps=self.eps)
        return -torch.log(dist_nn + self.eps).mean()
