"""Methods composed on the host, pinned with numbers: equivariance's transformation targets and its
faithful view, positional masking on the crops iBOT leaves unmasked, SCRL's own views under the
positional field, and the mask token entering before the positional embedding.

Inputs are asymmetric (different views, samples and crops differ), so a swapped view, sample,
sign or order gives another number.
"""

import numpy as np
import pytest
import torch
from conftest import tiny_train_dict

from wherevit.base.config import from_dict
from wherevit.train.backbone import BackboneFeatures, TokenInputs, create_backbone, forward_tokens, patch_pos_embed
from wherevit.train.config import TrainConfig
from wherevit.train.data.dataset import MultiCrop, SSLDataset, StepBatchSampler
from wherevit.train.data.synthetic import SyntheticScenes
from wherevit.train.data.views import ViewSpec
from wherevit.train.meta_arch import SSLMetaArch
from wherevit.train.plugins.equivariance import (
    EquiFaithfulHook,
    Equivariance,
    EquivarianceConfig,
    apply_transform,
    intermediate_targets,
    sample_transform,
)


# ---------------------------------------------------------------- equivariance: targets
def _p(angle=0.0, tx=0.0, ty=0.0, b=0.0, c=0.0, s=0.0, h=0.0):
    return np.array([angle, tx, ty, b, c, s, h], np.float64)


def test_intermediate_translations_shift_by_the_fraction_of_theta():
    img = np.zeros((6, 9, 3), np.uint8)
    img[2, 1] = (200, 100, 50)
    img[4, 3] = (10, 20, 30)
    # theta: 3 px right (tx = 3 / 9) and 3 px down (ty = 3 / 6); K = 2 -> u_1 moves 1 px, u_2 2 px
    u1, u2 = intermediate_targets(img, _p(tx=3 / 9, ty=3 / 6), 2)
    full = apply_transform(img, _p(tx=3 / 9, ty=3 / 6))
    for out, d in ((u1, 1), (u2, 2), (full, 3)):
        expected = np.zeros_like(img)
        expected[d:, d:] = img[: 6 - d, : 9 - d]  # content moves right and down; uncovered pixels are black
        np.testing.assert_array_equal(out, expected)


def test_rotation_is_counter_clockwise_as_displayed():
    img = np.zeros((21, 21, 3), np.uint8)
    img[10, 16] = 255  # 6 px right of the centre (10, 10)
    out = apply_transform(img, _p(angle=30.0))[..., 0].astype(float)
    ys, xs = np.mgrid[0:21, 0:21]
    cy, cx = (out * ys).sum() / out.sum(), (out * xs).sum() / out.sum()
    # counter-clockwise by 30 deg on screen (y down): (10 + 6 cos 30, 10 - 6 sin 30)
    assert cx == pytest.approx(10 + 6 * np.cos(np.pi / 6), abs=0.15)
    assert cy == pytest.approx(10 - 6 * np.sin(np.pi / 6), abs=0.15)


