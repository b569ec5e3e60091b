"""The host's losses and targets pinned to numbers computed by hand (plain Python loops over floats,
not the code under test): DINO's cross-view pairs, its EMA centre, Sinkhorn-Knopp, iBOT's
per-crop normalisation and its centring, the head's channel split, gradient clipping.

Inputs are asymmetric on purpose: a swapped branch, view order, sign or normalisation gives
another number.
"""

import math

import numpy as np
import pytest
import torch
from conftest import tiny_train_dict

from wherevit.base.config import from_dict
from wherevit.train.clipping import clip_gradients
from wherevit.train.config import TrainConfig
from wherevit.train.heads import DINOHead
from wherevit.train.losses import DINOLoss, IBOTPatchLoss, sinkhorn_knopp


def _softmax(row, temp):
    m = max(row)
    e = [math.exp((x - m) / temp) for x in row]
    s = sum(e)
    return [x / s for x in e]


def _log_softmax(row, temp):
    m = max(x / temp for x in row)
    lse = m + math.log(sum(math.exp(x / temp - m) for x in row))
    return [x / temp - lse for x in row]


def _ce(q, s_row, temp):
    return -sum(qi * li for qi, li in zip(q, _log_softmax(s_row, temp)))


# ---------------------------------------------------------------- DINO
S = [  # student logits per view (2 global, then 2 local), B = 2, K = 3
    [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]],
    [[0.0, 1.5, 0.2], [-1.0, 0.3, 0.9]],
    [[2.0, -0.5, 0.1], [0.0, 0.0, 1.0]],
    [[0.3, 0.3, -2.0], [1.2, -0.7, 0.4]],
]
T = [[[0.2, 1.0, -0.3], [1.1, 0.0, 0.4]], [[-0.5, 0.7, 1.3], [0.9, 0.2, -1.0]]]  # teacher, 2 global views


def test_dino_loss_skips_same_view_pairs_and_averages_the_rest():
    tau_s, tau_t, center = 0.1, 0.04, [0.1, -0.2, 0.05]
    loss = DINOLoss(3, student_temp=tau_s)
    loss.center.copy_(torch.tensor([center]))
    q = [loss.teacher_probs(torch.tensor(t), tau_t) for t in T]
    # teacher targets: softmax((t - c) / tau_t)
    for iq in range(2):
        for b in range(2):
            expected = _softmax([x - c for x, c in zip(T[iq][b], center)], tau_t)
            np.testing.assert_allclose(q[iq][b].numpy(), expected, rtol=1e-5, atol=1e-7)
    out = loss([torch.tensor(s) for s in S], q).item()
    terms = []
    for iq in range(2):
        for v in range(4):
            if v == iq:  # a teacher view is never compared with the student's copy of itself
                continue
            terms.append(sum(_ce(q[iq][b].tolist(), S[v][b], tau_s) for b in range(2)) / 2)
    assert len(terms) == 6
    assert out == pytest.approx(sum(terms) / 6, rel=1e-5)
    # including the same-view pairs would give another number
    all_pairs = [sum(_ce(q[iq][b].tolist(), S[v][b], tau_s) for b in range(2)) / 2 for iq in range(2) for v in range(4)]
    assert abs(sum(all_pairs) / 8 - out) > 1e-2


def test_dino_ema_centre_by_hand():
    loss = DINOLoss(3, center_momentum=0.9)
    loss.center.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    t = torch.tensor([[0.0, 1.0, 5.0], [2.0, -1.0, 1.0], [1.0, 3.0, 0.0]])
    loss.update_center(t)
    mean = [1.0, 1.0, 2.0]
    expected = [0.9 * c + 0.1 * m for c, m in zip([1.0, 2.0, 3.0], mean)]
    np.testing.assert_allclose(loss.center[0].numpy(), expected, rtol=1e-6)


def _sinkhorn_by_hand(logits, temp, iters):
    """DINOv2's ``sinkhorn_knopp_teacher`` written out with lists (K x B matrix)."""
    B, K = len(logits), len(logits[0])
    Q = [[math.exp(logits[b][k] / temp) for b in range(B)] for k in range(K)]
    total = sum(map(sum, Q))
    Q = [[x / total for x in row] for row in Q]
    for _ in range(iters):
        Q = [[x / sum(row) / K for x in row] for row in Q]  # each prototype gets 1 / K
        cols = [sum(Q[k][b] for k in range(K)) for b in range(B)]
        Q = [[Q[k][b] / cols[b] / B for b in range(B)] for k in range(K)]  # each sample 1 / B
    return [[Q[k][b] * B for k in range(K)] for b in range(B)]


