"""The sidecar schema: what export writes round-trips, and a malformed or old sidecar is refused by name."""

from __future__ import annotations

import json

import pytest

from wherevit.base.sidecar import BatchRange, Sidecar, SidecarError, TensorSpec, read_sidecar, sidecar_path, write_sidecar


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
