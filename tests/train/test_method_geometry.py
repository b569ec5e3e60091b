"""Targets and geometry pinned to hand-computed numbers on asymmetric inputs: SP targets and its
pairing, the positional field's patch centres under flips and its per-sample affine, SCRL's box
mapping under flips and its RoI indexing, GTSA's quarter turns, RoI pairing and rotation labels.

A swapped sign, direction, order, branch or sample gives a different number in every test here.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from wherevit.train.backbone import BackboneFeatures
from wherevit.train.plugins import gtsa as gtsa_mod
from wherevit.train.plugins.gtsa import GTSA, GTSAConfig, crop_rois, rot90_per_sample
from wherevit.train.plugins.posfield import PosFieldConfig, PositionalField, export_affine, field_grid, patch_centres
from wherevit.train.plugins.roi import region_in_view, roi_tokens, rotate_xyxy
from wherevit.train.plugins.scrl import SCRL, SCRLConfig, scrl_box_pairs, scrl_loss
from wherevit.train.plugins.sp import SpatialPrediction, SPConfig, sp_inverse, sp_target


# ---------------------------------------------------------------- SP
def test_sp_target_and_inverse_by_hand():
    a = np.array([0.3, 0.4, 0.2, 0.1])
    b = np.array([0.6, 0.2, 0.4, 0.3])
    # dx = 0.3 / 0.2, dy = -0.2 / 0.1, log(0.4 / 0.2), log(0.3 / 0.1)
    np.testing.assert_allclose(sp_target(a, b), [1.5, -2.0, math.log(2), math.log(3)], rtol=1e-12)
    np.testing.assert_allclose(sp_target(a, b, "image"), [0.3, -0.2, math.log(2), math.log(3)], rtol=1e-12)
    # b -> a: dx = -0.3 / 0.4, dy = 0.2 / 0.3
    np.testing.assert_allclose(sp_inverse(sp_target(a, b)), [-0.75, 0.2 / 0.3, -math.log(2), -math.log(3)], rtol=1e-12)
    np.testing.assert_allclose(sp_inverse(sp_target(a, b, "image"), "image"), [-0.3, 0.2, -math.log(2), -math.log(3)],
                               rtol=1e-12)


def test_sp_pairs_each_a_with_its_own_b_and_orders_the_head_input():
    """Two pairs per sample, two samples. The head is a fixed linear map, so the loss is a number:
    pairing a0 with b1, another sample's view, or swapping z_a and z_b changes it."""
    cfg = SPConfig(n_pairs=2, n_layers=1, loss="mse", embedding="cls")
    plugin = SpatialPrediction(cfg, embed_dim=1)
    B = 2
    # view-major rows (a0, b0, a1, b1) x samples; one scalar feature per view
    z = {(v, b): float(10 * v + b + 1) for v in range(4) for b in range(B)}
    cls = torch.tensor([[z[(v, b)]] for v in range(4) for b in range(B)])
    feats = {"sp": BackboneFeatures(cls, torch.zeros(4 * B, 1, 1), (1, 1))}
    with torch.no_grad():  # pred = (1 z_a, 2 z_b, 4 (z_a - z_b), 0.5 z_a) over [z_a, z_b, z_a - z_b]
        plugin.head[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 4.0], [0.5, 0, 0]]))
        plugin.head[0].bias.zero_()
    boxes = torch.tensor([[[0.30, 0.40, 0.20, 0.10], [0.60, 0.20, 0.40, 0.30], [0.5, 0.5, 0.25, 0.5], [0.2, 0.7, 0.1, 0.2]],
                          [[0.70, 0.30, 0.10, 0.20], [0.40, 0.60, 0.30, 0.10], [0.3, 0.3, 0.2, 0.2], [0.8, 0.4, 0.4, 0.1]]],
                         dtype=torch.float64)
    loss, _ = plugin(feats, {}, {"sp": {"boxes": boxes}})
    sq = []
    for p in range(2):
        for b in range(B):
            za, zb = z[(2 * p, b)], z[(2 * p + 1, b)]
            pred = [za, 2 * zb, 4 * (za - zb), 0.5 * za]
            target = sp_target(boxes[b, 2 * p].numpy(), boxes[b, 2 * p + 1].numpy())
            sq += [(x - t) ** 2 for x, t in zip(pred, target)]
    assert loss.item() == pytest.approx(sum(sq) / len(sq), rel=1e-5)


