"""The crop-aligned positional field: geometry, the crop-agnostic rule, and baking for export."""

import numpy as np
import pytest
import torch
from conftest import tiny_train_dict

from wherevit.base.config import from_dict
from wherevit.train.backbone import TokenInputs, create_backbone, forward_tokens
from wherevit.train.checkpoint import plain_backbone
from wherevit.train.config import TrainConfig
from wherevit.train.meta_arch import SSLMetaArch
from wherevit.train.plugins.posfield import (
    PosFieldConfig,
    PositionalField,
    export_affine,
    field_grid,
    patch_centres,
    sample_field,
)


def _ramp_field(S=16, D=4):
    """Channel 0 and 1: linear ramps in x and y; bilinear sampling reproduces them exactly."""
    ax = torch.linspace(-1, 1, S)
    f = torch.zeros(1, D, S, S)
    f[0, 0] = ax[None, :].expand(S, S)
    f[0, 1] = ax[:, None].expand(S, S)
    return f


def test_ramp_field_gives_equal_positions_where_two_crops_see_the_same_point():
    field = _ramp_field()
    grid = (4, 4)
    # crop b = crop a shifted right by one patch, and mirrored; the same image affine for both views
    a = torch.tensor([[0.45, 0.5, 0.4, 0.4]])
    b = torch.tensor([[0.55, 0.5, 0.4, 0.4]])
    affine = torch.tensor([[0.5, 0.2, 0.25]])
    pa = sample_field(field, field_grid(patch_centres(a, torch.tensor([False]), grid), affine)).view(4, 4, -1)
    pb = sample_field(field, field_grid(patch_centres(b, torch.tensor([True]), grid), affine)).view(4, 4, -1)
    # a's column j+1 covers the image column of b's unmirrored column j, which b shows at 3 - j
    for j in range(3):
        torch.testing.assert_close(pa[:, j + 1], pb[:, 3 - j], rtol=0, atol=1e-6)
    # and the embedding does move across the crop (the test is not vacuous)
    assert (pa[0, 1, 0] - pa[0, 0, 0]).abs() > 1e-3
    # the value is the ramp at u = s x + t of the patch centre (align_corners=False: coordinate g in
    # [-1, 1] sits at field index ((g + 1) S - 1) / 2, where the ramp holds -1 + 2 index / (S - 1))
    x_centre = 0.45 - 0.2 + 0.5 * 0.1
    g = 2 * (0.5 * x_centre + 0.2) - 1
    expected = -1 + ((g + 1) * 16 - 1) / 15
    torch.testing.assert_close(pa[0, 0, 0], torch.tensor(expected), rtol=0, atol=1e-5)


def _posfield_meta(**plugins):
    over = {"ibot": {"enabled": True}, "plugins": {"posfield": {"field_size": 8}, **plugins}}
    torch.manual_seed(0)
    return SSLMetaArch(from_dict(TrainConfig, tiny_train_dict(**over)))


def test_geometric_plugin_views_get_crop_agnostic_positions():
    meta = _posfield_meta(sp={"weight": 0.5, "crop_size": 16, "scale": [0.05, 0.25], "hidden_dim": 32})
    provider = meta._plan.provider
    assert isinstance(provider, PositionalField)
    assert "sp" not in meta._plan.aligned and {"global", "local"} <= meta._plan.aligned
    bb = meta.student.backbone
    B, V = 3, 2
    rnd = torch.Generator().manual_seed(0)
    def batch(boxes, flips):
        return {"sp": {"images": torch.zeros(B, V, 3, 16, 16, dtype=torch.uint8), "boxes": boxes, "flips": flips},
                "posfield": {"affine": torch.rand(B, 3, generator=rnd) * 0.5}}
    b1 = batch(torch.rand(B, V, 4, generator=rnd) * 0.5 + 0.25, torch.zeros(B, V, dtype=torch.bool))
    b2 = batch(torch.rand(B, V, 4, generator=rnd) * 0.5 + 0.25, torch.ones(B, V, dtype=torch.bool))
    p1 = provider.positions(bb, "sp", b1, meta._plan.aligned.__contains__("sp"))
    p2 = provider.positions(bb, "sp", b2, False)
    assert torch.equal(p1, p2) and torch.equal(p1[0], p1[-1])
    # crop-aligned groups do see their boxes
    q1, q2 = provider.positions(bb, "sp", b1, True), provider.positions(bb, "sp", b2, True)
    assert not torch.allclose(q1, q2)


def test_baked_pos_embed_equals_the_field_forward_over_the_full_frame():
    meta = _posfield_meta()
    bb = meta.student.backbone.eval()
    cfg = PosFieldConfig(field_size=8)
    plain, notes = plain_backbone(bb.state_dict(), "vit_tiny_patch16_224",
                                  {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2},
                                  {"posfield": {"field_size": 8}})
    assert "pos_field" not in plain.state_dict()
    assert notes["positional"]["kind"] == "posfield" and notes["positional"]["export_scale"] == "mean"
    assert notes["positional"]["field_forward_max_abs_diff"] < 1e-5
    np.testing.assert_allclose(notes["positional"]["affine"], export_affine(cfg))
    x = torch.randn(2, 3, 32, 32)
    batch = {"global": {"images": x[:, None]}}
    with torch.no_grad():
        pos = PositionalField(cfg, 64).positions(bb, "global", batch, crop_aligned=False)
        field_forward = forward_tokens(bb, x, TokenInputs(pos=pos))
        baked = plain.forward_features(x)
    torch.testing.assert_close(baked[:, 0], field_forward.cls, rtol=0, atol=1e-6)
    torch.testing.assert_close(baked[:, 1:], field_forward.patch, rtol=0, atol=1e-6)
    # a plain timm ViT: builds from timm alone and loads the state strictly
    fresh = create_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
    fresh.load_state_dict(plain.state_dict(), strict=True)


def test_the_exported_region_is_the_mean_scale_centred_or_the_full_frame():
    """Beta(2, 5) has mean 2/7: the centred region starts at (1 - 2/7) / 2 = 5/14 on both axes; an asymmetric
    Beta(3, 1) (mean 3/4, start 1/8) tells a and b apart; "full" and augment off bake the whole frame."""
    assert export_affine(PosFieldConfig()) == pytest.approx((2 / 7, 5 / 14, 5 / 14))
    assert export_affine(PosFieldConfig(scale_beta=(3.0, 1.0))) == pytest.approx((0.75, 0.125, 0.125))
    assert export_affine(PosFieldConfig(export_scale="full")) == (1.0, 0.0, 0.0)
    assert export_affine(PosFieldConfig(augment=False)) == (1.0, 0.0, 0.0)