@pytest.mark.parametrize("iters", [1, 3])
def test_sinkhorn_matches_dinov2_by_hand(iters):
    logits = [[0.3, -0.2, 0.9, 0.0], [1.2, 0.4, -0.5, 0.1], [0.0, 0.8, 0.2, -1.0]]  # B = 3, K = 4
    out = sinkhorn_knopp(torch.tensor(logits), 0.5, iters)
    np.testing.assert_allclose(out.numpy(), _sinkhorn_by_hand(logits, 0.5, iters), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- iBOT
def test_ibot_loss_normalises_per_crop_and_divides_by_all_crops():
    """4 crops: 1, 3, 0 and 2 masked tokens. Each masked crop counts once whatever its count, and the
    sum is divided by all 4 crops (DINOv2 ``forward_masked``: ``-loss.sum() / masks.shape[0]``)."""
    from wherevit.train.meta_arch import PatchSites

    B, V, gh, gw = 2, 2, 2, 2
    masks = torch.zeros(B, V, gh, gw, dtype=torch.bool)  # sample-major; view-major row = v * B + b
    masks[0, 0].view(-1)[[2]] = True  # row 0: 1 token
    masks[1, 0].view(-1)[[0, 1, 3]] = True  # row 1: 3 tokens
    masks[1, 1].view(-1)[[1, 2]] = True  # row 3: 2 tokens (row 2, sample 0 view 1: none)
    loss = IBOTPatchLoss(3, student_temp=0.1)
    sites = PatchSites({"global": {"masks": masks}}, ("masks",), loss)
    assert sites.union.sum() == 6 and sites.n_crops == 4
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 3, generator=g)
    t = torch.softmax(torch.randn(6, 3, generator=g) / 0.04, -1)
    sites.teacher_probs = t
    out = sites.loss("masks", s).item()
    rows = [0, 1, 1, 1, 3, 3]  # crop of each union token, in row-major order of the (V*B, N) union
    counts = {0: 1, 1: 3, 3: 2}
    expected = sum(_ce(t[i].tolist(), s[i].tolist(), 0.1) / counts[r] for i, r in enumerate(rows)) / 4
    assert out == pytest.approx(expected, rel=1e-5)


def test_ibot_sites_of_two_fields_select_their_own_tokens():
    from wherevit.train.meta_arch import PatchSites

    masks = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    pos = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    masks[0, 0].view(-1)[[0, 3]] = True
    pos[0, 1].view(-1)[[1]] = True
    sites = PatchSites({"global": {"masks": masks, "pos_masks": pos}}, ("masks", "pos_masks"), IBOTPatchLoss(2))
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, -1.0]])  # union tokens: (crop 0, 0), (crop 0, 3), (crop 1, 1)
    t = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    sites.teacher_probs = t
    content = (_ce([0.9, 0.1], [1.0, 0.0], 0.1) / 2 + _ce([0.2, 0.8], [0.0, 2.0], 0.1) / 2) / 2
    positional = _ce([0.5, 0.5], [3.0, -1.0], 0.1) / 2
    assert sites.loss("masks", s).item() == pytest.approx(content, rel=1e-5)
    assert sites.loss("pos_masks", s).item() == pytest.approx(positional, rel=1e-5)


def test_ibot_centring_by_hand():
    ema = IBOTPatchLoss(3, center_momentum=0.8)
    ema.center.copy_(torch.tensor([[0.5, -0.5, 0.0]]))
    t = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
    np.testing.assert_allclose(ema.teacher_probs(t, 0.5)[1].numpy(), _softmax([-0.5, 1.5, -1.0], 0.5), rtol=1e-5)
    ema.update_center(t)
    np.testing.assert_allclose(ema.center[0].numpy(), [0.8 * 0.5 + 0.2 * 0.5, 0.8 * -0.5 + 0.2 * 0.5, 0.2 * 0.5], rtol=1e-6)
    ema.update_center(torch.zeros(0, 3))  # no masked token anywhere: unchanged
    np.testing.assert_allclose(ema.center[0].numpy(), [0.5, -0.3, 0.1], rtol=1e-6)
    sk = IBOTPatchLoss(4, centering="sinkhorn", sinkhorn_iterations=2)
    logits = [[0.3, -0.2, 0.9, 0.0], [1.2, 0.4, -0.5, 0.1]]
    np.testing.assert_allclose(sk.teacher_probs(torch.tensor(logits), 0.5).numpy(), _sinkhorn_by_hand(logits, 0.5, 2),
                               rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="centering"):
        IBOTPatchLoss(3, centering="median")


@pytest.mark.parametrize("centering", ["ema", "sinkhorn"])
def test_ibot_patch_targets_follow_dino_centering(centering):
    from wherevit.train.meta_arch import SSLMetaArch

    cfg = from_dict(TrainConfig, tiny_train_dict(plugins={}, **{"ibot.enabled": True, "dino.centering": centering,
                                                               "dino.sinkhorn_iterations": 2}))
    meta = SSLMetaArch(cfg)
    assert meta.ibot_loss.centering == centering == meta.dino_loss.centering
    assert meta.ibot_loss.sinkhorn_iterations == 2