# ---------------------------------------------------------------- posfield
def test_patch_centres_by_hand_and_mirrored():
    boxes = torch.tensor([[0.5, 0.5, 0.4, 0.2], [0.3, 0.6, 0.2, 0.4]])
    c = patch_centres(boxes, torch.tensor([False, True]), (2, 2))  # (M, gh, gw, (x, y))
    # box 0: x0 0.3, w 0.4 -> columns at 0.4, 0.6; y0 0.4, h 0.2 -> rows at 0.45, 0.55
    np.testing.assert_allclose(c[0, :, :, 0].numpy(), [[0.4, 0.6], [0.4, 0.6]], atol=1e-7)
    np.testing.assert_allclose(c[0, :, :, 1].numpy(), [[0.45, 0.45], [0.55, 0.55]], atol=1e-7)
    # box 1, mirrored: x0 0.2, w 0.2 -> unmirrored 0.25, 0.35, shown right to left; y0 0.4 -> 0.5, 0.7
    np.testing.assert_allclose(c[1, :, :, 0].numpy(), [[0.35, 0.25], [0.35, 0.25]], atol=1e-7)
    np.testing.assert_allclose(c[1, :, :, 1].numpy(), [[0.5, 0.5], [0.7, 0.7]], atol=1e-7)
    g = field_grid(c, torch.tensor([[0.5, 0.1, 0.2], [2.0, 0.0, -0.1]]))
    # u = s x + t, grid = 2u - 1: 2 (0.5 * 0.4 + 0.1) - 1 = -0.4; y: 2 (0.5 * 0.45 + 0.2) - 1 = -0.15
    np.testing.assert_allclose(g[0, 0, 0].numpy(), [-0.4, -0.15], atol=1e-6)
    np.testing.assert_allclose(g[1, 1, 1].numpy(), [2 * (2 * 0.25) - 1, 2 * (2 * 0.7 - 0.1) - 1], atol=1e-6)


from test_posfield import _ramp_field  # noqa: E402 -- linear ramps in x and y that bilinear sampling reproduces


