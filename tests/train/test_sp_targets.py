import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wherevit.train.data.views import box_iou
from wherevit.train.plugins.sp import SPConfig, sample_disentangled_pair, sp_inverse, sp_target

coord = st.floats(0.05, 0.95)
size = st.floats(0.02, 0.9)
boxes = st.tuples(coord, coord, size, size).map(lambda t: np.array(t, np.float64))


@settings(max_examples=200, deadline=None)
@given(boxes, boxes, st.sampled_from(["crop", "image"]))
def test_swapping_the_pair_inverts_the_transform(a, b, norm):
    t_ab = sp_target(a, b, norm)
    t_ba = sp_target(b, a, norm)
    np.testing.assert_allclose(t_ba, sp_inverse(t_ab, norm), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sp_inverse(sp_inverse(t_ab, norm), norm), t_ab, rtol=1e-9, atol=1e-12)


@given(boxes, st.sampled_from(["crop", "image"]))
def test_identical_crops_give_zero(a, norm):
    np.testing.assert_allclose(sp_target(a, a, norm), np.zeros(4), atol=1e-15)


def test_known_boxes_give_known_targets():
    a = np.array([0.25, 0.5, 0.2, 0.1])
    b = np.array([0.75, 0.4, 0.4, 0.05])
    # dx = 0.5 / 0.2, dy = -0.1 / 0.1, log(2), log(1/2)
    np.testing.assert_allclose(sp_target(a, b), [2.5, -1.0, np.log(2), -np.log(2)], rtol=1e-12)
    np.testing.assert_allclose(sp_target(a, b, "image"), [0.5, -0.1, np.log(2), -np.log(2)], rtol=1e-12)


def test_torch_and_numpy_agree():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 0.9, (16, 4))
    b = rng.uniform(0.1, 0.9, (16, 4))
    np.testing.assert_allclose(sp_target(torch.from_numpy(a), torch.from_numpy(b)).numpy(), sp_target(a, b), rtol=1e-12)


def test_unknown_normalisation_is_an_error():
    with pytest.raises(ValueError, match="normalisation"):
        sp_target(np.ones(4), np.ones(4), "pixels")


def test_pairs_are_disentangled():
    cfg = SPConfig(max_iou=0.0)
    rng = np.random.default_rng(0)
    ious = [box_iou(*sample_disentangled_pair(rng, (96, 96), cfg)) for _ in range(200)]
    assert max(ious) == 0.0


def test_regions_map_into_views_with_flips():
    from wherevit.train.data.geometry import image_to_view, intersection

    view = np.array([0.5, 0.5, 0.5, 0.5])  # covers x, y in [0.25, 0.75]
    other = np.array([0.75, 0.5, 0.5, 0.5])  # x in [0.5, 1.0]
    region = intersection(view, other)
    np.testing.assert_allclose(region, [0.5, 0.25, 0.75, 0.75])
    np.testing.assert_allclose(image_to_view(region, view, False), [0.5, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(image_to_view(region, view, True), [0.0, 0.0, 0.5, 1.0])  # the right half, mirrored
    assert intersection(np.array([0.1, 0.1, 0.1, 0.1]), np.array([0.9, 0.9, 0.1, 0.1])) is None
