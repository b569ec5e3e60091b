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


# ---------------------------------------------------------------- hand-computed references (plain Python)
def _log_softmax(xs, tau):
    m = max(x / tau for x in xs)
    lse = m + math.log(sum(math.exp(x / tau - m) for x in xs))
    return [x / tau - lse for x in xs]


def _ce(q, s, tau):
    """-sum_k q_k log softmax(s / tau)_k."""
    return -sum(qk * lk for qk, lk in zip(q, _log_softmax(s, tau)))


def _softmax(xs, tau):
    e = [math.exp(x / tau) for x in xs]
    return [v / sum(e) for v in e]


def test_dino_loss_skips_same_view_pairs_by_hand():
    # two teacher globals, student views: the two globals and one local; B = 2 samples, K = 3 prototypes
    q = [[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]],   # teacher global 0: sample 0, sample 1
         [[0.2, 0.5, 0.3], [0.05, 0.05, 0.9]]]  # teacher global 1
    s = [[[1.0, -0.5, 0.2], [0.3, 0.1, -0.4]],  # student global 0
         [[-0.2, 0.8, 0.1], [0.0, 0.4, 0.9]],   # student global 1
         [[0.5, 0.5, -1.0], [-0.6, 0.2, 0.3]]]  # student local
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]  # (teacher view, student view), never the same view
    expected = sum(sum(_ce(q[t][b], s[v][b], 0.1) for b in range(2)) / 2 for t, v in pairs) / len(pairs)
    loss = DINOLoss(3, student_temp=0.1)([torch.tensor(x) for x in s], [torch.tensor(x) for x in q])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    with_same_view = sum(sum(_ce(q[t][b], s[v][b], 0.1) for b in range(2)) / 2 for t in range(2) for v in range(3)) / 6
    assert abs(with_same_view - expected) > 1e-2  # the exclusion matters on these numbers


def test_dino_teacher_softmax_and_centre_ema_by_hand():
    loss = DINOLoss(3, center_momentum=0.8)
    t1 = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])
    loss.update_center(t1)  # 0.8 * 0 + 0.2 * mean = 0.2 * (2, 1, 0.5)
    torch.testing.assert_close(loss.center, torch.tensor([[0.4, 0.2, 0.1]]))
    loss.update_center(torch.tensor([[0.0, 1.0, 5.0]]))  # 0.8 * c + 0.2 * (0, 1, 5)
    torch.testing.assert_close(loss.center, torch.tensor([[0.32, 0.36, 1.08]]))
    t = [0.5, -0.2, 1.0]
    expected = _softmax([x - c for x, c in zip(t, [0.32, 0.36, 1.08])], 0.07)
    torch.testing.assert_close(loss.teacher_probs(torch.tensor([t]), 0.07)[0], torch.tensor(expected))


def _sinkhorn_by_hand(logits, temp, iters):
    """SwAV / DINOv2 Sinkhorn-Knopp on a B x K list of lists."""
    B, K = len(logits), len(logits[0])
    q = [[math.exp(logits[b][k] / temp) for b in range(B)] for k in range(K)]  # K x B
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iters):
        q = [[v / sum(row) / K for v in row] for row in q]  # each prototype: 1 / K
        cols = [sum(q[k][b] for k in range(K)) for b in range(B)]
        q = [[q[k][b] / cols[b] / B for b in range(B)] for k in range(K)]  # each sample: 1 / B
    return [[q[k][b] * B for k in range(K)] for b in range(B)]