def test_positions_use_each_samples_own_affine_and_flag_crop_agnostic_views():
    cfg = PosFieldConfig(field_size=16)
    plugin = PositionalField(cfg, 4)
    bb = SimpleNamespace(pos_field=_ramp_field(), patch_embed=SimpleNamespace(dynamic_feat_size=lambda hw: (2, 2)),
                         dynamic_img_size=True)
    B, V = 2, 2
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.4, 0.6, 0.2, 0.2]], [[0.6, 0.4, 0.3, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    flips = torch.tensor([[False, True], [True, False]])
    affine = torch.tensor([[0.5, 0.1, 0.2], [0.3, 0.4, 0.0]])
    batch = {"global": {"images": torch.zeros(B, V, 3, 16, 16), "boxes": boxes, "flips": flips},
             "posfield": {"affine": affine}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("wherevit.train.plugins.posfield.patch_grid", lambda model, hw: (2, 2))
        pos = plugin.positions(bb, "global", batch, crop_aligned=True)
        batch["global"]["crop_agnostic"] = torch.tensor([[False, True], [False, False]])
        mixed = plugin.positions(bb, "global", batch, crop_aligned=True)
        agnostic = plugin.positions(bb, "global", batch, crop_aligned=False)

    def ramp(g):  # the ramp field at grid coordinate g (align_corners=False, S = 16)
        return -1 + ((g + 1) * 16 - 1) / 15

    for v in range(V):
        for b in range(B):
            row = v * B + b  # view-major
            c = patch_centres(boxes[b, v][None], flips[b, v][None], (2, 2))[0]
            s, tx, ty = affine[b].tolist()
            for i in range(2):
                for j in range(2):
                    gx, gy = 2 * (s * c[i, j, 0].item() + tx) - 1, 2 * (s * c[i, j, 1].item() + ty) - 1
                    expected = [min(max(ramp(gx), -1), 1), min(max(ramp(gy), -1), 1)]  # border padding
                    np.testing.assert_allclose(pos[row, i * 2 + j, :2].numpy(), expected, atol=1e-5)
    # sample 0's view 1 (row 2) no longer matches its box: the full-frame embedding; the rest unchanged
    torch.testing.assert_close(mixed[2], agnostic[0])
    for row in (0, 1, 3):
        torch.testing.assert_close(mixed[row], pos[row])
    s, tx, ty = export_affine(cfg)
    full = patch_centres(torch.tensor([[0.5, 0.5, 1.0, 1.0]]), torch.tensor([False]), (2, 2))[0]
    np.testing.assert_allclose(agnostic[0, 1, 0].item(), ramp(2 * (s * full[0, 1, 0].item() + tx) - 1), atol=1e-5)
    assert torch.equal(agnostic[0], agnostic[3])


# ---------------------------------------------------------------- SCRL
def test_scrl_maps_boxes_into_a_mirrored_half_view_by_hand():
    """View 1 is the whole image, view 2 its right half, mirrored, both 64 px. The intersection is the
    right half; a region at image x in [x0, x1] is at 64 x in view 1 and at 64 - 128 (x - 0.5) (mirrored,
    twice the scale) in view 2, y unchanged (both views span the full height)."""
    full, right = np.array([0.5, 0.5, 1.0, 1.0]), np.array([0.75, 0.5, 0.5, 1.0])
    b1, b2, ok = scrl_box_pairs(full, False, right, True, 64, np.random.default_rng(3), n_boxes=10, min_size=8)
    assert ok
    x0, x1 = b1[:, 0] / 64, b1[:, 2] / 64  # image coordinates, from view 1
    assert (x0 >= 0.5 - 1e-6).all()  # inside the intersection
    np.testing.assert_allclose(b2[:, 0], 64 - 128 * (x1 - 0.5), atol=1e-4)
    np.testing.assert_allclose(b2[:, 2], 64 - 128 * (x0 - 0.5), atol=1e-4)
    np.testing.assert_allclose(b2[:, [1, 3]], b1[:, [1, 3]], atol=1e-4)
    # minimum size at the coarser view's scale (view 1: 64 px per image width): 8 px there, 16 px in view 2
    assert (b1[:, 2] - b1[:, 0] >= 8 - 1e-4).all() and (b2[:, 2] - b2[:, 0] >= 16 - 1e-4).all()
    # the same pair unmirrored reads the region left to right
    c1, c2, _ = scrl_box_pairs(full, False, right, False, 64, np.random.default_rng(3), n_boxes=10, min_size=8)
    np.testing.assert_allclose(c2[:, 0], 128 * (c1[:, 0] / 64 - 0.5), atol=1e-4)


def test_scrl_reads_each_box_from_its_own_view_and_sample():
    """A one-token-per-place feature map whose value says (view, sample); 1 x 1 RoIs read it back."""
    plugin = SCRL(SCRLConfig(hidden_dim=8, out_dim=4), embed_dim=1)
    plugin.setup(SimpleNamespace(patch_size=8, positions_provided=False, host_views_altered=False))
    B = 3
    patch = torch.tensor([[[100.0 * v + 10 * b + t] for t in range(4)] for v in range(2) for b in range(B)])  # 2x2 grid
    feats = BackboneFeatures(torch.zeros(2 * B, 1), patch, (2, 2))
    boxes = torch.zeros(B, 2, 1, 4)
    for b in range(B):
        boxes[b, 0, 0] = torch.tensor([8.0, 0.0, 16.0, 8.0])  # token 1 (row 0, col 1) of view 0
        boxes[b, 1, 0] = torch.tensor([0.0, 8.0, 8.0, 16.0])  # token 2 (row 1, col 0) of view 1
    roi = plugin._roi(feats, boxes, B)[:, :, 0]
    np.testing.assert_allclose(roi[0].numpy(), [10 * b + 1 for b in range(B)], atol=1e-5)
    np.testing.assert_allclose(roi[1].numpy(), [100 + 10 * b + 2 for b in range(B)], atol=1e-5)


def test_scrl_loss_compares_each_prediction_with_the_other_views_target():
    q1, z2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])  # same direction: 0
    q2, z1 = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])  # 45 degrees: 2 - 2 cos 45
    np.testing.assert_allclose(scrl_loss(q1, q2, z1, z2).numpy(), [2 - math.sqrt(2)], rtol=1e-6)
    np.testing.assert_allclose(scrl_loss(q1, q2, z2, z1).numpy(), [2 - math.sqrt(2) + 2], rtol=1e-6)  # crossed: another


