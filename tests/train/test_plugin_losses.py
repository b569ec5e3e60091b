"""Box sampler, view groups, losses and transformation targets of the SCRL, GTSA and equivariance plug-ins."""

import numpy as np
import pytest
import torch

from wherevit.base.config import ConfigError, from_dict
from wherevit.train.data.sources import DataError
from wherevit.train.plugins.equivariance import (
    EquiDecoder,
    EquivarianceConfig,
    EquiViewSampler,
    apply_transform,
    intermediate_targets,
)
from wherevit.train.plugins.gtsa import (
    ConvPredictor,
    ConvProjector,
    GTSAConfig,
    GTSAViewSampler,
    nearest_matches,
    patch_correspondence_loss,
    rotation_head,
    sample_gtsa_boxes,
)
from wherevit.train.plugins.roi import cxcywh_to_xyxy, intersect
from wherevit.train.plugins.scrl import SCRLHead, box_iou_xyxy, scrl_box_pairs, scrl_loss


# ---------------------------------------------------------------- SCRL boxes
def _random_box(rng):
    w, h = rng.uniform(0.2, 1.0, 2)
    return np.array([rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2), w, h])


def test_scrl_boxes_exactly_k_inside_both_views_and_min_size():
    rng = np.random.default_rng(0)
    size, min_size, k = 64, 8, 10
    n_valid = 0
    for _ in range(300):
        b1, b2 = _random_box(rng), _random_box(rng)
        f1, f2 = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        r1, r2, ok = scrl_box_pairs(b1, f1, b2, f2, size, rng, n_boxes=k, min_size=min_size)
        assert r1.shape == r2.shape == (k, 4)
        if not ok:
            assert not r1.any() and not r2.any()
            continue
        n_valid += 1
        for r in (r1, r2):
            assert (r >= 0).all() and (r <= size).all()
            assert (r[:, 2] > r[:, 0]).all() and (r[:, 3] > r[:, 1]).all()
        # minimum side: min_size pixels at the coarser view's scale, i.e. at least that in each view
        s1, s2 = size / b1[2:], size / b2[2:]
        coarse = np.minimum(s1, s2)
        for r, s in ((r1, s1), (r2, s2)):
            assert (r[:, 2] - r[:, 0] >= min_size * s[0] / coarse[0] - 1e-3).all()
            assert (r[:, 3] - r[:, 1] >= min_size * s[1] / coarse[1] - 1e-3).all()
        # both rows cover the same region of the original image
        inter = intersect(cxcywh_to_xyxy(b1), cxcywh_to_xyxy(b2))
        for i in range(k):
            back = []
            for r, b, f in ((r1[i], b1, f1), (r2[i], b2, f2)):
                x0, x1 = (size - r[2], size - r[0]) if f else (r[0], r[2])
                back.append([b[0] - b[2] / 2 + x0 / size * b[2], b[1] - b[3] / 2 + r[1] / size * b[3],
                             b[0] - b[2] / 2 + x1 / size * b[2], b[1] - b[3] / 2 + r[3] / size * b[3]])
            np.testing.assert_allclose(back[0], back[1], atol=1e-5)
            assert back[0][0] >= inter[0] - 1e-6 and back[0][2] <= inter[2] + 1e-6
    assert n_valid > 100


def test_scrl_skips_empty_and_small_intersections():
    rng = np.random.default_rng(0)
    left, right = np.array([0.2, 0.5, 0.4, 1.0]), np.array([0.8, 0.5, 0.4, 1.0])
    assert not scrl_box_pairs(left, False, right, False, 64, rng)[2]  # disjoint
    a, b = np.array([0.3, 0.5, 0.6, 1.0]), np.array([0.7, 0.5, 0.6, 1.0])  # overlap 0.2 wide
    # at 64 px the overlap is ~21 px wide in the coarser view: too small for 32 px boxes, fine for 8
    assert not scrl_box_pairs(a, False, b, False, 64, rng, min_size=32)[2]
    assert scrl_box_pairs(a, False, b, False, 64, rng, min_size=8)[2]


def test_scrl_boxes_avoid_overlap_when_they_can():
    rng = np.random.default_rng(1)
    full = np.array([0.5, 0.5, 1.0, 1.0])
    r1, _, ok = scrl_box_pairs(full, False, full, False, 224, rng, n_boxes=10, min_size=32, iou_threshold=0.5)
    assert ok
    ious = [box_iou_xyxy(r1[i], r1[j]) for i in range(10) for j in range(i)]
    assert np.mean(np.array(ious) < 0.5) > 0.9