# ---------------------------------------------------------------- the head's channel split
@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_head_channels_equal_a_slice_of_the_full_output(norm_last_layer):
    torch.manual_seed(0)
    head = DINOHead(8, 10, 16, 4, 3, norm_last_layer)
    if not norm_last_layer:
        with torch.no_grad():
            head.last_scale.copy_(torch.linspace(0.5, 2.0, 10))
    x = torch.randn(5, 8)
    full = head(x)
    torch.testing.assert_close(head(x, slice(3, None)), full[:, 3:], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(head(x, slice(0, 3)), full[:, :3], rtol=1e-6, atol=1e-7)


def _equi_meta(**host):
    from wherevit.train.meta_arch import SSLMetaArch

    # centres held (momentum 1): forward_losses updates them, and the test compares two forwards
    cfg = from_dict(TrainConfig, tiny_train_dict(plugins={"equivariance": {"decoder_dim": 16}},
                                                 **{"dino.center_momentum": 1.0, "ibot.center_momentum": 1.0, **host}))
    torch.manual_seed(0)
    return SSLMetaArch(cfg).eval(), cfg


@pytest.mark.parametrize("host", [{}, {"ibot.enabled": True, "ibot.mask_probability": 1.0}],
                         ids=["dino_head", "shared_ibot_head"])
def test_reserved_channels_leave_the_ssl_losses_and_feed_the_reconstruction(host):
    """z_equi is the first quarter of the patch head's channels (128 / 4 = 32): changing those rows of
    the prototype layer (student and teacher) changes the reconstruction loss only; changing the
    others changes the SSL losses, never the reconstruction loss."""
    from test_host import _batch

    meta, cfg = _equi_meta(**host)
    plugin = meta.plugins["equivariance"]
    assert plugin.reserved_head_channels == plugin.d_equi == 32
    assert meta.dino_loss.center.shape[-1] == 96 and meta._plan.dino_channels == slice(32, None)
    batch = _batch(meta, cfg)
    with torch.no_grad():  # a decoder that reads its input strongly, so a change of z_equi shows in its loss
        for dec in plugin.decoders:
            dec.linear.weight.mul_(1000.0)

    def losses():
        with torch.no_grad():
            _, logs = meta.forward_losses({g: dict(v) if isinstance(v, dict) else v for g, v in batch.items()}, 0.04)
        return {k: float(v) for k, v in logs.items() if k.startswith("loss/")}

    base = losses()
    ssl = [k for k in base if k in ("loss/dino", "loss/ibot")]
    for rows, changes in ((slice(0, 32), ["loss/equivariance"]), (slice(32, None), ssl)):
        saved = [h.last_layer.weight.detach().clone() for h in (meta.student.dino_head, meta.teacher.dino_head)]
        with torch.no_grad():
            for h in (meta.student.dino_head, meta.teacher.dino_head):
                w = h.last_layer.weight
                w[rows] = torch.flip(w[rows], dims=[1]) * 3.0
        after = losses()
        with torch.no_grad():
            for h, w in zip((meta.student.dino_head, meta.teacher.dino_head), saved):
                h.last_layer.weight.copy_(w)
        for k in base:
            if k in changes:
                assert abs(after[k] - base[k]) > 1e-4, (rows, k)
            elif k in ssl + ["loss/equivariance"]:
                assert after[k] == pytest.approx(base[k], rel=1e-6, abs=1e-7), (rows, k)


# ---------------------------------------------------------------- gradient clipping
def _params(*grads):
    out = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(len(g)))
        p.grad = torch.tensor(g, dtype=torch.float32)
        out.append(p)
    return out


def test_module_clipping_scales_each_group_by_its_own_norm():
    a = _params([3.0, 0.0], [0.0, 4.0])  # group norm 5
    b = _params([0.3, 0.4])  # norm 0.5
    logs = clip_gradients({"backbone": a, "head": b}, 1.0, "module")
    assert float(logs["grad_norm/backbone"]) == pytest.approx(5.0) and float(logs["grad_norm/head"]) == pytest.approx(0.5)
    coef = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(a[0].grad.numpy(), [3 * coef, 0], rtol=1e-6)
    np.testing.assert_allclose(a[1].grad.numpy(), [0, 4 * coef], rtol=1e-6)
    np.testing.assert_allclose(b[0].grad.numpy(), [0.3, 0.4], rtol=1e-6)  # under the limit: untouched