# ---------------------------------------------------------------- GTSA
def test_quarter_turns_are_counter_clockwise_and_per_sample():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # 1 channel, 2 x 2
    batch = torch.stack([x, x * 10, x * 100])
    out = rot90_per_sample(batch, torch.tensor([0, 1, 3]))
    np.testing.assert_array_equal(out[0, 0].numpy(), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(out[1, 0].numpy(), [[20, 40], [10, 30]])  # one turn counter-clockwise
    np.testing.assert_array_equal(out[2, 0].numpy(), [[300, 100], [400, 200]])  # three turns
    np.testing.assert_array_equal(rotate_xyxy(np.array([0.0, 0.0, 2.0, 1.0]), 1, 4.0), [0.0, 2.0, 1.0, 4.0])
    # x 1..2 of a 4 px view, mirrored -> 2..3, then a turn: (x, y) -> (y, 4 - x): x 0..2, y 1..2
    np.testing.assert_array_equal(region_in_view(np.array([0.25, 0.0, 0.5, 0.5]), np.array([0.5, 0.5, 1.0, 1.0]), 4.0,
                                                 True, 1), [0.0, 1.0, 2.0, 2.0])


def test_crop_rois_turn_the_teacher_into_the_students_orientation():
    """Same crop seen by teacher (unturned) and student (one turn): the student's RoI equals the
    teacher's turned once counter-clockwise, cell for cell, on an asymmetric map."""
    t_map = torch.arange(16.0).view(1, 1, 4, 4)
    s_map = torch.rot90(t_map, 1, dims=(-2, -1))
    box = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    s_roi, t_roi = crop_rois(s_map, t_map, box, box, torch.tensor([1]), torch.tensor([0]), 32, 32, 8, 4)
    torch.testing.assert_close(s_roi, s_map)
    torch.testing.assert_close(t_roi, s_map)
    # the other direction does not line up
    wrong = rot90_per_sample(crop_rois(s_map, t_map, box, box, torch.tensor([0]), torch.tensor([0]), 32, 32, 8, 4)[1],
                             torch.tensor([-1]))
    assert not torch.allclose(wrong, s_map)


def test_gtsa_pairs_every_teacher_global_with_every_other_student_view(monkeypatch):
    cfg = GTSAConfig(n_local=2, global_size=16, local_size=8, projector_dim=4, out_dim=4, predictor_dim=4, rot_hidden=4,
                     rot_bottleneck=4, roi_size=(1, 1), num_matches=(1, 1), pc_warmup=0.5)
    plugin = GTSA(cfg, embed_dim=4)
    plugin.setup(SimpleNamespace(patch_size=8))
    B = 2
    seen = []

    def spy(s_map, t_map, s_box, t_box, s_rot, t_rot, s_size, t_size, patch, out):
        seen.append((s_box[:, 0].tolist(), t_box[:, 0].tolist(), s_rot.tolist(), t_rot.tolist(), s_size))
        return torch.zeros(B, 4, 1, 1) + s_map.mean(), torch.zeros(B, 4, 1, 1) + 1

    monkeypatch.setattr(gtsa_mod, "crop_rois", spy)
    g = torch.Generator().manual_seed(0)
    # box cx encodes (view, sample): view v of sample b has cx = 0.1 v + 0.01 b
    def group(V, size, v0):
        boxes = torch.tensor([[[0.1 * (v0 + v) + 0.01 * b, 0.5, 0.5, 0.5] for v in range(V)] for b in range(B)])
        rot = torch.tensor([[(v0 + v + b) % 4 for v in range(V)] for b in range(B)])
        return {"images": torch.zeros(B, V, 3, size, size), "boxes": boxes, "rot": rot}

    batch = {"gtsa_global": group(2, 16, 0), "gtsa_local": group(2, 8, 2)}
    student = {"gtsa_global": BackboneFeatures(torch.zeros(2 * B, 4), torch.randn(2 * B, 4, 4, generator=g), (2, 2)),
               "gtsa_local": BackboneFeatures(torch.zeros(2 * B, 4), torch.randn(2 * B, 1, 4, generator=g), (1, 1))}
    teacher = {"gtsa_global": BackboneFeatures(torch.zeros(2 * B, 4), torch.randn(2 * B, 4, 4, generator=g), (2, 2))}
    plugin(student, teacher, batch, SimpleNamespace(progress=0.25))
    pairs = {(round(s[0][0] * 10), round(s[1][0] * 10)) for s in seen}  # (student view, teacher view) of sample 0
    assert pairs == {(v, t) for t in (0, 1) for v in range(4) if v != t} and len(seen) == 6
    for s_box, t_box, s_rot, t_rot, s_size in seen:
        v, t = round(s_box[0] * 10), round(t_box[0] * 10)
        assert s_box[1] == pytest.approx(0.1 * v + 0.01) and t_box[1] == pytest.approx(0.1 * t + 0.01)  # sample 1
        assert s_rot == [v % 4, (v + 1) % 4] and t_rot == [t % 4, (t + 1) % 4] and s_size == (16 if v < 2 else 8)


def test_gtsa_takes_the_big_roi_and_match_counts_only_for_maps_over_roi_tokens(monkeypatch):
    """Student maps of more than roi_tokens tokens (the 2 x 2 globals; roi_tokens is 1, the locals' size) get
    roi_size[0] and num_matches[0]; the 1 x 1 locals get the second entries, whatever the teacher's map."""
    cfg = GTSAConfig(n_local=2, global_size=16, local_size=8, projector_dim=4, out_dim=4, predictor_dim=4, rot_hidden=4,
                     rot_bottleneck=4, roi_size=(3, 2), roi_tokens=1, num_matches=(4, 1), pc_warmup=0.0)
    plugin = GTSA(cfg, embed_dim=4)
    plugin.setup(SimpleNamespace(patch_size=8))
    B, seen = 2, []

    def rois(s_map, t_map, s_box, t_box, s_rot, t_rot, s_size, t_size, patch, out):
        seen.append(("roi", s_size, out))
        return torch.zeros(B, 4, out, out) + s_map.mean(), torch.ones(B, 4, out, out)

    def matches(s_map, t_map, k):
        seen.append(("pc", s_map.shape[-1] * s_map.shape[-2], k))
        return s_map.mean() * 0

    monkeypatch.setattr(gtsa_mod, "crop_rois", rois)
    monkeypatch.setattr(gtsa_mod, "patch_correspondence_loss", matches)
    g = torch.Generator().manual_seed(0)

    def group(V, size):
        return {"images": torch.zeros(B, V, 3, size, size), "boxes": torch.full((B, V, 4), 0.5),
                "rot": torch.zeros(B, V, dtype=torch.long)}

    batch = {"gtsa_global": group(2, 16), "gtsa_local": group(2, 8)}
    student = {"gtsa_global": BackboneFeatures(torch.zeros(2 * B, 4), torch.randn(2 * B, 4, 4, generator=g), (2, 2)),
               "gtsa_local": BackboneFeatures(torch.zeros(2 * B, 4), torch.randn(2 * B, 1, 4, generator=g), (1, 1))}
    teacher = {"gtsa_global": BackboneFeatures(torch.zeros(2 * B, 4), torch.randn(2 * B, 4, 4, generator=g), (2, 2))}
    plugin(student, teacher, batch, SimpleNamespace(progress=1.0))
    assert sorted(x for x in seen if x[0] == "roi") == [("roi", 8, 2)] * 4 + [("roi", 16, 3)] * 2
    assert sorted(x for x in seen if x[0] == "pc") == [("pc", 1, 1)] * 4 + [("pc", 4, 4)] * 2


def test_gtsa_rotation_labels_follow_the_views_and_the_pc_warmup(monkeypatch):
    cfg = GTSAConfig(n_local=1, global_size=16, local_size=8, projector_dim=4, out_dim=4, predictor_dim=4, rot_hidden=4,
                     rot_bottleneck=4, roi_size=(1, 1), num_matches=(1, 1), pc_warmup=0.5, crop_weight=0.0,
                     rot_weight=1.0, pc_weight=0.5)
    plugin = GTSA(cfg, embed_dim=4)
    plugin.setup(SimpleNamespace(patch_size=8))
    plugin.rotation = torch.nn.Identity()  # logits = the mean patch token
    monkeypatch.setattr(gtsa_mod, "patch_correspondence_loss", lambda s, t, k: torch.tensor(7.0))
    B = 3
    rot_g = torch.tensor([[0, 3], [1, 2], [2, 0]])
    rot_l = torch.tensor([[3], [0], [1]])

    def onehot(rot):  # view-major rows whose mean patch token is 50 x one-hot(label)
        k = rot.transpose(0, 1).reshape(-1)
        return BackboneFeatures(torch.zeros(len(k), 4), (50 * torch.nn.functional.one_hot(k, 4).float())[:, None], (1, 1))

    box = torch.tensor([0.5, 0.5, 1.0, 1.0]).expand(B, 2, 4)
    batch = {"gtsa_global": {"boxes": box, "rot": rot_g}, "gtsa_local": {"boxes": box[:, :1], "rot": rot_l}}
    student = {"gtsa_global": onehot(rot_g), "gtsa_local": onehot(rot_l)}
    teacher = {"gtsa_global": BackboneFeatures(torch.zeros(2 * B, 4), torch.randn(2 * B, 1, 4), (1, 1))}
    loss, logs = plugin(student, teacher, batch, SimpleNamespace(progress=0.25))
    assert float(logs["gtsa/rot_acc"]) == 1.0 and float(logs["gtsa/rot"]) < 1e-6
    assert loss.item() == pytest.approx(float(logs["gtsa/rot"]), abs=1e-6)  # before the warm-up ends: no pc
    loss, logs = plugin(student, teacher, batch, SimpleNamespace(progress=0.5))
    assert loss.item() == pytest.approx(0.5 * 7.0 + float(logs["gtsa/rot"]), abs=1e-5)
    # labels taken sample-major would not match the view-major features
    wrong = {**batch, "gtsa_global": {"boxes": box, "rot": rot_g.flip(0)}}
    assert float(plugin(student, teacher, wrong, SimpleNamespace(progress=0.25))[1]["gtsa/rot_acc"]) < 1.0


def test_roi_tokens_read_exactly_the_token_under_a_box():
    fmap = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]]])  # (1, 2, 2, 2)
    boxes = torch.tensor([[8.0, 0.0, 16.0, 8.0], [0.0, 8.0, 8.0, 16.0], [0.0, 0.0, 16.0, 16.0]])
    out = roi_tokens(fmap, boxes, torch.zeros(3, dtype=torch.long), 8, 1)[:, :, 0, 0]
    np.testing.assert_allclose(out.numpy(), [[2.0, 20.0], [3.0, 30.0], [2.5, 25.0]], atol=1e-5)


