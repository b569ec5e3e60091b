"""Reading the weights users have (train/weights.py through train/checkpoint.load_backbone): every
layout loads bit for bit as timm (or the source model) has it, the grid is resampled by timm's own
code, the wrong model is an error that names the keys and the model that fits, and only tensors
are read."""

import hashlib
import pickle
from pathlib import Path

import pytest
import timm
import torch
from weight_layouts import (
    DETECTED,
    DINOV2,
    DINOV2_REG,
    LAYOUT_MODELS,
    PLAIN,
    PRETRAINED_FILE,
    official_dinov2,
    tiny_model,
    write_layout,
)

from wherevit.train.checkpoint import CheckpointError, load_backbone
from wherevit.train.weights import WeightsError, WeightsMismatch, fitting_models, read_weights


def _suffix(layout: str) -> str:
    return ".safetensors" if layout.endswith("safetensors") else ".pth"


def _timm_loaded(name: str, file: Path, **kw) -> torch.nn.Module:
    """timm's own pretrained path (its load_state_dict + checkpoint_filter_fn) on a local file."""
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)), num_classes=0, **kw).eval()


def _reference(layout: str, source: torch.nn.Module, tmp_path: Path) -> torch.nn.Module:
    """What the file must load as: the source model, or for DINOv2 files timm's own loading of the release."""
    name = LAYOUT_MODELS[layout]
    if layout.startswith("dinov2"):
        release = write_layout("dinov2-reg4" if name == DINOV2_REG else "dinov2", source, tmp_path / "release.pth")
        return _timm_loaded(name, release)
    return source


def _assert_same(model, ref, x):
    a, b = model.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), ref.forward_features(x))


@pytest.mark.parametrize("layout", sorted(LAYOUT_MODELS))
def test_every_layout_loads_bit_equal_to_timm(tmp_path, layout):
    name = LAYOUT_MODELS[layout]
    source = tiny_model(name)
    file = write_layout(layout, source, tmp_path / f"w{_suffix(layout)}")
    model, info = load_backbone(name, weights=file)
    ref = _reference(layout, source, tmp_path)
    x = torch.randn(2, 3, *ref.patch_embed.img_size, generator=torch.Generator().manual_seed(0))
    _assert_same(model, ref, x)
    if name != DINOV2_REG:  # the reg4 release moves the CLS position into pos_embed: timm adds it back, rounding once
        _assert_same(model, source, x)
    rec = info["weights"]
    assert rec["layout"] == DETECTED[layout]
    assert rec["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest() and rec["bytes"] == file.stat().st_size
    assert rec["file"] == file.name and rec["loaded_by"] == "weights"
    assert info["model"] == name and tuple(info["arch"]["img_size"]) == tuple(source.patch_embed.img_size)


@pytest.mark.parametrize("layout, network", [("dino-train", "teacher"), ("ibot-train", "teacher"), ("timm-train", "ema"),
                                             ("dinov2-train", "teacher")])
def test_two_network_checkpoints_give_the_teacher_unless_asked(tmp_path, layout, network):
    name = LAYOUT_MODELS[layout]
    source = tiny_model(name)
    file = write_layout(layout, source, tmp_path / "w.pth")
    teacher, info = load_backbone(name, weights=file)
    student, sinfo = load_backbone(name, weights=file, which="student")
    assert info["weights"]["network"] == network and sinfo["weights"]["network"] == "student"
    # the writer's student is the teacher plus noise: a different network, loaded just as completely
    diff = [k for k in teacher.state_dict() if not torch.equal(teacher.state_dict()[k], student.state_dict()[k])]
    assert len(diff) == len(teacher.state_dict())
    assert info["weights"].get("dropped", {}).get("head", 0) == (4 if layout in ("dino-train", "ibot-train") else 0)


def test_training_only_tokens_are_kept_as_extras(tmp_path):
    source = tiny_model(DINOV2_REG)
    file = write_layout("dinov2-reg4", source, tmp_path / "w.pth")
    w = read_weights(file)
    torch.testing.assert_close(w.extras["mask_token"], official_dinov2(source.state_dict())["mask_token"].reshape(-1), rtol=0, atol=0)
    ib = read_weights(write_layout("ibot-train", tiny_model(PLAIN), tmp_path / "ibot.pth"))
    assert set(ib.extras) == {"mask_token"} and "masked_embed" not in ib.state


def test_a_larger_grid_is_resampled_by_timms_own_code(tmp_path):
    """A 518 px (37 x 37) DINOv2 file built at 56 px equals timm's own pretrained loading at 56 px."""
    file = write_layout("dinov2-reg4", tiny_model(DINOV2_REG), tmp_path / "w.pth")
    model, info = load_backbone(DINOV2_REG, weights=file, img_size=56)
    ref = _timm_loaded(DINOV2_REG, file, img_size=56)
    assert tuple(model.pos_embed.shape) == (1, 16, 64)  # no CLS slot: the reg4 model is no_embed_class
    _assert_same(model, ref, torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1)))
    assert info["weights"]["adapted"]["pos_embed"]["grid_from"] == [37, 37]
    assert info["weights"]["adapted"]["pos_embed"]["grid_to"] == [4, 4]
    # and the native size by default: the file's own grid
    native, _ = load_backbone(DINOV2_REG, weights=file)
    assert tuple(native.patch_embed.img_size) == (518, 518) and "adapted" not in _["weights"]


