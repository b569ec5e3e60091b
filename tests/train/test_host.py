"""Host v2: the token-level backbone path, masks drawn in the workers, iBOT, the plug-in interface."""

import pickle
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import tiny_train_dict

from wherevit.base.config import ConfigError, from_dict
from wherevit.train.backbone import TokenInputs, create_backbone, forward_tokens
from wherevit.train.config import TrainConfig
from wherevit.train.data.dataset import MultiCrop, SSLDataset, StepBatchSampler
from wherevit.train.data.masking import MaskPlan, block_mask, cross_mask, make_mask
from wherevit.train.data.synthetic import SyntheticScenes
from wherevit.train.data.views import ViewSpec
from wherevit.train.meta_arch import SSLMetaArch
from wherevit.train.plugins import Plugin, PluginConfig, PluginError, register_plugin
from wherevit.train.plugins import base as plugin_base

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)


def _collate(samples):
    return torch.utils.data.default_collate(samples)


@pytest.mark.parametrize("kw", [{}, {"reg_tokens": 2}, {"no_embed_class": True, "reg_tokens": 1},
                                {"class_token": False, "global_pool": "avg"}],
                         ids=["cls", "registers", "no_embed_class", "no_cls"])
@pytest.mark.parametrize("dynamic", [True, False])
def test_token_path_equals_forward_features_exactly(kw, dynamic):
    torch.manual_seed(0)
    model = create_backbone("vit_tiny_patch16_224", dynamic_img_size=dynamic, **TINY, **kw).eval()
    for size in ([32, 16, 24] if dynamic else [32]):
        x = torch.randn(3, 3, size, size)
        ref = model.forward_features(x)
        out = forward_tokens(model, x)
        assert torch.equal(out.patch, ref[:, model.num_prefix_tokens:])
        assert torch.equal(out.cls, ref[:, 0])
        # an all-false mask and timm's own embedding passed as an override change nothing either
        n = out.patch.shape[1]
        no_mask = torch.zeros(3, n, dtype=torch.bool)
        tok = torch.zeros(model.embed_dim)
        masked = forward_tokens(model, x, TokenInputs(mask=no_mask, pos_mask=no_mask), tok, tok)
        torch.testing.assert_close(masked.patch, out.patch, rtol=0, atol=0)


def _tiny_vit():
    torch.manual_seed(0)
    return create_backbone("vit_tiny_patch16_224", **TINY).eval()