def test_scrl_loss_of_two_different_views_by_hand():
    """Distinct views, two samples (one without a usable pair): q_v = projector(RoI of view v), the
    target z_v = the EMA copy of it on the teacher's features; the loss pairs q_0 with z_1 and q_1 with
    z_0 and averages over the valid boxes."""
    torch.manual_seed(0)
    plugin = SCRL(SCRLConfig(n_boxes=2, hidden_dim=8, out_dim=3, pool_size=2), embed_dim=2)
    plugin.setup(SimpleNamespace(patch_size=8, positions_provided=False, host_views_altered=False))
    plugin.predictor = torch.nn.Identity()
    B = 2
    g = torch.Generator().manual_seed(1)
    s_feats = BackboneFeatures(torch.zeros(2 * B, 2), torch.randn(2 * B, 4, 2, generator=g), (2, 2))
    t_feats = BackboneFeatures(torch.zeros(2 * B, 2), torch.randn(2 * B, 4, 2, generator=g), (2, 2))
    boxes = torch.tensor([[[[0.0, 0.0, 16.0, 8.0], [0.0, 0.0, 8.0, 16.0]], [[8.0, 0.0, 16.0, 16.0], [0.0, 8.0, 16.0, 16.0]]],
                          [[[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 16.0, 16.0]], [[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 16.0, 16.0]]]])
    batch = {"scrl_boxes": {"boxes": boxes, "valid": torch.tensor([True, False])}}
    loss, logs = plugin({"global": s_feats}, {"global": t_feats}, batch)

    def head(net, feats, v, k):  # one box of sample 0, view v
        fm = feats.patch_map()[v * B: v * B + 1]
        r = roi_tokens(fm, boxes[0, v, k][None], torch.zeros(1, dtype=torch.long), 8, 2).flatten(1)
        return r

    s_roi = torch.cat([head(None, s_feats, v, k) for v in range(2) for k in range(2)])  # v0k0, v0k1, v1k0, v1k1
    t_roi = torch.cat([head(None, t_feats, v, k) for v in range(2) for k in range(2)])
    with torch.no_grad():
        q = plugin.projector(s_roi)  # batch norm over the 4 valid RoIs, as in the plug-in
        z = plugin.target_projector(t_roi)
    cos = torch.nn.functional.cosine_similarity
    per_box = [2 - 2 * cos(q[k], z[2 + k], dim=0) + 2 - 2 * cos(q[2 + k], z[k], dim=0) for k in range(2)]
    assert loss.item() == pytest.approx(float(sum(per_box) / 2), rel=1e-5)
    assert float(logs["scrl/valid_pairs"]) == 0.5
    one = {"scrl_boxes": {"boxes": boxes, "valid": torch.tensor([False, True])}}  # mean over the valid boxes only
    assert plugin({"global": s_feats}, {"global": t_feats}, one)[0].item() > 0