def test_pretrained_goes_through_timms_own_loader(tmp_path):
    PRETRAINED_FILE.parent.mkdir(parents=True, exist_ok=True)
    write_layout("dinov2-reg4", tiny_model(DINOV2_REG, seed=5), PRETRAINED_FILE)
    try:
        model, info = load_backbone(DINOV2_REG, pretrained=True, img_size=56)
        ref, _ = load_backbone(DINOV2_REG, weights=PRETRAINED_FILE, img_size=56)
        _assert_same(model, ref, torch.randn(1, 3, 56, 56))
        assert info["weights"]["layout"] == "timm-pretrained" and info["weights"]["loaded_by"] == "pretrained"
        assert info["weights"]["file"] == str(PRETRAINED_FILE)
        assert info["weights"]["sha256"] == hashlib.sha256(PRETRAINED_FILE.read_bytes()).hexdigest()
    finally:
        PRETRAINED_FILE.unlink()


def test_the_wrong_model_is_an_error_naming_keys_and_the_model_that_fits(tmp_path):
    file = write_layout("dino-train", tiny_model(PLAIN), tmp_path / "dino.pth")
    with pytest.raises(WeightsMismatch) as e:
        load_backbone("vit_small_patch8_224", weights=file)
    msg = str(e.value)
    assert "dino.pth (dino-train layout) does not fit vit_small_patch8_224" in msg
    assert "the file: patch 8, width 64, depth 2" in msg and "vit_small_patch8_224: patch 8, width 384, depth 12" in msg
    assert "missing keys (the model has them, the file does not): blocks 2-11 (12 tensors each)" in msg
    assert "shape mismatches: blocks.0.attn.proj.bias file [64] vs model [384]" in msg
    assert "the file fits: wvtest_tiny_patch8_32" in msg
    # registers and layer scale are architecture: a DINOv2 reg4 file does not fit the plain DINOv2 model
    reg = write_layout("dinov2-reg4", tiny_model(DINOV2_REG), tmp_path / "reg.pth")
    with pytest.raises(WeightsMismatch, match=r"(?s)does not fit wvtest_tiny_patch14_dinov2.*the file: .*4 registers.*"
                                              r"the file fits: wvtest_tiny_patch14_reg4_dinov2"):
        load_backbone(DINOV2, weights=reg)


def test_real_scale_releases_name_their_timm_models():
    """Shapes only (meta tensors, nothing allocated): the official ViT-S/14 reg4 DINOv2 release and a
    DINO ViT-S/16 release are recognised as the timm models that load them."""
    with torch.device("meta"):
        dinov2 = timm.create_model("vit_small_patch14_reg4_dinov2", num_classes=0)
        dino = timm.create_model("vit_small_patch16_224", num_classes=0)
    release = official_dinov2({k: torch.empty(v.shape) for k, v in dinov2.state_dict().items()})
    assert release["pos_embed"].shape[1] == 1 + 37 * 37 and "register_tokens" in release
    assert fitting_models(release)[0] == "vit_small_patch14_reg4_dinov2"
    assert "vit_small_patch16_224" in fitting_models(dino.state_dict(), limit=50)