def test_parameter_clipping_scales_each_parameter_alone_as_dino_does():
    a = _params([3.0, 4.0], [0.3, 0.4], [0.0, 0.5])
    clip_gradients({"student": a}, 1.0, "parameter")
    np.testing.assert_allclose(a[0].grad.numpy(), [3 / (5 + 1e-6), 4 / (5 + 1e-6)], rtol=1e-6)
    np.testing.assert_allclose(a[1].grad.numpy(), [0.3, 0.4], rtol=1e-6)  # each under the limit on its own, though
    np.testing.assert_allclose(a[2].grad.numpy(), [0.0, 0.5], rtol=1e-6)  # the three together have norm 5.05


def test_global_clipping_scales_everything_by_one_norm():
    a = _params([3.0, 0.0])
    b = _params([0.0, 4.0])
    logs = clip_gradients({"backbone": a, "head": b}, 2.5, "global")
    coef = 2.5 / (5.0 + 1e-6)
    np.testing.assert_allclose(a[0].grad.numpy(), [3 * coef, 0], rtol=1e-6)
    np.testing.assert_allclose(b[0].grad.numpy(), [0, 4 * coef], rtol=1e-6)
    assert float(logs["grad_norm/backbone"]) == pytest.approx(3.0) and float(logs["grad_norm/head"]) == pytest.approx(4.0)
    c = _params([3.0, 4.0])
    clip_gradients({"x": c}, 0.0, "module")  # max_norm 0: measure only
    np.testing.assert_allclose(c[0].grad.numpy(), [3.0, 4.0])
    with pytest.raises(ValueError, match="clip mode"):
        clip_gradients({"x": c}, 1.0, "layer")


def test_the_student_is_clipped_per_module():
    meta, _ = _equi_meta(**{"ibot.enabled": True, "ibot.separate_head": True})
    groups = meta.clip_groups()
    assert list(groups) == ["backbone", "dino_head", "ibot_head", "plugins.equivariance"]
    s = meta.student
    ids = {name: {id(p) for p in ps} for name, ps in groups.items()}
    assert id(s.mask_token) in ids["backbone"]  # the mask token sits in DINOv2's backbone
    assert ids["dino_head"] == {id(p) for p in s.dino_head.parameters()}
    assert ids["plugins.equivariance"] == {id(p) for p in s.plugins["equivariance"].parameters() if p.requires_grad}
    every = {id(p) for p in s.parameters() if p.requires_grad}
    assert set().union(*ids.values()) == every and sum(map(len, ids.values())) == len(every)  # a partition


def test_koleo_near_duplicates_by_hand():
    """Two unit vectors 1e-5 rad apart and a third far away: the log distance of the close pair
    dominates, and DINOv2's eps (1e-8 inside the distance and the log) is what keeps it finite."""
    from wherevit.train.losses import KoLeoLoss

    t = 1e-5
    x = torch.tensor([[1.0, 0.0], [math.cos(t), math.sin(t)], [-1.0, 0.0]], dtype=torch.float32) * 2.0
    xn = x.double() / x.double().norm(dim=1, keepdim=True)

    def dist(i, j):  # torch.pairwise_distance: || x_i - x_j + eps ||
        return float((xn[i] - xn[j] + 1e-8).norm())

    expected = -(math.log(dist(0, 1) + 1e-8) + math.log(dist(1, 0) + 1e-8) + math.log(dist(2, 1) + 1e-8)) / 3
    assert KoLeoLoss()(x).item() == pytest.approx(expected, rel=2e-3)


def test_clip_groups_without_ibot_have_no_mask_token():
    from wherevit.train.meta_arch import SSLMetaArch

    meta = SSLMetaArch(from_dict(TrainConfig, tiny_train_dict()))
    groups = meta.clip_groups()
    assert list(groups) == ["backbone", "dino_head", "plugins.sp"] and meta.student.mask_token is None
    assert sum(len(v) for v in groups.values()) == sum(1 for p in meta.student.parameters() if p.requires_grad)


def test_sinkhorn_of_no_rows_is_empty():
    out = sinkhorn_knopp(torch.zeros(0, 4), 0.1)
    assert out.shape == (0, 4)


def test_the_ema_moves_every_teacher_module_including_a_separate_ibot_head():
    from wherevit.train.meta_arch import SSLMetaArch

    meta = SSLMetaArch(from_dict(TrainConfig, tiny_train_dict(**{"ibot.enabled": True, "ibot.separate_head": True})))
    with torch.no_grad():
        for p in meta.student.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in meta.teacher.named_parameters()}
    student = dict(meta.student.named_parameters())
    meta.update_teacher(0.75)
    for name, p in meta.teacher.named_parameters():
        torch.testing.assert_close(p, 0.75 * before[name] + 0.25 * student[name], msg=name)
    assert any(n.startswith("ibot_head.") for n in before)
