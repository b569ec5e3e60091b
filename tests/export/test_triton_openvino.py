"""A Triton repository that names Triton's OpenVINO backend for CPU instances, checked with Triton's model-config schema."""

import pytest

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is not installed")
from google.protobuf import text_format  # noqa: E402

from wherevit.base.sidecar import read_sidecar  # noqa: E402
from wherevit.export.formats.triton import TritonOptions, TritonRepositoryError, triton_config_text, write_triton_model  # noqa: E402


def test_openvino_backend_config(onnx_artifact, tmp_path):
    res = write_triton_model(onnx_artifact, tmp_path / "repo", TritonOptions(backend="openvino", instance_count=2))
    cfg = text_format.Parse(res.config.read_text(), model_config_pb2.ModelConfig())  # an unknown field would raise
    assert cfg.backend == "openvino" and cfg.platform == "" and cfg.default_model_filename == "model.onnx"
    assert res.model_file.name == "model.onnx" and res.model_file.read_bytes() == onnx_artifact.read_bytes()
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert cfg.max_batch_size == 8 and list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["NUM_STREAMS"] == "1" and params["PERFORMANCE_HINT"] == "LATENCY"  # keys the backend parses
    assert params["wherevit.precision"] == "fp32" and any("bf16" in n for n in res.notes)


def test_openvino_backend_refuses_engines_and_gpu_instances(onnx_artifact):
    meta = read_sidecar(onnx_artifact)
    with pytest.raises(TritonRepositoryError, match="CPU instances"):
        triton_config_text(meta, "m", TritonOptions(backend="openvino", instance_kind="gpu"))
    import dataclasses

    with pytest.raises(TritonRepositoryError, match="ONNX graphs"):
        triton_config_text(dataclasses.replace(meta, kind="engine"), "m", TritonOptions(backend="openvino"))
    with pytest.raises(TritonRepositoryError, match="choose default or openvino"):
        TritonOptions(backend="tensorflow")
    # the default stays the kind's platform
    assert 'platform: "onnxruntime_onnx"' in triton_config_text(meta, "m") and "backend:" not in triton_config_text(meta, "m")