def test_scrl_batch_norm_of_a_single_row_is_its_bias():
    from wherevit.train.plugins.scrl import GlobalBatchNorm1d

    bn = GlobalBatchNorm1d(3)
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    np.testing.assert_allclose(bn(torch.tensor([[3.0, -7.0, 1.0]])).detach().numpy(), [[0.5, -1.0, 2.0]], atol=1e-6)
    assert bn(torch.zeros(0, 3)).shape == (0, 3)  # no rows: no division by zero


def test_nearest_matches_pick_the_most_similar_rows_by_cosine_by_hand():
    from wherevit.train.plugins.gtsa import nearest_matches

    a = torch.tensor([[[10.0, 0.0], [0.0, 0.2], [3.0, 3.1]]])  # norms differ: only directions count
    b = torch.tensor([[[1.0, 1.0], [0.0, 5.0], [1.0, -0.1]]])
    # row 0's best candidate is b2 (cos 0.995), row 1's is b1 (cos 1), row 2's is b0 (cos 0.9999): keep the best two
    sel_a, sel_b = nearest_matches(a, b, 2)
    got = {tuple(round(v, 4) for v in r.tolist()) for r in torch.cat([sel_a[0], sel_b[0]], 1)}
    assert got == {(0.0, 0.2, 0.0, 5.0), (3.0, 3.1, 1.0, 1.0)}


