"""The sidecar schema: what export writes round-trips, and a malformed or old sidecar is refused by name."""

from __future__ import annotations

import json

import pytest

from wherevit.base.sidecar import (
    BatchRange,
    Sidecar,
    SidecarError,
    TensorSpec,
    default_model_name,
    read_sidecar,
    sidecar_path,
    triton_platform,
    write_sidecar,
)


def _meta(**over) -> Sidecar:
    base = dict(kind="onnx", inputs=[TensorSpec("images", "float32", [-1, 3, 32, 32], layout="NCHW")],
                outputs=[TensorSpec("cls", "float32", [-1, 64]), TensorSpec("patch_tokens", "float32", [-1, 16, 64], grid=[4, 4])],
                preprocess={"size": [32, 32]}, batch=BatchRange(1, 4, 8), precision="fp32")
    return Sidecar(**{**base, **over})


@pytest.fixture
def artifact(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(b"graph")
    return p


def test_round_trip(artifact):
    write_sidecar(artifact, _meta())
    meta = read_sidecar(artifact)
    assert meta.input_names == ["images"] and meta.grid == (4, 4) and 4 in meta.batch and 9 not in meta.batch
    assert meta.artifact.bytes == 5 and meta.input_preprocess().size == (32, 32)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["inputs"][0].update(dtype="float33"), "inputs[0]"),
    (lambda d: d["batch"].update(min=9), "batch"),
    (lambda d: d.update(colour="red"), "colour"),
    (lambda d: d.pop("outputs"), "outputs"),
    (lambda d: d["preprocess"].update(resize="squash"), "preprocess.resize"),
    (lambda d: d["outputs"][0].update(shape=[-1, 0]), "outputs[0]"),
])
def test_malformed_sidecar_names_the_field(artifact, edit, field):
    write_sidecar(artifact, _meta())
    data = json.loads(sidecar_path(artifact).read_text())
    edit(data)
    sidecar_path(artifact).write_text(json.dumps(data))
    with pytest.raises(SidecarError, match=field.replace("[", r"\[").replace("]", r"\]")):
        read_sidecar(artifact)


def test_old_or_foreign_sidecar_is_refused(artifact):
    sidecar_path(artifact).write_text(json.dumps({"format": "wherevit.artifact/0", "kind": "onnx"}))
    with pytest.raises(SidecarError, match="re-export"):
        read_sidecar(artifact)
    sidecar_path(artifact).write_text("[1, 2]")
    with pytest.raises(SidecarError, match="JSON object"):
        read_sidecar(artifact)


def test_write_refuses_an_invalid_sidecar(artifact):
    with pytest.raises(SidecarError, match="batch"):
        write_sidecar(artifact, _meta(batch=BatchRange(4, 2, 8)))
    assert not sidecar_path(artifact).exists()


# -- typed sections; sidecars written by wherevit 0.1 still read -------------------------------------------

OLD = sorted((__import__("pathlib").Path(__file__).parents[1] / "data" / "sidecars_0_1").glob("*.json"))


@pytest.mark.parametrize("path", OLD, ids=[p.name for p in OLD])
def test_sidecars_written_by_0_1_read_into_typed_sections(path):
    """Saved sidecars of every kind 0.1 wrote (ONNX fp16/int8, engine fp16/int8, pt2, a head graph, a Triton model)."""
    data = json.loads(path.read_text())
    meta = Sidecar.from_dict(data, where=path.name)
    assert meta.model.model == "vit_tiny_patch16_224" and meta.model.checkpoint and meta.model.trained_network == "teacher"
    assert Sidecar.from_dict(meta.to_dict()) == meta  # what this version writes reads back the same
    if meta.kind == "engine":
        assert meta.engine.library == "tensorrt_rtx" and meta.engine.profile.inputs == ["images"] and meta.onnx.opset == 18
    if meta.kind == "pt2":
        assert meta.pt2.device == "cpu" and meta.pt2.torch
    if meta.precision == "int8":
        q = meta.quantization
        assert q.mode == "static" and q.batch_dependent is False and not meta.batch_dependent
        assert q.source_onnx.file == "model_fp32.onnx" and q.calibration["method"] == "minmax"
    if meta.head is not None:
        assert meta.task == meta.head.task == "seg" and meta.head.file.endswith("head_seg.safetensors")
        assert default_model_name(meta) == "vit_tiny_patch16_224_seg"
    else:
        assert default_model_name(meta) == "vit_tiny_patch16_224"


def test_a_mistyped_section_field_is_named():
    data = json.loads(next(p for p in OLD if p.name == "model_fp16.engine.json").read_text())
    data["engine"]["compute_capabilities"] = "8.6"
    with pytest.raises(SidecarError, match=r"engine\.compute_capabilities: expected a list"):
        Sidecar.from_dict(data)
    data["engine"] = {**data["engine"], "compute_capabilities": ["8.6"], "libary": "x"}
    with pytest.raises(SidecarError, match=r"unknown field 'sidecar\.engine\.libary' \(did you mean 'library'\?\)"):
        Sidecar.from_dict(data)


def test_one_triton_platform_per_artifact_kind():
    assert triton_platform("onnx") == "onnxruntime_onnx" and triton_platform("engine") == "tensorrt_plan"
    assert triton_platform("pt2") is None  # Triton's PyTorch backend runs TorchScript, not AOTInductor packages