def test_intermediate_colour_steps_by_hand():
    img = np.full((2, 3, 3), 100, np.uint8)
    img[0, 0] = (40, 80, 160)
    # brightness +0.3 in thirds: factors 1.1, 1.2; the whole transform 1.3
    u1, u2 = intermediate_targets(img, _p(b=0.3), 2)
    np.testing.assert_array_equal(u1, np.rint(img * 1.1).astype(np.uint8))
    np.testing.assert_array_equal(u2, np.rint(img * 1.2).astype(np.uint8))
    # contrast -0.3 about the mean: (x - m) * (1 - 0.1) + m for u_1
    m = img.astype(np.float32).mean()
    (c1,) = intermediate_targets(img, _p(c=-0.3), 1)
    expected = np.clip(np.rint((img.astype(np.float32) - m) * (1 - 0.15) + m), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(c1, expected)  # K = 1: half way


def test_sampled_parameters_follow_the_configured_transformation():
    rng = np.random.default_rng(0)
    cfg = EquivarianceConfig(transform="se2", max_rotation=45.0, max_translation=0.1)
    ps = np.stack([sample_transform(rng, cfg) for _ in range(200)])
    assert np.abs(ps[:, 0]).max() <= 45.0 and np.abs(ps[:, 0]).max() > 40.0
    assert np.abs(ps[:, 1:3]).max() <= 0.1 and np.abs(ps[:, 1:3]).max() > 0.09
    assert not ps[:, 3:].any()  # no colour for se2
    colour = np.stack([sample_transform(rng, EquivarianceConfig(transform="colour")) for _ in range(200)])
    assert not colour[:, :3].any() and np.abs(colour[:, 6]).max() <= 0.1 and np.abs(colour[:, 3]).max() > 0.35


# ---------------------------------------------------------------- equivariance: the faithful view pair
def test_the_faithful_hook_turns_view_1_into_g_theta_u_and_keeps_view_0():
    cfg = EquivarianceConfig(transform="all", n_intermediate=2)
    r = np.random.default_rng(3)
    v0 = r.integers(0, 255, (3, 16, 16), dtype=np.uint8)
    v1 = r.integers(0, 255, (3, 16, 16), dtype=np.uint8)
    sample = {"global": {"images": np.stack([v0, v1]), "boxes": np.zeros((2, 4), np.float32), "flips": np.zeros(2, bool)}}
    EquiFaithfulHook(cfg)(sample, None, np.random.default_rng(7), 0)
    p = sample_transform(np.random.default_rng(7), cfg)  # the hook's first draw from its generator
    u = v1.transpose(1, 2, 0)
    np.testing.assert_array_equal(sample["global"]["images"][0], v0)  # v1 = A1(I) untouched
    np.testing.assert_array_equal(sample["global"]["images"][1], apply_transform(u, p).transpose(2, 0, 1))
    for k, t in enumerate(intermediate_targets(u, p, 2)):  # targets from u (view 1 before), not view 0
        np.testing.assert_array_equal(sample["equi"]["targets"][k], t.transpose(2, 0, 1))
    np.testing.assert_allclose(sample["equi"]["params"], p.astype(np.float32))
    np.testing.assert_array_equal(sample["global"]["crop_agnostic"], [False, True])


def test_reconstruction_pairs_each_samples_two_views_in_order():
    """Decoders get [z_equi(v1); z_equi(v2)] per token of the *same* sample, z_equi being the first
    d_equi channels of the patch head; the loss is the pixel MSE against u_k, averaged over k."""
    from types import SimpleNamespace

    B, N, D, S = 2, 4, 8, 4  # a 2 x 2 grid of 2-pixel patches
    plugin = Equivariance(EquivarianceConfig(transform="rotation", d_equi=2, decoder_dim=8), embed_dim=D)
    plugin.setup(SimpleNamespace(patch_size=2, patch_head_dim=8, crops=None))
    assert plugin.reserved_head_channels == 2
    patch = torch.arange(2 * B * N * D, dtype=torch.float32).reshape(2 * B, N, D) / 50.0  # view-major rows
    seen = []

    class Dec(torch.nn.Module):  # every pixel of u_hat_k: k + 0.1 * (first z1 channel) - 0.2 * (first z2 channel)
        def __init__(self, k):
            super().__init__()
            self.k = k

        def forward(self, tokens, grid):
            seen.append(tokens)
            v = self.k + 0.1 * tokens[:, 0, 0] - 0.2 * tokens[:, 0, 2]
            return v.view(B, 1, 1, 1).expand(B, 3, S, S)

    plugin.decoders = torch.nn.ModuleList([Dec(0), Dec(1)])
    head = lambda x, channels: 2.0 * x[..., channels] + 1.0  # noqa: E731  (a patch head: channels of its output)
    ctx = SimpleNamespace(student_patch_head=head)
    targets = torch.zeros(B, 2, 3, S, S, dtype=torch.uint8)
    targets[1, 0] = 255
    targets[0, 1, 2] = 17
    images = torch.zeros(B, 2, 3, S, S, dtype=torch.uint8)
    batch = {"equi": {"targets": targets}, "global": {"images": images}}
    feats = {"global": BackboneFeatures(torch.zeros(2 * B, D), patch, (2, 2))}
    loss, _ = plugin(feats, feats, batch, ctx)
    z = 2.0 * patch[..., :2] + 1.0
    torch.testing.assert_close(seen[0], torch.cat([z[:B], z[B:]], -1))  # sample b: view 0 then view 1 of b
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    expected = 0.0
    for k in range(2):
        for b in range(B):
            v = k + 0.1 * (2 * patch[b, 0, 0] + 1) - 0.2 * (2 * patch[B + b, 0, 0] + 1)
            expected += (((v - (targets[b, k].float() - mean) / std) ** 2).mean() / (2 * B)).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- posfield: which crops are position-masked
def _dataset(meta, cfg):
    c = cfg.data.crops
    transform = MultiCrop(ViewSpec(c.global_size, c.global_scale), c.n_global, ViewSpec(c.local_size, c.local_scale),
                          c.n_local, extra=meta.view_samplers())
    return SSLDataset(SyntheticScenes(16, 48, 0), transform, meta.data_hooks())


def _samples(plugins, **over):
    cfg = from_dict(TrainConfig, tiny_train_dict(plugins=plugins, ibot={"enabled": True}, **over))
    ds = _dataset(SSLMetaArch(cfg), cfg)
    return [ds[k] for s in range(4) for k in StepBatchSampler(16, 8, seed=0).batch_for_step(s)]


def test_positional_masks_on_unmasked_crops_keep_ibots_content_masking():
    ibot = _samples({})
    field = _samples({"posfield": {"field_size": 8, "pos_mask_on": "unmasked"}})
    paper = _samples({"posfield": {"field_size": 8}})
    content = np.stack([s["global"]["masks"] for s in ibot])
    # the option: exactly DINO + iBOT's content masks, positions masked only on crops without one
    np.testing.assert_array_equal(np.stack([s["global"]["masks"] for s in field]), content)
    pos = np.stack([s["global"]["pos_masks"] for s in field])
    has_content, has_pos = content.any((2, 3)), pos.any((2, 3))
    assert not (has_content & has_pos).any() and has_pos.sum() > 0
    share = has_pos.sum() / (~has_content).sum()  # pos_mask_share 0.5 of the unmasked crops
    assert 0.3 < share < 0.7
    n_pos = pos.sum((2, 3))[has_pos] / 16  # ratios drawn from ibot.mask_ratio [0.1, 0.5] (cross: whole lines)
    assert n_pos.min() >= 0.1 - 1e-9 and n_pos.max() <= 0.5 + 1e-9
    # the default (the paper, 50:50 on the crops iBOT masked): half of those crops lose their content mask
    p_content = np.stack([s["global"]["masks"] for s in paper]).any((2, 3))
    p_pos = np.stack([s["global"]["pos_masks"] for s in paper]).any((2, 3))
    assert not (p_pos & ~has_content).any() and not (p_content & ~has_content).any()
    np.testing.assert_array_equal(p_content | p_pos, has_content)
    assert 0.3 < p_pos.sum() / has_content.sum() < 0.7


# ---------------------------------------------------------------- SCRL under the positional field
def _meta(plugins, **over):
    torch.manual_seed(0)
    return SSLMetaArch(from_dict(TrainConfig, tiny_train_dict(plugins=plugins, ibot={"enabled": True}, **over)))


def test_scrl_takes_its_own_crop_agnostic_pair_when_positions_would_give_the_match_away():
    scrl = {"min_size": 8, "hidden_dim": 32, "out_dim": 16}
    alone = _meta({"scrl": scrl})
    assert alone.plugins["scrl"].group == "global" and "scrl" not in alone.view_samplers()
    meta = _meta({"scrl": scrl, "posfield": {"field_size": 8}})
    plugin = meta.plugins["scrl"]
    assert plugin.group == "scrl" and "scrl" in meta.student_groups and "scrl" in meta.teacher_groups
    assert "scrl" not in meta._plan.aligned
    cfg = meta.cfg
    sample = _dataset(meta, cfg)[3]
    assert sample["scrl"]["images"].shape == (2, 3, 32, 32) and "scrl_boxes" in sample
    # boxes are drawn in SCRL's own pair: mapped back to the image they cover the same region in both views
    from wherevit.train.plugins.roi import cxcywh_to_xyxy

    boxes, views = sample["scrl_boxes"]["boxes"], sample["scrl"]
    if sample["scrl_boxes"]["valid"]:
        back = []
        for v in range(2):
            x0, y0, x1, y1 = (boxes[v, :, i].astype(np.float64) for i in range(4))
            if views["flips"][v]:
                x0, x1 = 32 - x1, 32 - x0
            c = cxcywh_to_xyxy(views["boxes"][v].astype(np.float64))
            w, h = c[2] - c[0], c[3] - c[1]
            back.append(np.stack([c[0] + x0 / 32 * w, c[1] + y0 / 32 * h, c[0] + x1 / 32 * w, c[1] + y1 / 32 * h]))
        np.testing.assert_allclose(back[0], back[1], atol=1e-5)
    # and the pair is embedded with one full-frame positional embedding, whatever its boxes and flips
    batch = torch.utils.data.default_collate([sample, _dataset(meta, cfg)[5]])
    pos = meta._plan.provider.positions(meta.student.backbone, "scrl", batch, "scrl" in meta._plan.aligned)
    assert torch.equal(pos[0], pos[-1])
    aligned = meta._plan.provider.positions(meta.student.backbone, "global", batch, True)
    assert not torch.allclose(aligned[0], aligned[1])  # the DINO views do see their boxes
    # equivariance's faithful view 1 no longer matches its box: SCRL takes its own pair there too
    both = _meta({"scrl": scrl, "equivariance": {"decoder_dim": 16}})
    assert both.plugins["scrl"].group == "scrl"


# ---------------------------------------------------------------- the token path
def test_the_mask_token_replaces_the_patch_embedding_before_the_positional_embedding():
    torch.manual_seed(0)
    model = create_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2).eval()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [1, 6]] = True
    mask[1, [15]] = True
    token = torch.randn(64)
    seen = {}
    hook = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].detach()))
    with torch.no_grad():
        forward_tokens(model, x, TokenInputs(mask=mask), token)
        hook.remove()
        _, pe = patch_pos_embed(model, (4, 4))
        expected = model.patch_embed(x).reshape(2, 16, 64)
        expected = torch.where(mask[..., None], token, expected) + pe
    torch.testing.assert_close(seen["x"][:, 1:], expected, rtol=0, atol=1e-6)
    # two masked sites differ by their positional embeddings only
    torch.testing.assert_close(seen["x"][0, 2] - seen["x"][0, 7], pe[0, 1] - pe[0, 6], rtol=0, atol=1e-6)
