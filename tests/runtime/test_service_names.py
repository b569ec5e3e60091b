"""One answer for the served model's name and platform: the sidecar's (base/sidecar.py), shared with Triton repositories."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from wherevit.base.sidecar import Sidecar, default_model_name
from wherevit.runtime.service import InferenceService, ServeConfig

OLD = Path(__file__).parents[1] / "data" / "sidecars_0_1"


def _service(meta: Sidecar, name: str | None = None) -> InferenceService:
    model = SimpleNamespace(meta=meta, batch_dependent=False, run_outputs=lambda feeds: feeds, input_names=meta.input_names,
                            output_names=meta.output_names, backend=SimpleNamespace(name="stub"), artifact=Path("m"),
                            preprocess=meta.input_preprocess())
    return InferenceService(model, ServeConfig(name=name, warmup=False))


@pytest.mark.parametrize("file,kind,platform,name", [
    ("model_fp16.onnx.json", "onnx", "onnxruntime_onnx", "vit_tiny_patch16_224"),
    ("model_fp16.engine.json", "engine", "tensorrt_plan", "vit_tiny_patch16_224"),
    ("model_fp32.pt2.json", "pt2", "", "vit_tiny_patch16_224"),  # no Triton platform: not onnxruntime_onnx (as 0.1 said)
    ("seg_fp32.onnx.json", "onnx", "onnxruntime_onnx", "vit_tiny_patch16_224_seg"),  # a head graph: + its task, like Triton's
])
def test_served_name_and_platform(file, kind, platform, name):
    meta = Sidecar.from_dict(json.loads((OLD / file).read_text()))
    svc = _service(meta)
    assert meta.kind == kind and svc.platform == platform and svc.name == name == default_model_name(meta)
    assert svc.model_metadata(name)["platform"] == platform and svc.model_config(name)["platform"] == platform
    assert svc.model_config(name)["backend"] == "stub" and svc.images_name == f"{name}_images"
    assert _service(dataclasses.replace(meta), name="mine").name == "mine"