def test_scrl_loss_range_and_zero_for_identical_branches():
    torch.manual_seed(0)
    q1, q2, z1, z2 = (torch.randn(50, 16) for _ in range(4))
    loss = scrl_loss(q1, q2, z1, z2)
    assert loss.shape == (50,) and (loss >= 0).all() and (loss <= 8).all()
    assert torch.allclose(scrl_loss(z2, z1, z1, z2), torch.zeros(50), atol=1e-6)  # identity predictor
    assert torch.allclose(scrl_loss(-z2, -z1, z1, z2), torch.full((50,), 8.0), atol=1e-5)


def test_scrl_head_batchnorm_matches_torch():
    torch.manual_seed(0)
    head = SCRLHead(8, 16, 4)
    ref = torch.nn.BatchNorm1d(16, track_running_stats=False)
    x = torch.randn(20, 8)
    h = head.fc1(x)
    torch.testing.assert_close(head.bn(h), ref(h), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- GTSA
def test_gtsa_boxes_obey_the_overlap_rule():
    cfg = GTSAConfig(n_local=6)
    rng = np.random.default_rng(0)
    for _ in range(50):
        b = sample_gtsa_boxes(rng, (96, 128), cfg)
        assert b.shape == (8, 4)
        xy = cxcywh_to_xyxy(b)
        for i in range(1, 8):
            for g in range(min(i, 2)):
                it = intersect(xy[i], xy[g])
                area = max(0, it[2] - it[0]) * max(0, it[3] - it[1])
                assert area > cfg.min_intersection * (2 if i < 2 else 1)


def test_gtsa_view_groups():
    cfg = GTSAConfig(n_local=3, global_size=32, local_size=16)
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    out = GTSAViewSampler(cfg)(img, np.random.default_rng(0))
    assert out["gtsa_global"]["images"].shape == (2, 3, 32, 32)
    assert out["gtsa_local"]["images"].shape == (3, 3, 16, 16)
    assert not out["gtsa_global"]["flips"].any() and not out["gtsa_local"]["flips"].any()
    assert set(out["gtsa_global"]["rot"]).issubset({0, 1, 2, 3})
    # same seed, same views (drawn from the per-sample generator only)
    again = GTSAViewSampler(cfg)(img, np.random.default_rng(0))
    assert np.array_equal(again["gtsa_local"]["images"], out["gtsa_local"]["images"])


def test_gtsa_too_small_image_says_so():
    cfg = GTSAConfig(n_local=2, max_tries=20, min_intersection=0.3, local_scale=(0.01, 0.02))
    with pytest.raises(DataError, match="plugins.gtsa.local_scale"):  # locals too small to overlap 30%
        sample_gtsa_boxes(np.random.default_rng(0), (64, 64), cfg)
    with pytest.raises(DataError, match="too small"):
        sample_gtsa_boxes(np.random.default_rng(0), (1, 5), GTSAConfig())


def test_patch_correspondence_on_identical_maps():
    torch.manual_seed(0)
    m = torch.randn(3, 8, 5, 5)
    assert torch.allclose(patch_correspondence_loss(m, m.clone(), 7), torch.tensor(-1.0), atol=1e-6)
    a = m.flatten(2).transpose(1, 2)
    sa, sb = nearest_matches(a, a, 7)
    assert sa.shape == sb.shape == (3, 7, 8)
    assert torch.equal(sa, sb)  # every token's nearest neighbour is itself
    assert nearest_matches(a, a, 1000)[0].shape == (3, 25, 8)  # clamped to the map


def test_gtsa_heads_shapes():
    x = torch.randn(2, 16, 4, 4)
    p = ConvProjector(16, 16, 24)
    q = ConvPredictor(24, 32, 24)
    assert q(p(x)).shape == (2, 24, 4, 4)
    assert rotation_head(16, 32, 8)(torch.randn(5, 16)).shape == (5, 4)


# ---------------------------------------------------------------- equivariance
def test_equivariance_identity_and_quarter_turns_are_exact():
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    p = np.array([37.0, 0.03, -0.02, 0.2, -0.1, 0.3, 0.05])
    assert np.array_equal(apply_transform(img, p, 0.0), img)  # theta = 0 -> u_k = u
    zero = np.zeros(7)
    assert all(np.array_equal(t, img) for t in intermediate_targets(img, zero, 2))
    u1, u2 = intermediate_targets(img, np.array([270.0, 0, 0, 0, 0, 0, 0]), 2)
    assert np.array_equal(u1, np.rot90(img, 1)) and np.array_equal(u2, np.rot90(img, 2))
    # the general (interpolating) path turns the same way as the exact one
    near = apply_transform(img, np.array([89.999, 0, 0, 0, 0, 0, 0]))
    assert np.abs(near[4:-4, 4:-4].astype(int) - np.rot90(img, 1)[4:-4, 4:-4]).mean() < 3


def test_equivariance_view_group():
    cfg = EquivarianceConfig(crop_size=16, n_intermediate=2)
    img = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    out = EquiViewSampler(cfg)(img, np.random.default_rng(0))["equi"]
    assert out["images"].shape == (2, 3, 16, 16) and out["targets"].shape == (2, 3, 16, 16)
    assert out["params"].shape == (7,)
    u = out["images"][0].transpose(1, 2, 0)
    np.testing.assert_array_equal(out["images"][1].transpose(1, 2, 0), apply_transform(u, out["params"].astype(np.float64)))
    with pytest.raises(DataError, match="too small"):
        EquiViewSampler(cfg)(img[:1], np.random.default_rng(0))


def test_equivariance_decoder_shapes():
    for patch in (4, 8, 16):
        dec = EquiDecoder(12, 32, patch)
        n_conv = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in dec.modules())
        assert n_conv == 4
        assert dec(torch.randn(2, 6, 12), (2, 3)).shape == (2, 3, 2 * patch, 3 * patch)
    with pytest.raises(ValueError, match="power of two"):
        EquiDecoder(12, 32, 12)


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize("cls,key,value", [
    ("scrl", "n_boxes", 0), ("scrl", "iou_threshold", 1.5), ("scrl", "min_size", 0),
    ("gtsa", "pc_warmup", 2.0), ("gtsa", "min_intersection", 0.0), ("gtsa", "rot_weight", -1.0),
    ("equivariance", "n_intermediate", 0), ("equivariance", "max_rotation", 400.0),
    ("equivariance", "transform", "blur"),
])
def test_bad_config_names_the_key(cls, key, value):
    from wherevit.train.plugins.equivariance import EquivarianceConfig
    from wherevit.train.plugins.scrl import SCRLConfig

    config = {"scrl": SCRLConfig, "gtsa": GTSAConfig, "equivariance": EquivarianceConfig}[cls]
    with pytest.raises(ConfigError, match=key):
        from_dict(config, {key: value}, _path=f"plugins.{cls}")