def test_content_masked_pixels_do_not_affect_the_output():
    model = _tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 5, 10]] = True
    mask[1, [3, 15]] = True
    tok = torch.randn(64)
    y = x.clone()
    for b, i in mask.nonzero().tolist():  # scramble the pixels of every masked patch
        r, c = divmod(i, 4)
        y[b, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = torch.randn(3, 8, 8) * 10
    a = forward_tokens(model, x, TokenInputs(mask=mask), tok)
    b = forward_tokens(model, y, TokenInputs(mask=mask), tok)
    torch.testing.assert_close(a.patch, b.patch, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.cls, b.cls, rtol=0, atol=1e-6)
    # and the mask does something: the unmasked input gives another output
    assert not torch.allclose(forward_tokens(model, x).cls, a.cls, atol=1e-4)


def test_positions_at_position_masked_sites_do_not_affect_the_output():
    model = _tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    pos = torch.randn(2, 16, 64) * 0.1
    pos_mask = torch.zeros(2, 16, dtype=torch.bool)
    pos_mask[:, [1, 2, 7]] = True
    noisy = pos.clone()
    noisy[pos_mask] = torch.randn(int(pos_mask.sum()), 64) * 5
    tok = torch.randn(64)
    a = forward_tokens(model, x, TokenInputs(pos=pos, pos_mask=pos_mask), pos_mask_token=tok)
    b = forward_tokens(model, x, TokenInputs(pos=noisy, pos_mask=pos_mask), pos_mask_token=tok)
    torch.testing.assert_close(a.patch, b.patch, rtol=0, atol=1e-6)
    c = forward_tokens(model, x, TokenInputs(pos=noisy))
    assert not torch.allclose(a.patch, c.patch, atol=1e-4)


def test_override_needs_a_positional_embedding():
    torch.manual_seed(0)
    model = create_backbone("vit_tiny_patch16_224", pos_embed="none", **TINY)
    with pytest.raises(ValueError, match="no positional embedding"):
        forward_tokens(model, torch.randn(1, 3, 32, 32), TokenInputs(pos=torch.zeros(1, 16, 64)))


# --- masks drawn in the workers ------------------------------------------------------------------


def test_block_and_random_masks_hit_the_target_count_and_cross_masks_are_whole_lines():
    rng = np.random.default_rng(0)
    for n in (1, 5, 13, 40, 64):
        assert block_mask(rng, (8, 8), n).sum() == n
        assert make_mask("random", rng, (8, 8), n).sum() == n
        m = cross_mask(rng, (8, 8), n)
        assert 0 < m.sum() <= max(n, 8)
        rows, cols = m.all(1), m.all(0)
        np.testing.assert_array_equal(m, rows[:, None] | cols[None, :])  # nothing but whole rows and columns
    with pytest.raises(ValueError, match="unknown mask pattern"):
        make_mask("stripes", rng, (4, 4), 3)


def test_mask_plan_stratifies_each_global_batch_and_ignores_ranks():
    plan = MaskPlan(0.5, (0.1, 0.5), n_crops=2, batch_size=16, run_seed=3)
    for step in range(3):
        ratios = [r for p in range(step * 16, step * 16 + 16)
                  for r in plan.ratios(np.random.default_rng(p), p)]
        masked = sorted(r for r in ratios if r is not None)
        assert len(masked) == 16  # half of the 32 crops, exactly
        # stratified: one ratio in each of 16 equal bins of [0.1, 0.5]
        bins = np.floor((np.array(masked) - 0.1) / 0.4 * 16).astype(int)
        assert sorted(bins.tolist()) == list(range(16))


def _masked_cfg(**over):
    return from_dict(TrainConfig, tiny_train_dict(**{"ibot": {"enabled": True}, **over}))


def test_masks_are_a_function_of_the_sample_position_only():
    cfg = _masked_cfg(plugins={"posfield": {"field_size": 8}})
    meta = SSLMetaArch(cfg)
    c = cfg.data.crops
    transform = MultiCrop(ViewSpec(c.global_size, c.global_scale), c.n_global, ViewSpec(c.local_size, c.local_scale), c.n_local)
    hooks = pickle.loads(pickle.dumps(meta.data_hooks()))  # workers may get them by pickle
    assert list(hooks) == ["ibot", "plugins.posfield"]  # iBOT's masks first: posfield converts some
    ds = SSLDataset(SyntheticScenes(16, 48, 0), transform, hooks)
    full = StepBatchSampler(16, 8, seed=0)
    r1 = StepBatchSampler(16, 8, seed=0, rank=1, world=2)
    a = [ds[k] for k in full.batch_for_step(1)][4:]
    b = [ds[k] for k in r1.batch_for_step(1)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["global"]["masks"], y["global"]["masks"])
        np.testing.assert_array_equal(x["global"]["pos_masks"], y["global"]["pos_masks"])
        np.testing.assert_array_equal(x["posfield"]["affine"], y["posfield"]["affine"])
    batch = [ds[k] for s in range(4) for k in full.batch_for_step(s)]
    content = np.stack([s["global"]["masks"] for s in batch])
    pos = np.stack([s["global"]["pos_masks"] for s in batch])
    assert not (content & pos).any()  # a crop is masked one way or the other, never both
    assert content.any((2, 3)).sum() > 0 and pos.any((2, 3)).sum() > 0
    # a hook's own generator: turning the hooks on does not change the views
    plain = SSLDataset(SyntheticScenes(16, 48, 0), transform)
    k = full.batch_for_step(2)[3]
    np.testing.assert_array_equal(plain[k]["global"]["images"], ds[k]["global"]["images"])


# --- iBOT -----------------------------------------------------------------------------------------


def _batch(meta, cfg, step=0):
    c = cfg.data.crops
    views = {}
    hooks = meta.data_hooks()
    transform = MultiCrop(ViewSpec(c.global_size, c.global_scale), c.n_global, ViewSpec(c.local_size, c.local_scale),
                          c.n_local, extra=meta.view_samplers())
    ds = SSLDataset(SyntheticScenes(16, 48, 0), transform, hooks)
    keys = StepBatchSampler(16, cfg.data.global_batch_size, seed=0).batch_for_step(step)
    views = _collate([ds[k] for k in keys])
    views.pop("skipped")
    return views


def test_no_masks_equal_the_unmasked_forward_and_give_zero_patch_loss():
    cfg = _masked_cfg(plugins={})
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg).eval()
    batch = _batch(meta, cfg)
    batch["global"]["masks"].zero_()
    seen = {}
    orig = meta.student.forward

    def spy(*args):
        out = orig(*args)
        seen["cls"] = out[1]
        return out

    total, logs = meta.forward_losses(batch, 0.04, spy)
    assert logs["loss/ibot"].item() == 0.0
    with torch.no_grad():
        x = meta._normalise(batch["global"]["images"])
        ref = meta.student.backbone.forward_features(x)[:, 0]
    assert torch.equal(seen["cls"].detach(), ref)