class _Marker:
    """A pickle that would create a file if it were ever unpickled (it must not be)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (Path(self.path),)


def test_only_tensors_are_read(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": tiny_model(PLAIN).state_dict(), "hook": _Marker(marker)}, evil)
    with pytest.raises(WeightsError, match=r"holds Python objects other than tensors \(builtins.getattr, pathlib.Path, pathlib.PosixPath\)"):
        read_weights(evil)
    assert not marker.exists()
    bad = tmp_path / "mixed.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 4), "note": "hello"}, bad)
    with pytest.raises(WeightsError, match=r"not a layout wherevit knows \(top-level entries: cls_token \(Tensor\), note \(str\)"):
        read_weights(bad)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 4), "epoch": 3}}, wrapped)
    with pytest.raises(WeightsError, match=r"\['model'\] holds non-tensor entries: epoch \(int\)"):
        read_weights(wrapped)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(WeightsError, match="expected a dict of tensors"):
        read_weights(tensor)
    good = write_layout("timm", tiny_model(PLAIN), tmp_path / "good.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="not a readable PyTorch or safetensors weights file"):
        read_weights(cut)
    st = write_layout("timm-safetensors", tiny_model(PLAIN), tmp_path / "good.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(st.read_bytes()[:200])
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        read_weights(tmp_path / "cut.safetensors")
    with pytest.raises(WeightsError, match="weights file not found"):
        read_weights(tmp_path / "missing.pth")
    pickled = tmp_path / "plain.pkl"
    pickled.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(WeightsError):
        read_weights(pickled)


def test_a_foreign_file_as_the_checkpoint_argument_says_to_use_weights(tmp_path):
    file = write_layout("dinov2-reg4", tiny_model(DINOV2_REG), tmp_path / "dinov2.pth")
    with pytest.raises(CheckpointError, match=r"dinov2-layout weights file, not a wherevit run.*"
                                              r"`wvtest_tiny_patch14_reg4_dinov2 --weights .*dinov2.pth`"):
        load_backbone(file)
    with pytest.raises(Exception, match="names the timm model"):
        load_backbone(file, weights=file)
    with pytest.raises(Exception, match="not both"):
        load_backbone(DINOV2_REG, weights=file, pretrained=True)


def test_our_own_runs_load_through_weights_too(trained_run, tmp_path):
    ref, rinfo = load_backbone(trained_run)
    assert rinfo["weights"]["layout"] == "wherevit-backbone" and len(rinfo["weights"]["sha256"]) == 64
    model, info = load_backbone("vit_tiny_patch16_224", weights=trained_run / "backbone.safetensors")
    _assert_same(model, ref, torch.randn(2, 3, 32, 32))
    assert info["weights"]["layout"] == "wherevit-backbone" and info["timm_kwargs"]["depth"] == 2
    ckpt = sorted((trained_run / "checkpoints").glob("step_*"))[-1] / "model.safetensors"
    student, sinfo = load_backbone("vit_tiny_patch16_224", weights=ckpt, which="student")
    ref_student, _ = load_backbone(ckpt.parent, which="student")
    _assert_same(student, ref_student, torch.randn(2, 3, 32, 32))
    assert sinfo["weights"]["layout"] == "wherevit-checkpoint" and sinfo["weights"]["network"] == "student"
    with pytest.raises(WeightsMismatch, match="is a wherevit wherevit-backbone of vit_tiny_patch16_224, not vit_small_patch16_224"):
        load_backbone("vit_small_patch16_224", weights=trained_run / "backbone.safetensors")


def test_random_init_keeps_the_files_architecture(tmp_path):
    file = write_layout("dinov2-reg4", tiny_model(DINOV2_REG), tmp_path / "w.pth")
    a, info = load_backbone(DINOV2_REG, weights=file, random_init=True, img_size=56)
    b, _ = load_backbone(DINOV2_REG, weights=file, random_init=True, img_size=56)
    loaded, _ = load_backbone(DINOV2_REG, weights=file, img_size=56)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())  # seeded: reproducible
    assert not torch.equal(a.blocks[0].attn.qkv.weight, loaded.blocks[0].attn.qkv.weight)
    assert info["weights"]["layout"] == "random-init" and info["weights"]["architecture_of"]["layout"] == "dinov2"