def test_crop_and_patch_correspondence_losses_by_hand():
    from wherevit.train.plugins.gtsa import crop_loss, patch_correspondence_loss

    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # (B 1, C 2, 1, 2): cells (1, 0) and (0, 2)
    t = torch.tensor([[[[3.0, 1.0]], [[0.0, 1.0]]]])  # cells (3, 0) and (1, 1)
    # -cos per cell: -1 and -1/sqrt(2), mean
    assert crop_loss(s, t).item() == pytest.approx(-(1 + 1 / math.sqrt(2)) / 2, rel=1e-6)
    # patch correspondence with k = 1: s cell 0 (1, 0) best matches t cell 0 (cos 1); t's best match is also cos 1
    assert patch_correspondence_loss(s, t, 1).item() == pytest.approx(-1.0, rel=1e-6)
    # k = 2 keeps both: s cell 1 (0, 2) is nearest t cell 1 (cos 1/sqrt 2); t cell 1 (1, 1) nearest s cell 0 or 1 (1/sqrt 2)
    expected = 0.5 * (-(1 + 1 / math.sqrt(2)) / 2 - (1 + 1 / math.sqrt(2)) / 2)
    assert patch_correspondence_loss(s, t, 2).item() == pytest.approx(expected, rel=1e-6)


def test_gtsa_averages_the_crop_loss_over_pairs_and_weights_its_terms(monkeypatch):
    cfg = GTSAConfig(n_local=0, global_size=16, local_size=8, projector_dim=4, out_dim=4, predictor_dim=4, rot_hidden=4,
                     rot_bottleneck=4, roi_size=(1, 1), num_matches=(1, 1), crop_weight=2.0, pc_weight=0.25,
                     rot_weight=0.0, pc_warmup=0.0)
    plugin = GTSA(cfg, embed_dim=4)
    plugin.setup(SimpleNamespace(patch_size=8))
    assert plugin.student_views == ("gtsa_global",) and plugin.rotation[0].in_features == 4
    values = iter([1.0, 3.0])  # the two pairs' crop losses: (view 1, teacher 0) and (view 0, teacher 1)
    monkeypatch.setattr(gtsa_mod, "crop_rois", lambda *a: (torch.zeros(1), torch.zeros(1)))
    monkeypatch.setattr(gtsa_mod, "crop_loss", lambda s, t: torch.tensor(next(values)))
    monkeypatch.setattr(gtsa_mod, "patch_correspondence_loss", lambda s, t, k: torch.tensor(4.0))
    B = 1
    box = torch.tensor([0.5, 0.5, 1.0, 1.0]).expand(B, 2, 4)
    batch = {"gtsa_global": {"boxes": box, "rot": torch.zeros(B, 2, dtype=torch.long)}}
    feats = {"gtsa_global": BackboneFeatures(torch.zeros(2 * B, 4), torch.randn(2 * B, 4, 4), (2, 2))}
    loss, logs = plugin(feats, feats, batch, SimpleNamespace(progress=0.5))
    assert float(logs["gtsa/crop"]) == pytest.approx(2.0) and float(logs["gtsa/pc"]) == pytest.approx(4.0)
    assert loss.item() == pytest.approx(2.0 * 2.0 + 0.25 * 4.0)