def test_ibot_loss_is_positive_with_masks_and_uses_the_masked_forward_for_dino():
    cfg = _masked_cfg(plugins={}, **{"ibot.mask_probability": 1.0})
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg).eval()
    batch = _batch(meta, cfg)
    assert batch["global"]["masks"].flatten(2).any(-1).all()  # probability 1: every global crop
    _, logs = meta.forward_losses(batch, 0.04)
    assert logs["loss/ibot"].item() > 0
    assert logs["ibot/masked_share"].item() >= 0.1 - 1e-6


def test_content_masks_reach_the_student_and_never_the_teacher():
    """The same batch with its masks cleared: the student's DINO loss changes (its masked forward feeds DINO)
    and the iBOT loss vanishes, while everything the teacher computes stays bit for bit the same."""
    import copy

    cfg = _masked_cfg(plugins={}, **{"ibot.mask_probability": 1.0})
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg).eval()
    batch = _batch(meta, cfg)
    clear = copy.deepcopy(batch)
    clear["global"]["masks"] = torch.zeros_like(clear["global"]["masks"])
    _, masked = copy.deepcopy(meta).forward_losses(batch, 0.04)
    _, plain = copy.deepcopy(meta).forward_losses(clear, 0.04)
    assert abs(masked["loss/dino"].item() - plain["loss/dino"].item()) > 1e-4
    assert masked["loss/ibot"].item() > 0 and plain["loss/ibot"].item() == 0
    teacher = [k for k in masked if k.startswith("dino/teacher")]
    assert teacher and all(masked[k].item() == plain[k].item() for k in teacher)


# --- configuration errors --------------------------------------------------------------------------


@pytest.mark.parametrize("over, key", [
    ({"ibot": {"enabled": True, "mask_pattern": "stripes"}}, "ibot.mask_pattern"),
    ({"ibot": {"enabled": True, "mask_ratio": [0.1, 1.5]}}, "ibot.mask_ratio"),
    ({"ibot": {"enabled": True, "mask_ratio": [-0.1, 0.5]}}, "ibot.mask_ratio"),
    ({"ibot": {"enabled": True, "mask_probability": 2.0}}, "ibot.mask_probability"),
    ({"plugins": {"posfield": {"mask_pattern": "diagonal"}}}, "plugins.posfield.mask_pattern"),
    ({"plugins": {"posfield": {"pos_mask_share": 1.2}}}, "plugins.posfield.pos_mask_share"),
])
def test_bad_config_names_the_key(over, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(TrainConfig, tiny_train_dict(**over))


def test_posfield_without_ibot_and_on_a_backbone_without_pos_embed_are_refused():
    with pytest.raises(ConfigError, match=r"plugins\.posfield needs iBOT.*ibot\.enabled"):
        from_dict(TrainConfig, tiny_train_dict(plugins={"posfield": {}}))
    SSLMetaArch(from_dict(TrainConfig, tiny_train_dict(plugins={"posfield": {"pos_mask_share": 0.0}})))  # field only: fine
    cfg = _masked_cfg(plugins={"posfield": {}}, **{"model.kwargs": {"pos_embed": "none"}})
    with pytest.raises(ConfigError, match=r"plugins\.posfield needs a backbone with a positional embedding"):
        SSLMetaArch(cfg)


def test_a_plugin_requiring_ibot_is_refused_when_ibot_is_off(toy_plugin):
    toy_plugin.requires_ibot = True
    try:
        with pytest.raises(ConfigError, match=r"plugins\.toy_host_test needs iBOT.*ibot\.enabled: true"):
            from_dict(TrainConfig, tiny_train_dict(plugins={"toy_host_test": {}}))
        from_dict(TrainConfig, tiny_train_dict(plugins={"toy_host_test": {}}, ibot={"enabled": True}))
    finally:
        toy_plugin.requires_ibot = False


# --- the plug-in interface --------------------------------------------------------------------------


@dataclass
class _ToyConfig(PluginConfig):
    weight: float = 1.0


class _Toy(Plugin):
    """Exercises setup, the EMA targets, the step context and its own data hook."""

    name = "toy_host_test"
    Config = _ToyConfig

    def __init__(self, cfg, embed_dim):
        super().__init__(cfg, embed_dim)
        self.proj = torch.nn.Linear(embed_dim, 8)
        self.add_ema_target("target_proj", self.proj)
        self.seen = []

    def setup(self, host):
        super().setup(host)
        self.patch = host.patch_size

    def data_hook(self):
        return _ToyHook()

    def forward(self, student, teacher, batch, ctx=None):
        self.seen.append((ctx.step, ctx.total_steps, ctx.progress, ctx.student_head is not None))
        z = self.proj(student["global"].patch.mean(1))
        with torch.no_grad():
            t = self.target_proj(teacher["global"].patch.mean(1))
        assert batch["toy"]["k"].shape[-1] == 2
        return (z - t).pow(2).mean(), {}


class _ToyHook:
    def __call__(self, sample, img, rng, position):
        sample["toy"] = {"k": rng.integers(0, 4, size=2)}


@pytest.fixture
def toy_plugin():
    snap = plugin_base.PLUGINS.snapshot()
    register_plugin(_Toy)
    yield _Toy
    plugin_base.PLUGINS.restore(snap)


def test_plugin_ema_targets_progress_and_hooks(toy_plugin):
    cfg = from_dict(TrainConfig, tiny_train_dict(total_steps=10, plugins={"toy_host_test": {}}))
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg)
    toy = meta.plugins["toy_host_test"]
    assert toy.patch == 8 and not toy.target_proj.weight.requires_grad
    assert "plugins.toy_host_test" in meta.data_hooks()
    batch = _batch(meta, cfg)
    total, _ = meta.forward_losses(batch, 0.04, step=3)
    assert toy.seen[-1] == (3, 10, 0.3, True)
    with torch.no_grad():
        toy.proj.weight.add_(1.0)
    before = toy.target_proj.weight.clone()
    meta.update_teacher(0.9)
    torch.testing.assert_close(toy.target_proj.weight, 0.9 * before + 0.1 * toy.proj.weight)


