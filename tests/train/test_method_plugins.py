"""Plug-ins and the token path pinned on asymmetric inputs: equivariance's targets, pair order and
faithful view; positional masking's two modes; SCRL's own pair under the field; the mask token
applied before the positional embedding; the host's DINO view order; the masks drawn in workers."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_train_dict

from wherevit.base.config import from_dict
from wherevit.base.image import IMAGENET_MEAN, IMAGENET_STD
from wherevit.train.backbone import BackboneFeatures, TokenInputs, create_backbone, forward_tokens, patch_pos_embed
from wherevit.train.config import TrainConfig
from wherevit.train.data.masking import ContentMasker, MaskPlan, block_mask, cross_mask, stratified_ratios
from wherevit.train.plugins.equivariance import (
    EquiFaithfulHook,
    Equivariance,
    EquivarianceConfig,
    apply_transform,
    intermediate_targets,
    sample_transform,
)
from wherevit.train.plugins.posfield import PosFieldConfig, PosFieldHook
from wherevit.train.plugins.scrl import SCRLBoxHook, SCRLConfig
from wherevit.train.plugins.sp import SPConfig

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)


# ---------------------------------------------------------------- equivariance
def test_transform_parameters_leave_out_what_the_kind_excludes():
    rng = np.random.default_rng(0)
    for kind, zero in (("rotation", slice(1, 7)), ("translation", [0, 3, 4, 5, 6]), ("colour", slice(0, 3))):
        p = sample_transform(rng, EquivarianceConfig(transform=kind, max_rotation=30.0))
        assert np.all(p[zero] == 0), kind
    p = np.stack([sample_transform(rng, EquivarianceConfig(transform="all", max_rotation=30.0, max_translation=0.05))
                  for _ in range(200)])
    assert np.abs(p[:, 0]).max() <= 30 and np.abs(p[:, 0]).max() > 25 and (p[:, 0] < 0).any()
    assert np.abs(p[:, 1:3]).max() <= 0.05 and np.abs(p[:, 6]).max() <= 0.1 and np.abs(p[:, 3]).max() <= 0.4


def test_intermediate_targets_are_the_kth_of_k_plus_one_steps():
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, :, 0] = np.arange(8)[None, :] * 30  # asymmetric: a horizontal ramp
    u1, u2 = intermediate_targets(img, np.array([0.0, 0.0, 0.0, 0.3, 0, 0, 0]), 2)  # brightness +0.3
    np.testing.assert_array_equal(u1, np.clip(np.rint(img.astype(np.float32) * 1.1), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(u2, np.clip(np.rint(img.astype(np.float32) * 1.2), 0, 255).astype(np.uint8))
    (v1,) = intermediate_targets(img, np.array([180.0, 0, 0, 0, 0, 0, 0]), 1)  # K = 1: halfway
    np.testing.assert_array_equal(v1, np.rot90(img, 1))  # 90 degrees counter-clockwise
    t = apply_transform(img, np.array([0.0, 0.25, 0.0, 0, 0, 0, 0]))  # +2 px to the right, black behind
    np.testing.assert_array_equal(t[:, 2:], img[:, :-2])
    assert not t[:, :2].any()


def test_faithful_hook_turns_view_one_into_v2_and_flags_it():
    cfg = EquivarianceConfig(transform="rotation", n_intermediate=2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 3, 16, 16), dtype=np.uint8)
    sample = {"global": {"images": images.copy()}}
    EquiFaithfulHook(cfg)(sample, None, np.random.default_rng(5), 0)
    p = sample["equi"]["params"].astype(np.float64)
    assert p[0] != 0
    np.testing.assert_array_equal(sample["global"]["images"][0], images[0])  # v1 = A1(I) untouched
    u = images[1].transpose(1, 2, 0)
    np.testing.assert_array_equal(sample["global"]["images"][1].transpose(1, 2, 0), apply_transform(u, p))
    np.testing.assert_array_equal(sample["equi"]["targets"][0].transpose(1, 2, 0), apply_transform(u, p, 1 / 3))
    np.testing.assert_array_equal(sample["equi"]["targets"][1].transpose(1, 2, 0), apply_transform(u, p, 2 / 3))
    np.testing.assert_array_equal(sample["global"]["crop_agnostic"], [False, True])


@pytest.mark.parametrize("mode", ["faithful", "decoupled"])
def test_equivariance_pairs_view_zero_then_view_one_and_each_decoder_its_own_target(mode):
    """Features of view 0 go first in the decoder input, view 1 second, per sample; decoder k is
    scored against target k. Stub decoders record their input and return constants, so the loss is
    a number: mean_k mean((c_k - norm(target_k))^2)."""
    cfg = EquivarianceConfig(mode=mode, features="projection", d_equi=1, decoder_dim=4, crop_size=8)
    plugin = Equivariance(cfg, embed_dim=1)
    plugin.setup(SimpleNamespace(patch_size=8, patch_head_dim=16))
    with torch.no_grad():
        plugin.proj.weight.fill_(1.0)
        plugin.proj.bias.zero_()
    seen = []

    class Stub(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, tokens, grid):
            seen.append(tokens.detach().clone())
            return torch.full((tokens.shape[0], 3, 8, 8), self.value)

    plugin.decoders = torch.nn.ModuleList([Stub(0.5), Stub(-1.0)])
    B = 2
    patch = torch.tensor([[[10.0 * v + b]] for v in range(2) for b in range(B)])  # view-major, one token
    group = "global" if mode == "faithful" else "equi"
    feats = {group: BackboneFeatures(torch.zeros(2 * B, 1), patch, (1, 1))}
    targets = torch.zeros(B, 2, 3, 8, 8, dtype=torch.uint8)
    targets[:, 0] = 200
    targets[1, 1] = 30
    images = torch.zeros(B, 2, 3, 8, 8, dtype=torch.uint8)
    batch = {"equi": {"targets": targets}}
    batch.setdefault(group, {})["images"] = images
    loss, _ = plugin(feats, {}, batch)
    for tokens in seen:
        np.testing.assert_array_equal(tokens[:, 0].numpy(), [[0.0, 10.0], [1.0, 11.0]])  # [z(view 0), z(view 1)]
    mean, std = np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255
    per_k = []
    for k, c in ((0, 0.5), (1, -1.0)):
        sq = [((c - (targets[b, k, ch, 0, 0].item() - mean[ch]) / std[ch]) ** 2) for b in range(B) for ch in range(3)]
        per_k.append(sum(sq) / len(sq))
    assert loss.item() == pytest.approx(sum(per_k) / 2, rel=1e-5)


def test_faithful_equivariance_reads_the_head_channels_of_the_host_views():
    from wherevit.train.meta_arch import SSLMetaArch

    cfg = from_dict(TrainConfig, tiny_train_dict(plugins={"equivariance": {"decoder_dim": 16}}))
    meta = SSLMetaArch(cfg)
    plugin = meta.plugins["equivariance"]
    assert plugin.student_views == () and plugin.alters_host_views and plugin.proj is None
    assert "plugins.equivariance" in meta.data_hooks() and not meta.view_samplers()
    x = torch.randn(2, 5, 64)
    ctx = SimpleNamespace(student_patch_head=meta.student.dino_head)
    torch.testing.assert_close(plugin.equivariant_features(x, ctx), meta.student.dino_head(x)[..., :32])


# ---------------------------------------------------------------- positional masking
def _pos_sample(content):
    return {"global": {"masks": content.copy()}}


def test_positional_masks_replace_content_masks_in_the_papers_mode():
    hook = PosFieldHook(PosFieldConfig(pos_mask_share=1.0, mask_pattern="random"), (4, 4), 2, (0.1, 0.5))
    content = np.zeros((2, 4, 4), bool)
    content[0].flat[[1, 5, 6]] = True  # crop 0: 3 sites; crop 1 unmasked
    s = _pos_sample(content)
    hook(s, None, np.random.default_rng(0), 0)
    g = s["global"]
    assert g["pos_masks"][0].sum() == 3 and not g["masks"][0].any()  # moved, same size, content kept
    assert not g["pos_masks"][1].any() and not g["masks"][1].any()
    assert s["posfield"]["affine"][0] > 0 and 0 <= s["posfield"]["affine"][1] <= 1 - s["posfield"]["affine"][0]


def test_positional_masks_on_unmasked_crops_keep_ibots_content_masks():
    hook = PosFieldHook(PosFieldConfig(pos_mask_share=1.0, mask_pattern="random", pos_mask_on="unmasked"), (4, 4), 2,
                        (0.25, 0.25))
    content = np.zeros((2, 4, 4), bool)
    content[0].flat[[1, 5, 6]] = True
    s = _pos_sample(content)
    hook(s, None, np.random.default_rng(0), 0)
    g = s["global"]
    np.testing.assert_array_equal(g["masks"], content)  # iBOT's content masks untouched
    assert not g["pos_masks"][0].any()  # never both on one crop
    assert g["pos_masks"][1].sum() == 4  # the unmasked crop: ratio 0.25 of 16 sites
    none = PosFieldHook(PosFieldConfig(pos_mask_share=0.0, pos_mask_on="unmasked"), (4, 4), 2)
    s = _pos_sample(content)
    none(s, None, np.random.default_rng(0), 0)
    assert not s["global"]["pos_masks"].any()


def test_the_unmasked_mode_leaves_the_content_masks_of_dino_ibot_exactly():
    from test_host import _batch

    from wherevit.train.meta_arch import SSLMetaArch

    over = {"ibot.enabled": True}
    plain = from_dict(TrainConfig, tiny_train_dict(plugins={}, **over))
    field = from_dict(TrainConfig, tiny_train_dict(plugins={"posfield": {"field_size": 8, "pos_mask_on": "unmasked"}}, **over))
    a = _batch(SSLMetaArch(plain), plain)
    b = _batch(SSLMetaArch(field), field)
    assert torch.equal(a["global"]["masks"], b["global"]["masks"]) and a["global"]["masks"].any()
    assert b["global"]["pos_masks"].any() and not (b["global"]["pos_masks"] & b["global"]["masks"]).any()
    paper = from_dict(TrainConfig, tiny_train_dict(plugins={"posfield": {"field_size": 8}}, **over))
    c = _batch(SSLMetaArch(paper), paper)
    assert c["global"]["masks"].sum() < a["global"]["masks"].sum()  # the paper's mode takes content masks away


# ---------------------------------------------------------------- SCRL under the field
def test_scrl_takes_its_own_crop_agnostic_pair_under_the_field():
    from wherevit.train.meta_arch import SSLMetaArch

    over = {"ibot.enabled": True}
    cfg = from_dict(TrainConfig, tiny_train_dict(plugins={"posfield": {"field_size": 8}, "scrl": {"min_size": 8, "hidden_dim": 16,
                                                                                                  "out_dim": 8}}, **over))
    meta = SSLMetaArch(cfg)
    scrl = meta.plugins["scrl"]
    assert scrl.group == "scrl" and "scrl" in meta.student_groups and "scrl" in meta.teacher_groups
    assert "scrl" not in meta._plan.aligned and "scrl" in meta.view_samplers()
    provider = meta.plugins["posfield"]
    B = 3
    g = torch.Generator().manual_seed(0)
    batch = {"scrl": {"images": torch.zeros(B, 2, 3, 32, 32), "boxes": torch.rand(B, 2, 4, generator=g) * 0.5 + 0.25,
                      "flips": torch.tensor([[True, False]] * B)}, "posfield": {"affine": torch.rand(B, 3, generator=g)}}
    pos = provider.positions(meta.student.backbone, "scrl", batch, "scrl" in meta._plan.aligned)
    assert torch.equal(pos, pos[:1].expand_as(pos))  # matched boxes cannot be read off their positions
    # without the field SCRL reads the host's global views, as the source reads its two views
    plain = SSLMetaArch(from_dict(TrainConfig, tiny_train_dict(plugins={"scrl": {"min_size": 8, "hidden_dim": 16, "out_dim": 8}})))
    assert plain.plugins["scrl"].group == "global" and "scrl" not in plain.view_samplers()


def test_the_scrl_hook_draws_boxes_in_its_group():
    hook = SCRLBoxHook(SCRLConfig(min_size=8), 32, "scrl")
    full, right = np.array([0.5, 0.5, 1.0, 1.0]), np.array([0.75, 0.5, 0.5, 1.0])
    sample = {"global": {"boxes": np.stack([right, full]), "flips": np.array([False, False])},  # not these
              "scrl": {"boxes": np.stack([full, right]), "flips": np.array([False, True])}}
    hook(sample, None, np.random.default_rng(3), 0)
    b1, b2 = sample["scrl_boxes"]["boxes"]
    np.testing.assert_allclose(b2[:, 0], 32 - 64 * (b1[:, 2] / 32 - 0.5), atol=1e-4)  # view 2: the mirrored right half


# ---------------------------------------------------------------- the token path
def test_the_mask_token_replaces_the_patch_embedding_before_the_positional_embedding():
    torch.manual_seed(0)
    model = create_backbone("vit_tiny_patch16_224", **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 7]] = True
    mask[1, [15]] = True
    tok = torch.randn(64)
    pos = torch.randn(2, 16, 64)
    pos_mask = torch.zeros(2, 16, dtype=torch.bool)
    pos_mask[1, [2, 3]] = True
    pos_tok = torch.randn(64)
    out = forward_tokens(model, x, TokenInputs(mask, pos, pos_mask), tok, pos_tok)
    with torch.no_grad():
        pe_prefix, _ = patch_pos_embed(model, (4, 4))
        t = model.patch_embed(x).reshape(2, 16, 64)
        t = torch.where(mask[..., None], tok, t)  # content masked first ...
        p = torch.where(pos_mask[..., None], pos_tok, pos)
        t = t + p  # ... then every site gets its (or the masked) position
        cls = model.cls_token.expand(2, -1, -1) + pe_prefix
        ref = model.norm(model.blocks(torch.cat([cls, t], 1)))
    torch.testing.assert_close(out.patch, ref[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.cls, ref[:, 0], rtol=1e-5, atol=1e-5)
    # the other order (mask token after the position) is another network: the masked sites lose their positions
    with torch.no_grad():
        late = torch.where(mask[..., None], tok, model.patch_embed(x).reshape(2, 16, 64) + p)
        wrong = model.norm(model.blocks(torch.cat([cls, late], 1)))
    assert (wrong[:, 1:] - out.patch).abs().max() > 1e-3


def test_the_host_scores_each_teacher_view_against_the_other_student_views():
    """The DINO loss of a real forward, recomputed from the heads' outputs with plain loops: teacher
    global view i against student views j != i (2 global then 2 local), rows view-major."""
    from test_host import _batch

    from wherevit.train.meta_arch import SSLMetaArch

    cfg = from_dict(TrainConfig, tiny_train_dict(plugins={}))
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg).eval()
    meta.dino_loss.center.copy_(torch.linspace(-0.2, 0.3, 128)[None])
    out = {}
    meta.student.dino_head.register_forward_hook(lambda m, i, o: out.__setitem__("s", o.detach()))
    meta.teacher.dino_head.register_forward_hook(lambda m, i, o: out.__setitem__("t", o.detach()))
    batch = _batch(meta, cfg)
    B = batch["global"]["images"].shape[0]
    with torch.no_grad():
        _, logs = meta.forward_losses(batch, 0.05)
    s, t, c = out["s"].double(), out["t"].double(), torch.linspace(-0.2, 0.3, 128).double()
    assert s.shape[0] == 4 * B and t.shape[0] == 2 * B
    total, n = 0.0, 0
    for i in range(2):
        q = torch.softmax((t[i * B:(i + 1) * B] - c) / 0.05, -1)
        for j in range(4):
            if j == i:
                continue
            total += float((-(q * torch.log_softmax(s[j * B:(j + 1) * B] / 0.1, -1)).sum(-1)).mean())
            n += 1
    assert float(logs["loss/dino"]) == pytest.approx(total / n, rel=1e-5)


# ---------------------------------------------------------------- masks drawn in the workers
def test_block_masks_hit_the_count_with_blocks_of_the_minimum_area():
    rng = np.random.default_rng(0)
    for n in (9, 20, 37):
        m = block_mask(rng, (9, 9), n)
        assert m.sum() == n
    m = block_mask(np.random.default_rng(1), (9, 9), 9, min_area=9)
    assert m.sum() == 9
    rows, cols = np.nonzero(m)
    assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) < 30  # one block, not scattered sites


def test_cross_masks_take_whole_lines_without_passing_the_target():
    for seed in range(20):
        m = cross_mask(np.random.default_rng(seed), (4, 6), 10)
        assert 4 <= m.sum() <= 10
        np.testing.assert_array_equal(m, m.all(1)[:, None] | m.all(0)[None, :])
    one = cross_mask(np.random.default_rng(0), (4, 6), 1)  # a non-zero target never gives an empty mask
    assert one.sum() in (4, 6)


def test_stratified_ratios_by_hand():
    # 1 crop per sample, 4 samples: slot ranks are the permutation seeded by (run seed, 0x1B07, step)
    perm = np.random.default_rng([3, 0x1B07, 2]).permutation(4)
    out = []
    for j in range(4):
        rng = np.random.default_rng(j)
        u = (perm[j] + np.random.default_rng(j).random()) / 4
        expected = 0.1 + 0.4 * u / 0.5 if u < 0.5 else None
        got = stratified_ratios(rng, 2 * 4 + j, 0.5, (0.1, 0.5), 1, 4, 3)[0]
        assert (got is None) == (expected is None) and (got is None or got == pytest.approx(expected))
        out.append(got)
    assert sum(r is not None for r in out) == 2  # half the crops of the batch, exactly


def test_the_content_masker_masks_the_planned_share_of_each_crop():
    plan = MaskPlan(1.0, (0.25, 0.25), n_crops=2, batch_size=1, run_seed=0)
    sample = {"global": {}}
    ContentMasker(plan, (4, 4), "random")(sample, None, np.random.default_rng(0), 0)
    assert sample["global"]["masks"].shape == (2, 4, 4)
    assert sample["global"]["masks"].reshape(2, -1).sum(1).tolist() == [4, 4]
    with pytest.raises(ValueError, match="unknown mask pattern 'blocks'"):  # at construction, not in a worker
        ContentMasker(plan, (4, 4), "blocks")


# ---------------------------------------------------------------- small pieces the training tests reach
def test_token_inputs_concatenate_with_neutral_fills():
    m = torch.tensor([[True, False, False]])
    a = TokenInputs(mask=m)
    b = TokenInputs(pos_mask=torch.tensor([[False, True, True], [True, False, False]]))
    cat = TokenInputs.cat([a, b], [1, 2], 3, torch.device("cpu"))
    np.testing.assert_array_equal(cat.mask.numpy(), [[True, False, False], [False, False, False], [False, False, False]])
    np.testing.assert_array_equal(cat.pos_mask.numpy(), [[False, False, False], [False, True, True], [True, False, False]])
    assert cat.pos is None and not cat.empty and TokenInputs().empty
    p = torch.arange(6.0).view(1, 3, 2)
    both = TokenInputs.cat([TokenInputs(pos=p), TokenInputs(pos=p + 10)], [1, 1], 3, torch.device("cpu"))
    torch.testing.assert_close(both.pos, torch.cat([p, p + 10]))
    assert both.mask is None
    with pytest.raises(ValueError, match="positional overrides must be given for every view group"):
        TokenInputs.cat([TokenInputs(pos=p), TokenInputs(mask=m)], [1, 1], 3, torch.device("cpu"))


def test_sp_pairs_are_disentangled_unflipped_and_in_order():
    from wherevit.train.plugins.sp import SPViewSampler

    cfg = SPConfig(n_pairs=3, crop_size=16, scale=(0.05, 0.2), max_iou=0.05)
    img = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    out = SPViewSampler(cfg, color_jitter_p=0.0, grayscale_p=0.0)(img, np.random.default_rng(1))["sp"]
    assert out["images"].shape == (6, 3, 16, 16) and not out["flips"].any()
    from wherevit.train.data.geometry import sample_disentangled_pair
    from wherevit.train.data.views import ViewSpec, box_iou, make_view

    spec = ViewSpec(size=16, scale=(0.05, 0.2), ratio=(3 / 4, 4 / 3), flip_p=0.0, color_jitter_p=0.0, grayscale_p=0.0)
    assert SPViewSampler(cfg, 0.0, 0.0).spec == spec and SPViewSampler(cfg).spec.color_jitter_p == 0.8
    rng = np.random.default_rng(1)  # the same draws, in the same order
    for p in range(3):  # pair p is (a_p, b_p) at rows 2p, 2p + 1
        a, b = sample_disentangled_pair(rng, (64, 80), cfg)
        va = make_view(img, spec, rng, box=a)
        vb = make_view(img, spec, rng, box=b)
        np.testing.assert_allclose(out["boxes"][2 * p], a, rtol=1e-6)
        np.testing.assert_allclose(out["boxes"][2 * p + 1], b, rtol=1e-6)
        np.testing.assert_array_equal(out["images"][2 * p + 1], vb[0])
        assert box_iou(a, b) <= 0.05 and va[2] is False


def test_posfield_loss_is_the_ibot_loss_at_its_sites():
    from wherevit.train.plugins.base import StepContext
    from wherevit.train.plugins.posfield import PositionalField

    plugin = PositionalField(PosFieldConfig(), 4)
    asked = []
    ctx = StepContext(0, 1, 0.04, None, None, ibot_loss_fn=lambda f: asked.append(f) or torch.tensor(2.5))
    pos = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    pos[0, 1, 0, 0] = True
    loss, logs = plugin({}, {}, {"global": {"pos_masks": pos}}, ctx)
    assert asked == ["pos_masks"] and loss.item() == 2.5 and float(logs["posfield/masked_share"]) == pytest.approx(1 / 16)
    alone = PositionalField(PosFieldConfig(pos_mask_share=0.0), 4)
    loss, logs = alone({}, {}, {}, ctx)  # the field alone: no loss, but its token stays in the graph
    assert loss.item() == 0.0 and loss.requires_grad and logs == {} and alone.ibot_sites == ()
    with pytest.raises(Exception, match="needs ibot.enabled"):
        StepContext(0, 1, 0.04, None, None).ibot_loss("pos_masks")


def test_scrl_own_pair_and_hook_follow_the_host_crops():
    from wherevit.train.config import CropConfig
    from wherevit.train.plugins.scrl import SCRL, SCRLViewSampler

    crops = CropConfig(global_size=16, global_scale=(0.5, 1.0), flip_p=1.0, color_jitter_p=0.0, grayscale_p=0.0,
                       blur_p=0.0, solarize_p=0.0)
    plugin = SCRL(SCRLConfig(views="own", min_size=4, hidden_dim=8, out_dim=4), embed_dim=4)
    plugin.setup(SimpleNamespace(patch_size=8, crops=crops, positions_provided=False, host_views_altered=False))
    sampler = plugin.view_sampler()
    assert isinstance(sampler, SCRLViewSampler) and sampler.spec.size == 16 and sampler.spec.scale == (0.5, 1.0)
    assert sampler.spec.flip_p == 1.0
    out = sampler(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8), np.random.default_rng(0))
    assert out["scrl"]["images"].shape == (2, 3, 16, 16) and out["scrl"]["flips"].all()
    hook = plugin.data_hook()
    assert hook.group == "scrl" and hook.size == 16
    host = SCRL(SCRLConfig(min_size=4, hidden_dim=8, out_dim=4), embed_dim=4)
    host.setup(SimpleNamespace(patch_size=8, crops=crops, positions_provided=False, host_views_altered=False))
    assert host.view_sampler() is None and host.data_hook().group == "global"


def test_gtsa_builds_its_own_view_sampler():
    from wherevit.train.plugins.gtsa import GTSA, GTSAConfig, GTSAViewSampler

    cfg = GTSAConfig(n_local=1, global_size=16, local_size=8)
    sampler = GTSA(cfg, 4).view_sampler()
    assert isinstance(sampler, GTSAViewSampler) and sampler.cfg is cfg
    assert sampler.specs[0].size == 16 and sampler.specs[1].size == 8 and sampler.specs[0].flip_p == 0.0