def test_disentangled_pairs_follow_the_documented_search():
    """The first box is redrawn every 5 tries; a pair is accepted at IoU <= max_iou; otherwise the least
    overlapping pair seen first is kept. Replayed with the same generator, draw for draw."""
    from wherevit.train.data.geometry import PairSpec, sample_disentangled_pair
    from wherevit.train.data.views import box_iou, sample_box

    def replay(rng, spec):
        best, best_iou = None, 2.0
        for attempt in range(spec.max_tries):
            if attempt % 5 == 0:
                a = sample_box(rng, (40, 50), spec.scale, spec.ratio)
            b = sample_box(rng, (40, 50), spec.scale, spec.ratio)
            iou = box_iou(a, b)
            if iou <= spec.max_iou:
                return a, b
            if iou < best_iou:
                best, best_iou = (a, b), iou
        return best

    for spec in (PairSpec(scale=(0.05, 0.2), max_iou=0.0, max_tries=12), PairSpec(scale=(0.3, 0.6), max_iou=0.05, max_tries=12),
                 PairSpec(scale=(0.6, 0.9), max_iou=-1.0, max_tries=12)):  # never accepted: the best of 12
        for seed in range(6):
            r1, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
            got, want = sample_disentangled_pair(r1, (40, 50), spec), replay(r2, spec)
            np.testing.assert_array_equal(np.stack(got), np.stack(want))
            assert r1.random() == r2.random()  # the same number of draws
