"""What the plug-ins' data halves hand the host (keys, dtypes, shapes, the augmentation they were
built with), the box helpers the spatial evaluations share, and the remaining knobs of the SP loss
and of gradient clipping, each against a number or an exact array."""

import math

import numpy as np
import pytest
import torch

from wherevit.train.backbone import BackboneFeatures
from wherevit.train.clipping import clip_gradients
from wherevit.train.data.geometry import box_corners, image_to_view, intersection
from wherevit.train.data.views import make_view
from wherevit.train.plugins.equivariance import EquivarianceConfig, EquiViewSampler, apply_transform, intermediate_targets
from wherevit.train.plugins.gtsa import GTSAConfig, GTSAViewSampler
from wherevit.train.plugins.scrl import SCRLBoxHook, SCRLConfig, scrl_box_pairs
from wherevit.train.plugins.sp import SpatialPrediction, SPConfig


# ---------------------------------------------------------------- box helpers (shared with the evaluations)
def test_box_corners_and_intersection_by_hand():
    np.testing.assert_allclose(box_corners(np.array([0.5, 0.4, 0.2, 0.6])), [0.4, 0.1, 0.6, 0.7])
    assert box_corners(np.array([0.5, 0.4, 0.2, 0.6])).dtype == np.float64
    a, b = np.array([0.3, 0.4, 0.4, 0.6]), np.array([0.55, 0.5, 0.3, 0.2])  # corners (0.1, 0.1, 0.5, 0.7), (0.4, 0.4, 0.7, 0.6)
    np.testing.assert_allclose(intersection(a, b), [0.4, 0.4, 0.5, 0.6])
    np.testing.assert_allclose(intersection(b, a), [0.4, 0.4, 0.5, 0.6])
    assert intersection(a, np.array([0.8, 0.4, 0.2, 0.2])) is None  # apart in x only
    assert intersection(a, np.array([0.3, 0.9, 0.2, 0.2])) is None  # apart in y only
    assert intersection(a, np.array([0.6, 0.4, 0.2, 0.2])) is None  # touching at x = 0.5: empty
    assert intersection(a, np.array([0.3, 0.8, 0.2, 0.2])) is None  # touching at y = 0.7: empty