def test_scrl_plugin_is_zero_for_identical_branches_and_skips_invalid_pairs():
    from types import SimpleNamespace

    from wherevit.train.backbone import BackboneFeatures
    from wherevit.train.plugins.scrl import SCRL, SCRLConfig

    torch.manual_seed(0)
    plugin = SCRL(SCRLConfig(min_size=8, hidden_dim=32, out_dim=16), embed_dim=8)
    plugin.setup(SimpleNamespace(patch_size=8, crops=SimpleNamespace(global_size=32), positions_provided=False,
                                 host_views_altered=False))
    plugin.predictor = torch.nn.Identity()  # identity predictor; the target projector is the projector's copy
    B, K = 3, 10
    one_view = torch.randn(B, 16, 8)
    feats = {"global": BackboneFeatures(torch.zeros(2 * B, 8), torch.cat([one_view, one_view]), (4, 4))}
    r = np.random.default_rng(0)
    xy = torch.from_numpy(r.uniform(0, 16, (B, 1, K, 2))).float()
    boxes = torch.cat([xy, xy + 8], -1).expand(B, 2, K, 4)  # the same boxes in two identical views
    batch = {"scrl_boxes": {"boxes": boxes, "valid": torch.tensor([True, True, False])}}
    loss, logs = plugin(feats, feats, batch)
    assert abs(loss.item()) < 1e-5 and float(logs["scrl/valid_pairs"]) == pytest.approx(2 / 3)
    # a pair without a usable intersection contributes nothing: its boxes can be anything
    batch["scrl_boxes"]["boxes"] = boxes.clone()
    batch["scrl_boxes"]["boxes"][2, 1] = torch.tensor([0.0, 0.0, 32.0, 32.0])
    assert abs(plugin(feats, feats, batch)[0].item()) < 1e-5
    batch["scrl_boxes"]["boxes"][0, 1] = torch.tensor([0.0, 0.0, 32.0, 32.0])  # ... unlike a valid pair's
    assert plugin(feats, feats, batch)[0].item() > 1e-3
