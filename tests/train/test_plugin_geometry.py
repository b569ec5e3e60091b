"""Geometry of the SCRL and GTSA plug-ins on an image whose pixels say where they are.

Channel 0 of the test image is its x coordinate, channel 1 its y coordinate (one grey level per
pixel of a 256 x 256 image). A "feature map" of a view is its patch-averaged pixels, so the RoI
feature of a box is the mean original-image position under it. Matched boxes must read the same
position in both views (within half a patch), mirrored or turned; the same code with a wrong
flip or rotation sign must not.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from wherevit.train.data.views import ViewSpec, crop_view, make_view
from wherevit.train.plugins.gtsa import GTSAConfig, crop_rois, sample_gtsa_boxes
from wherevit.train.plugins.roi import region_in_view, roi_tokens, rotate_xyxy
from wherevit.train.plugins.scrl import scrl_box_pairs

N = 256
PATCH = 8
SIZE = 64


@pytest.fixture(scope="module")
def xy_image():
    ys, xs = np.mgrid[0:N, 0:N]
    return np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8)


def _fmap(views: np.ndarray) -> torch.Tensor:
    """(V, 3, S, S) uint8 views -> (V, 2, S/p, S/p) patch means of the x and y channels (+0.5: pixel centres)."""
    x = torch.from_numpy(np.ascontiguousarray(views[:, :2])).float() + 0.5
    return F.avg_pool2d(x, PATCH)


def _half_patch_px(box: np.ndarray) -> float:
    """Half a patch of a view cut from ``box``, in original-image pixels (the larger axis)."""
    return 0.5 * PATCH * max(box[2], box[3]) * N / SIZE


def test_rotate_xyxy_matches_np_rot90():
    img = np.zeros((SIZE, SIZE), np.uint8)
    img[10:20, 30:50] = 1  # x 30..50, y 10..20
    box = np.array([30.0, 10.0, 50.0, 20.0])
    for k in range(4):
        r = np.rot90(img, k)
        ys, xs = np.nonzero(r)
        np.testing.assert_allclose(rotate_xyxy(box, k, SIZE), [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    # torch.rot90 on (H, W) dims turns the same way
    t = torch.from_numpy(img.copy())
    assert torch.equal(torch.rot90(t, 1, dims=(-2, -1)), torch.from_numpy(np.rot90(img, 1).copy()))


@pytest.mark.parametrize("flips", [(False, False), (True, False), (False, True), (True, True)])
def test_scrl_matched_boxes_read_the_same_place(xy_image, flips):
    rng = np.random.default_rng(int(flips[0]) * 2 + int(flips[1]))
    spec = ViewSpec(SIZE, (0.3, 1.0), flip_p=0.0, color_jitter_p=0.0, grayscale_p=0.0)
    worst_ok, worst_wrong, worst_unaligned, n = 0.0, 0.0, 0.0, 0
    while n < 20:
        _, b1, _ = make_view(xy_image, spec, rng)
        _, b2, _ = make_view(xy_image, spec, rng)
        v1 = crop_view(xy_image, b1, SIZE, flips[0]).transpose(2, 0, 1)
        v2 = crop_view(xy_image, b2, SIZE, flips[1]).transpose(2, 0, 1)
        r1, r2, ok = scrl_box_pairs(b1, flips[0], b2, flips[1], SIZE, rng, n_boxes=10, min_size=PATCH)
        if not ok:
            continue
        n += 1
        fm = _fmap(np.stack([v1, v2]))
        idx = torch.zeros(10, dtype=torch.long)
        f1 = roi_tokens(fm[:1], torch.from_numpy(r1), idx, PATCH)[:, :, 0, 0]
        f2 = roi_tokens(fm[1:], torch.from_numpy(r2), idx, PATCH)[:, :, 0, 0]
        tol = max(_half_patch_px(b1), _half_patch_px(b2))
        worst_ok = max(worst_ok, float((f1 - f2).abs().max()) / tol)
        # the same boxes mapped as if view 2's flip were the other way round
        w1, w2, _ = scrl_box_pairs(b1, flips[0], b2, not flips[1], SIZE, np.random.default_rng(n), 10, PATCH)
        g1 = roi_tokens(fm[:1], torch.from_numpy(w1), idx, PATCH)[:, :, 0, 0]
        g2 = roi_tokens(fm[1:], torch.from_numpy(w2), idx, PATCH)[:, :, 0, 0]
        worst_wrong = max(worst_wrong, float((g1 - g2).abs().max()) / tol)
        # SCRL's source RoIAlign (aligned=False) reads half a token off, the other way in a mirrored view
        rois = lambda r: torch.cat([torch.zeros(10, 1), torch.from_numpy(r)], 1)  # noqa: E731
        u1 = roi_align(fm[:1], rois(r1), 1, 1 / PATCH, -1, aligned=False)[:, :, 0, 0]
        u2 = roi_align(fm[1:], rois(r2), 1, 1 / PATCH, -1, aligned=False)[:, :, 0, 0]
        worst_unaligned = max(worst_unaligned, float((u1 - u2).abs().max()) / tol)
    assert worst_ok < 1.0, worst_ok
    assert worst_wrong > 2.0, worst_wrong
    if flips[0] != flips[1]:
        assert worst_unaligned > 1.2, worst_unaligned


def test_gtsa_rois_agree_after_turning_the_teacher(xy_image):
    cfg = GTSAConfig(n_local=4, global_size=SIZE, local_size=32)
    rng = np.random.default_rng(0)
    worst_ok, worst_wrong = 0.0, 0.0
    for _ in range(12):
        boxes = sample_gtsa_boxes(rng, (N, N), cfg)
        rots = rng.integers(0, 4, len(boxes))
        sizes = [SIZE, SIZE] + [32] * cfg.n_local
        views = [np.rot90(crop_view(xy_image, b, s, False), k) for b, s, k in zip(boxes, sizes, rots)]
        t = 0  # teacher: global 0; students: every other view
        t_map = _fmap(np.ascontiguousarray(views[t].transpose(2, 0, 1))[None])
        for v in range(1, len(boxes)):
            s_map = _fmap(np.ascontiguousarray(views[v].transpose(2, 0, 1))[None])
            args = (torch.from_numpy(boxes[v][None]), torch.from_numpy(boxes[t][None]))
            tol = max(_half_patch_px(boxes[v]) * SIZE / sizes[v], _half_patch_px(boxes[t]))
            s_roi, t_roi = crop_rois(s_map, t_map, *args, torch.tensor([rots[v]]), torch.tensor([rots[t]]),
                                     sizes[v], SIZE, PATCH, 4)
            worst_ok = max(worst_ok, float((s_roi - t_roi).abs().max()) / tol)
            if (rots[v] - rots[t]) % 2:  # a quarter-turn difference: the opposite sign turns the wrong way
                s_roi, t_roi = crop_rois(s_map, t_map, *args, torch.tensor([rots[t]]), torch.tensor([rots[v]]),
                                         sizes[v], SIZE, PATCH, 4)
                worst_wrong = max(worst_wrong, float((s_roi - t_roi).abs().max()) / tol)
    assert worst_ok < 1.0, worst_ok
    assert worst_wrong > 2.0, worst_wrong


def test_region_in_view_roundtrip_under_flip_and_rotation():
    box = np.array([0.5, 0.4, 0.5, 0.6])
    region = np.array([0.3, 0.2, 0.5, 0.4])  # x0 y0 x1 y1 inside the crop
    plain = region_in_view(region, box, 100.0)
    np.testing.assert_allclose(plain, [10, 16.666666667, 50, 50], rtol=1e-6)
    np.testing.assert_allclose(region_in_view(region, box, 100.0, True), [50, 16.666666667, 90, 50], rtol=1e-6)
    t = region_in_view(torch.tensor(region), torch.tensor(box), 100.0, torch.tensor(True), torch.tensor(1))
    np.testing.assert_allclose(t.numpy(), rotate_xyxy(np.array([50, 16.666666667, 90, 50]), 1, 100.0), rtol=1e-6)