def test_image_to_view_by_hand_and_mirrored():
    view = np.array([0.5, 0.4, 0.4, 0.2])  # corners (0.3, 0.3, 0.7, 0.5)
    region = np.array([0.4, 0.35, 0.5, 0.45])
    np.testing.assert_allclose(image_to_view(region, view, False), [0.25, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(image_to_view(region, view, True), [0.5, 0.25, 0.75, 0.75])
    assert image_to_view(region, view, False).dtype == np.float64


# ---------------------------------------------------------------- SP
def _sp(cfg, dim=2):
    plugin = SpatialPrediction(cfg, embed_dim=dim)
    with torch.no_grad():
        plugin.head[0].weight.zero_()
        plugin.head[0].bias.copy_(torch.tensor([1.0, -2.0, 0.5, 0.0]))  # a constant prediction
    return plugin


def test_sp_smooth_l1_image_normalisation_mean_pooling_and_logs_by_hand():
    cfg = SPConfig(n_pairs=1, n_layers=1, loss="smooth_l1", beta=0.5, normalize="image", embedding="mean")
    plugin = _sp(cfg)
    boxes = torch.tensor([[[0.3, 0.4, 0.2, 0.1], [0.6, 0.2, 0.4, 0.3]]], dtype=torch.float64)
    patch = torch.arange(8.0).view(2, 2, 2)
    loss, logs = plugin({"sp": BackboneFeatures(torch.zeros(2, 2), patch, (1, 2))}, {}, {"sp": {"boxes": boxes}})
    target = [0.3, -0.2, math.log(2), math.log(3)]  # image normalisation: dx, dy not divided by the crop
    pred = [1.0, -2.0, 0.5, 0.0]

    def sl1(d, beta=0.5):
        return 0.5 * d * d / beta if abs(d) < beta else abs(d) - 0.5 * beta

    assert loss.item() == pytest.approx(sum(sl1(p - t) for p, t in zip(pred, target)) / 4, rel=1e-5)
    err = [abs(p - t) for p, t in zip(pred, target)]
    assert float(logs["sp/mae_dx"]) == pytest.approx(err[0], rel=1e-5)
    assert float(logs["sp/mae_dy"]) == pytest.approx(err[1], rel=1e-5)
    assert float(logs["sp/mae_ds"]) == pytest.approx((err[2] + err[3]) / 2, rel=1e-5)
    # mean pooling feeds the head the mean patch token (the head is linear: check its input)
    seen = []
    plugin.head.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    plugin({"sp": BackboneFeatures(torch.zeros(2, 2), patch, (1, 2))}, {}, {"sp": {"boxes": boxes}})
    np.testing.assert_allclose(seen[0].numpy(), [[1.0, 2.0, 5.0, 6.0, -4.0, -4.0]])  # [z_a, z_b, z_a - z_b]


# ---------------------------------------------------------------- SCRL's hook
@pytest.mark.parametrize("grid", [True, False])
def test_the_scrl_hook_passes_every_setting_to_the_box_sampler(grid):
    cfg = SCRLConfig(n_boxes=7, min_size=6, iou_threshold=0.3, max_tries=9, grid_boxes=grid)
    b0, b1 = np.array([0.4, 0.5, 0.8, 1.0]), np.array([0.6, 0.45, 0.7, 0.9])
    sample = {"global": {"boxes": np.stack([b0, b1]).astype(np.float32), "flips": np.array([True, False])}}
    SCRLBoxHook(cfg, 48)(sample, None, np.random.default_rng(7), 0)
    e1, e2, ok = scrl_box_pairs(b0.astype(np.float32).astype(np.float64), True, b1.astype(np.float32).astype(np.float64),
                                False, 48, np.random.default_rng(7), 7, 6, 0.3, 9, grid)
    assert set(sample["scrl_boxes"]) == {"boxes", "valid"} and sample["scrl_boxes"]["boxes"].shape == (2, 7, 4)
    np.testing.assert_array_equal(sample["scrl_boxes"]["boxes"], np.stack([e1, e2]))
    assert bool(sample["scrl_boxes"]["valid"]) is ok is True
    other = scrl_box_pairs(b0, True, b1, False, 48, np.random.default_rng(7), 7, 6, 0.3, 9, not grid)[0]
    assert not np.array_equal(other, e1)  # the generator choice matters
    disjoint = {"global": {"boxes": np.array([[0.2, 0.5, 0.3, 1.0], [0.8, 0.5, 0.3, 1.0]]), "flips": np.array([False, False])}}
    SCRLBoxHook(cfg, 48)(disjoint, None, np.random.default_rng(0), 0)
    assert not disjoint["scrl_boxes"]["valid"] and disjoint["scrl_boxes"]["valid"].dtype == bool


# ---------------------------------------------------------------- the equivariance pair (decoupled mode)
def test_the_decoupled_pair_is_u_and_g_theta_u_with_its_targets():
    cfg = EquivarianceConfig(mode="decoupled", crop_size=16, scale=(0.5, 1.0), transform="se2", color_jitter_p=0.0,
                             grayscale_p=0.0)
    sampler = EquiViewSampler(cfg)
    assert sampler.spec.flip_p == 0.0 and sampler.spec.size == 16 and sampler.spec.scale == (0.5, 1.0)
    assert sampler.spec.color_jitter_p == 0.0 and sampler.spec.grayscale_p == 0.0
    img = np.random.default_rng(0).integers(0, 255, (3, 40, 3), dtype=np.uint8)  # 3 rows: still croppable
    rng = np.random.default_rng(3)
    out = sampler(img, rng)["equi"]
    rng = np.random.default_rng(3)
    chw, box, flip = make_view(img, sampler.spec, rng)
    from wherevit.train.plugins.equivariance import sample_transform

    p = sample_transform(rng, cfg)
    u = chw.transpose(1, 2, 0)
    np.testing.assert_array_equal(out["images"][0], chw)
    np.testing.assert_array_equal(out["images"][1].transpose(1, 2, 0), apply_transform(u, p))
    for k, t in enumerate(intermediate_targets(u, p, 2)):
        np.testing.assert_array_equal(out["targets"][k].transpose(1, 2, 0), t)
    assert out["boxes"].dtype == np.float32 and out["params"].dtype == np.float32
    np.testing.assert_allclose(out["boxes"], np.stack([box, box]).astype(np.float32))
    assert out["flips"].dtype == bool and out["flips"].shape == (2,) and not out["flips"].any()
    np.testing.assert_allclose(out["params"], p.astype(np.float32))
    jittery = EquiViewSampler(EquivarianceConfig(mode="decoupled", color_jitter_p=0.7, grayscale_p=0.3))
    assert jittery.spec.color_jitter_p == 0.7 and jittery.spec.grayscale_p == 0.3


def test_gtsa_views_follow_its_config():
    cfg = GTSAConfig(n_local=2, global_size=16, local_size=8, color_jitter_p=0.3, grayscale_p=0.4, blur_p=0.6)
    g, loc = GTSAViewSampler(cfg).specs
    for spec in (g, loc):
        assert spec.ratio == (3 / 4, 4 / 3) and spec.flip_p == 0.0
        assert (spec.color_jitter_p, spec.grayscale_p, spec.blur_p) == (0.3, 0.4, 0.6)
    assert (g.size, g.scale, loc.size, loc.scale) == (16, cfg.global_scale, 8, cfg.local_scale)
    img = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    out = GTSAViewSampler(cfg)(img, np.random.default_rng(1))
    for name, n, size in (("gtsa_global", 2, 16), ("gtsa_local", 2, 8)):
        grp = out[name]
        assert grp["images"].shape == (n, 3, size, size) and grp["rot"].dtype == np.int64 and grp["boxes"].dtype == np.float32
        for v in range(n):  # each view is its crop turned by its own k
            k = int(grp["rot"][v])
            assert 0 <= k < 4
    # the turn is counter-clockwise by k: undoing it gives an unturned crop of the recorded box
    rng = np.random.default_rng(1)
    from wherevit.train.plugins.gtsa import sample_gtsa_boxes

    boxes = sample_gtsa_boxes(rng, (48, 48), cfg)
    chw, _, _ = make_view(img, GTSAViewSampler(cfg).specs[0], rng, box=boxes[0])
    k0 = int(rng.integers(0, 4))
    np.testing.assert_array_equal(out["gtsa_global"]["images"][0], np.rot90(chw, k0, axes=(1, 2)))
    assert out["gtsa_global"]["rot"][0] == k0


# ---------------------------------------------------------------- clipping
def test_clipping_defaults_to_modules_and_its_eps_is_dinos():
    a = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    a.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)  # norm exactly 1
    b = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    b.grad = torch.tensor([4.0], dtype=torch.float64)
    clip_gradients({"x": [a], "y": [b]}, 1.0)  # mode defaults to "module"
    np.testing.assert_allclose(a.grad.numpy(), [0.6 / (1 + 1e-6), 0.8 / (1 + 1e-6)], rtol=1e-12)  # + 1e-6, not - 1e-6
    np.testing.assert_allclose(b.grad.numpy(), [4.0 / (4 + 1e-6)], rtol=1e-12)
    c = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    c.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    clip_gradients({"x": [c]}, 1.0, "parameter")
    np.testing.assert_allclose(c.grad.numpy(), [0.6 / (1 + 1e-6), 0.8 / (1 + 1e-6)], rtol=1e-12)
    assert clip_gradients({}, 1.0, "global") == {}  # nothing to clip
    none = torch.nn.Parameter(torch.zeros(2))  # no gradient (frozen, or unused this step): skipped, norm 0
    logs = clip_gradients({"frozen": [none], "x": [c]}, 1.0, "global")
    assert none.grad is None and float(logs["grad_norm/frozen"]) == 0.0 and logs["grad_norm/frozen"].shape == ()
