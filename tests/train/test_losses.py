"""DINO loss centring (EMA / Sinkhorn-Knopp) and the KoLeo term, against hand-computed values."""

import math

import pytest
import torch

from wherevit.base.config import ConfigError
from wherevit.train.config import load_train_config
from wherevit.train.losses import DINOLoss, KoLeoLoss, sinkhorn_knopp


def test_sinkhorn_rows_are_distributions_and_prototypes_share_the_mass():
    torch.manual_seed(0)
    logits = torch.randn(64, 16) * 0.5
    logits[:, 3] += 2.0  # one prototype every sample prefers: Sinkhorn must spread the batch anyway
    q = sinkhorn_knopp(logits, temp=0.1, n_iterations=50)
    assert q.shape == (64, 16)
    torch.testing.assert_close(q.sum(1), torch.ones(64))
    # every prototype gets B / K of the mass (softmax alone would give prototype 3 most of it)
    torch.testing.assert_close(q.sum(0), torch.full((16,), 64 / 16), atol=1e-3, rtol=0)
    assert torch.softmax(logits / 0.1, -1).sum(0)[3] > 32


def test_sinkhorn_ignores_a_common_offset_and_survives_huge_logits():
    logits = torch.randn(8, 5)
    ref = sinkhorn_knopp(logits, 0.05)
    # exp(x / 0.05) overflows float32 for x > 4.4 without the max shift
    torch.testing.assert_close(sinkhorn_knopp(logits + 10.0, 0.05), ref, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(sinkhorn_knopp(logits * 1e4, 0.05)).all()


def test_sinkhorn_of_a_uniform_batch_is_uniform():
    q = sinkhorn_knopp(torch.zeros(4, 8), 0.04)
    torch.testing.assert_close(q, torch.full((4, 8), 1 / 8))


def test_koleo_matches_hand_computed_nearest_neighbour_distances():
    # unit vectors at 0, 90 and 100 degrees: neighbours are 0->90 (dist sqrt 2), 90<->100
    ang = torch.tensor([0.0, 90.0, 100.0]) * math.pi / 180
    x = torch.stack([torch.cos(ang), torch.sin(ang)], 1) * 3.0  # the scale is normalised away
    d_far, d_near = math.sqrt(2.0), 2 * math.sin(math.radians(5.0))
    expected = -(math.log(d_far) + 2 * math.log(d_near)) / 3
    assert KoLeoLoss()(x).item() == pytest.approx(expected, rel=1e-5)


def test_koleo_prefers_spread_features_and_its_gradient_spreads_them():
    torch.manual_seed(0)
    clustered = torch.randn(1, 8) + 0.01 * torch.randn(32, 8)
    spread = torch.randn(32, 8)
    koleo = KoLeoLoss()
    assert koleo(clustered) > koleo(spread) + 1.0
    x = clustered.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=0.05)
    before = koleo(x).item()
    for _ in range(20):
        opt.zero_grad()
        koleo(x).backward()
        opt.step()
    assert koleo(x).item() < before - 0.5


def test_dino_loss_centering_choices():
    loss = DINOLoss(8, centering="sinkhorn")
    logits = torch.randn(6, 8)
    torch.testing.assert_close(loss.teacher_probs(logits, 0.04), sinkhorn_knopp(logits, 0.04))
    with pytest.raises(ValueError, match="centering"):
        DINOLoss(8, centering="median")
    with pytest.raises(ConfigError, match="centering"):
        load_train_config("quickstart", ["dino.centering=median"])
    with pytest.raises(ConfigError, match="koleo_weight must be >= 0"):
        load_train_config("quickstart", ["dino.koleo_weight=-0.1"])