@pytest.mark.parametrize("iters", [1, 3])
def test_sinkhorn_by_hand(iters):
    logits = [[0.3, -0.1, 0.8], [1.2, 0.0, -0.5], [0.1, 0.4, 0.2], [-0.3, 0.9, 0.6]]
    expected = _sinkhorn_by_hand(logits, 0.5, iters)
    torch.testing.assert_close(sinkhorn_knopp(torch.tensor(logits), 0.5, iters), torch.tensor(expected),
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- iBOT's masked patch loss
def _sites_batch():
    """B = 2 samples, V = 2 global crops, a 2 x 2 patch grid; masks (B, V, 2, 2) with 1, 3, 0 and 2
    content-masked tokens and a positional mask on one crop."""
    masks = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    masks[0, 0, 0, 1] = True                      # sample 0, crop 0: 1 token
    masks[1, 0].view(-1)[[0, 2, 3]] = True        # sample 1, crop 0: 3 tokens
    masks[1, 1].view(-1)[[1, 2]] = True           # sample 1, crop 1: 2 tokens (sample 0, crop 1: none)
    pos = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    pos[0, 1].view(-1)[[0, 3]] = True             # sample 0, crop 1: 2 position-masked tokens
    return {"global": {"masks": masks, "pos_masks": pos}}


def _token_value(v, b, n, k, salt):
    return math.sin(1.3 * v + 2.1 * b + 0.7 * n + 0.37 * k + salt)


def test_ibot_loss_normalises_per_crop_by_its_masked_tokens_by_hand():
    from wherevit.train.losses import IBOTPatchLoss
    from wherevit.train.meta_arch import PatchSites

    K, B, V, N = 4, 2, 2, 4
    batch = _sites_batch()
    sites = PatchSites(batch, ("masks", "pos_masks"), IBOTPatchLoss(K, student_temp=0.1))
    # heads run on the union of the sites of the view-major patch tokens (row v * B + b), as in the host
    s_all = torch.tensor([[[_token_value(v, b, n, k, 0.0) for k in range(K)] for n in range(N)]
                          for v in range(V) for b in range(B)])
    q_all = torch.softmax(torch.tensor([[[_token_value(v, b, n, k, 1.0) * 3 for k in range(K)] for n in range(N)]
                                        for v in range(V) for b in range(B)]), -1)
    sites.teacher_probs = q_all[sites.union]
    s_union = s_all[sites.union]

    def by_hand(field):
        total = 0.0
        for b in range(B):
            for v in range(V):
                idx = batch["global"][field][b, v].flatten().nonzero().flatten().tolist()
                for n in idx:
                    q = q_all[v * B + b, n].tolist()
                    total += _ce(q, [_token_value(v, b, n, k, 0.0) for k in range(K)], 0.1) / len(idx)
        return total / (B * V)  # every crop counts in the denominator, masked or not (DINOv2)

    assert sites.loss("masks", s_union).item() == pytest.approx(by_hand("masks"), rel=1e-6)
    assert sites.loss("pos_masks", s_union).item() == pytest.approx(by_hand("pos_masks"), rel=1e-6)
    # a per-token mean would weigh the 3-token crop three times as much as the 1-token crop
    n_tok = int(batch["global"]["masks"].sum())
    flat = sum(_ce(q_all[v * B + b, n].tolist(), [_token_value(v, b, n, k, 0.0) for k in range(K)], 0.1)
               for b in range(B) for v in range(V) for n in batch["global"]["masks"][b, v].flatten().nonzero().flatten().tolist())
    assert abs(flat / n_tok - by_hand("masks")) > 1e-3


def test_ibot_teacher_centring_follows_the_dino_setting():
    from wherevit.train.losses import IBOTPatchLoss

    t = torch.tensor([[0.5, -0.2, 1.0], [0.1, 0.4, -0.3]])
    ema = IBOTPatchLoss(3, center_momentum=0.5)
    ema.update_center(torch.tensor([[1.0, 0.0, 2.0], [3.0, 2.0, 0.0]]))  # 0.5 * 0 + 0.5 * (2, 1, 1)
    torch.testing.assert_close(ema.center, torch.tensor([[1.0, 0.5, 0.5]]))
    ema.update_center(torch.zeros(0, 3))  # no masked token anywhere: unchanged
    torch.testing.assert_close(ema.center, torch.tensor([[1.0, 0.5, 0.5]]))
    expected = [_softmax([x - c for x, c in zip(row, [1.0, 0.5, 0.5])], 0.04) for row in t.tolist()]
    torch.testing.assert_close(ema.teacher_probs(t, 0.04), torch.tensor(expected))
    sk = IBOTPatchLoss(3, centering="sinkhorn", sinkhorn_iterations=2)
    sk.update_center(torch.ones(2, 3))  # the centre is kept, and ignored by Sinkhorn
    torch.testing.assert_close(sk.teacher_probs(t, 0.5), torch.tensor(_sinkhorn_by_hand(t.tolist(), 0.5, 2)))
    with pytest.raises(ValueError, match="centering"):
        IBOTPatchLoss(3, centering="median")


def test_the_host_centres_ibot_targets_as_dino_ones(tiny_cfg):
    from wherevit.train.meta_arch import SSLMetaArch

    for centering in ("ema", "sinkhorn"):
        meta = SSLMetaArch(tiny_cfg(plugins={}, ibot={"enabled": True}, **{"dino.centering": centering,
                                                                            "dino.sinkhorn_iterations": 5}))
        assert meta.ibot_loss.centering == meta.dino_loss.centering == centering
        assert meta.ibot_loss.sinkhorn_iterations == 5