def test_duplicate_plugin_names_are_refused(toy_plugin):
    class Other(Plugin):
        name = "toy_host_test"

    with pytest.raises(PluginError, match="'toy_host_test' is already registered"):
        register_plugin(Other)


def _fake_distribution(root, name: str, target: str) -> None:
    """An installed distribution as importlib.metadata sees it: a dist-info with entry_points.txt."""
    dist = root / f"wherevit_toy_{root.name}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: wherevit_toy_{root.name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{plugin_base.ENTRY_POINT_GROUP}]\n{name} = {target}\n")


def test_plugins_from_the_entry_point_group_and_name_clashes(tmp_path, monkeypatch):
    (tmp_path / "wherevit_toy_plugin_pkg.py").write_text(
        "from wherevit.train.plugins import Plugin\n\n"
        "class FromPackage(Plugin):\n    name = 'toy_from_entry_point'\n\n"
        "class Clash(Plugin):\n    name = 'sp'\n")
    _fake_distribution(tmp_path / "a", "toy_from_entry_point", "wherevit_toy_plugin_pkg:FromPackage")
    for p in (tmp_path, tmp_path / "a"):
        monkeypatch.syspath_prepend(str(p))
    snap = plugin_base.PLUGINS.snapshot()
    plugin_base.PLUGINS.reload_entry_points()
    try:
        assert "toy_from_entry_point" not in snap[0]
        cls = plugin_base.registered_plugins()["toy_from_entry_point"]
        assert cls.__name__ == "FromPackage"
        # usable from a config like a built-in
        from_dict(TrainConfig, tiny_train_dict(plugins={"toy_from_entry_point": {"weight": 0.3}}))
        # a package claiming a built-in's name is refused
        _fake_distribution(tmp_path / "b", "sp", "wherevit_toy_plugin_pkg:Clash")
        monkeypatch.syspath_prepend(str(tmp_path / "b"))
        plugin_base.PLUGINS.reload_entry_points()
        with pytest.raises(PluginError, match="'sp' is already registered"):
            plugin_base.registered_plugins()
    finally:
        plugin_base.PLUGINS.restore(snap)
        sys.modules.pop("wherevit_toy_plugin_pkg", None)


def test_sp_view_sampler_takes_the_configured_colour_augmentation():
    cfg = from_dict(TrainConfig, tiny_train_dict(**{"data.crops.color_jitter_p": 0.0, "data.crops.grayscale_p": 0.55}))
    spec = SSLMetaArch(cfg).view_samplers()["sp"].spec
    assert (spec.color_jitter_p, spec.grayscale_p, spec.flip_p) == (0.0, 0.55, 0.0)


def test_roi_align_over_the_patch_grid():
    from wherevit.train.backbone import BackboneFeatures

    torch.manual_seed(0)
    f = BackboneFeatures(torch.zeros(2, 3), torch.randn(2, 12, 3), (3, 4))
    whole = f.roi_align(torch.tensor([[1.0, 0, 0, 1, 1]]), (3, 4))
    torch.testing.assert_close(whole[0], f.patch_map()[1])
    right_half = f.roi_align(torch.tensor([[0.0, 0.5, 0, 1, 1]]), (3, 2))
    torch.testing.assert_close(right_half[0], f.patch_map()[0, :, :, 2:])
