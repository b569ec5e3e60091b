"""Triton model repositories, checked with Triton's own model-config schema (tritonclient's model_config_pb2)."""

import copy
import json
import shutil

import numpy as np
import pytest

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is not installed")
from google.protobuf import text_format  # noqa: E402

from wherevit import runtime  # noqa: E402
from wherevit.base.sidecar import read_sidecar  # noqa: E402
from wherevit.export.formats.triton import (  # noqa: E402
    TritonOptions,
    TritonRepositoryError,
    triton_config_text,
    write_triton_model,
)

MODEL = "vit_tiny_patch16_224"


def parse_config(path) -> "model_config_pb2.ModelConfig":
    """Triton's parser: an unknown field, a wrong enum or a syntax error raises."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_onnx_model_repository(onnx_artifact, tmp_path):
    repo = tmp_path / "repo"
    res = write_triton_model(onnx_artifact, repo, TritonOptions(max_queue_delay_us=250))
    assert res.model_dir == repo / MODEL and res.version == 1 and res.model_file == repo / MODEL / "1" / "model.onnx"
    cfg = parse_config(res.config)
    assert cfg.name == MODEL and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims), i.format) for i in cfg.input] == [
        ("images", model_config_pb2.TYPE_FP32, [3, 32, 32], model_config_pb2.ModelInput.FORMAT_NCHW)]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("cls", [64]), ("patch_tokens", [16, 64]), ("pooled", [64])]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8] and cfg.dynamic_batching.max_queue_delay_microseconds == 250
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_AUTO)]
    pre = json.loads(cfg.parameters["wherevit.preprocess"].string_value)
    assert pre == read_sidecar(onnx_artifact).preprocess
    assert cfg.parameters["wherevit.task"].string_value == "features"
    # the model is the exported bytes and the sidecar beside it still vouches for them: wherevit can open it too
    assert res.model_file.read_bytes() == onnx_artifact.read_bytes()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with runtime.load(res.model_file) as a, runtime.load(onnx_artifact) as b:
        np.testing.assert_array_equal(a.run(x).cls, b.run(x).cls)
    assert not [p for p in res.model_dir.iterdir() if p.name.startswith(".")]  # no staging left behind

    # an existing repository gains a version; the first is untouched
    again = write_triton_model(onnx_artifact, repo, TritonOptions(instance_kind="cpu", instance_count=2))
    assert again.version == 2 and (repo / MODEL / "1" / "model.onnx").is_file() and (repo / MODEL / "2" / "model.onnx.json").is_file()
    assert [(g.count, g.kind) for g in parse_config(again.config).instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    with pytest.raises(TritonRepositoryError, match="never overwritten"):
        write_triton_model(onnx_artifact, repo, TritonOptions(version=1))


def test_a_failed_write_leaves_the_repository_as_it_was(onnx_artifact, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    write_triton_model(onnx_artifact, repo)
    config_before = (repo / MODEL / "config.pbtxt").read_text()
    real = shutil.copyfile

    def failing(src, dst, *a, **k):
        if str(dst).endswith(".json"):
            raise OSError("disk full")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(shutil, "copyfile", failing)
    with pytest.raises(OSError, match="disk full"):
        write_triton_model(onnx_artifact, repo, TritonOptions(max_queue_delay_us=7))
    assert sorted(p.name for p in (repo / MODEL).iterdir()) == ["1", "config.pbtxt"]
    assert (repo / MODEL / "config.pbtxt").read_text() == config_before


def test_interface_changes_and_bad_artifacts_are_refused(onnx_artifact, tmp_path):
    meta = read_sidecar(onnx_artifact)
    repo = tmp_path / "repo"
    write_triton_model(onnx_artifact, repo, TritonOptions(name="m"))
    sc = repo / "m" / "1" / "model.onnx.json"
    other = json.loads(sc.read_text())
    other["outputs"] = other["outputs"][:1]
    sc.write_text(json.dumps(other))  # pretend version 1 had another interface
    with pytest.raises(TritonRepositoryError, match="another interface"):
        write_triton_model(onnx_artifact, repo, TritonOptions(name="m"))
    fixed = copy.deepcopy(meta)
    fixed.inputs[0].shape[0] = 4
    with pytest.raises(TritonRepositoryError, match="first dimension must be -1"):
        triton_config_text(fixed, "m")
    with pytest.raises(TritonRepositoryError, match="preferred batch sizes"):
        triton_config_text(meta, "m", TritonOptions(preferred_batch_sizes=(16,)))
    with pytest.raises(TritonRepositoryError, match="instance kind"):
        TritonOptions(instance_kind="tpu")
    with pytest.raises(TritonRepositoryError, match="directory name"):
        TritonOptions(name="../up")


def test_dynamic_hw_dims_are_minus_one(onnx_artifact):
    meta = read_sidecar(onnx_artifact)
    meta.inputs[0].shape = [-1, 3, -1, -1]
    meta.outputs[1].shape = [-1, -1, 64]
    cfg = text_format.Parse(triton_config_text(meta, "dyn"), model_config_pb2.ModelConfig())
    assert list(cfg.input[0].dims) == [3, -1, -1] and list(cfg.output[1].dims) == [-1, 64]


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt_rtx") is None, reason="tensorrt_rtx is not installed")
def test_engine_model_repository(trained_run, tmp_path):
    from wherevit.export.api import ExportRequest, export_artifacts

    repo = tmp_path / "repo"
    res = export_artifacts(ExportRequest(str(trained_run), repo, format="triton-engine", batch=(1, 2, 4), format_options={"engine": {"trt_lib": "tensorrt_rtx", "compute_capabilities": ("SM89",)}, "triton-engine": TritonOptions(gpus=(0, 1))}))
    engine = repo / MODEL / "1" / "model.plan"
    assert res.engine == engine == res.primary and read_sidecar(engine).kind == "engine"  # moved in, hash still vouched for
    assert not list(repo.glob("*.engine*"))  # no stray plan at the repository root
    assert any("TensorRT-RTX" in n for n in res.notes)
    out = write_triton_model(engine, tmp_path / "other", TritonOptions(gpus=(0, 1)))  # an existing artifact, copied
    cfg = parse_config(out.config)
    assert out.model_file.name == "model.plan" and out.model_file.read_bytes() == engine.read_bytes()
    assert (out.version_dir / "model.plan.json").is_file()
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 4 and list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert [(g.kind, list(g.gpus)) for g in cfg.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, [0, 1])]
    assert list(cfg.input[0].dims) == [3, 32, 32]
    assert any("TensorRT-RTX" in n for n in out.notes)


def test_export_format_triton_through_the_registry_and_cli(trained_run, tmp_path):
    """`wherevit export RUN --format triton --out REPO`: the graph lands in the repository, nothing stray at its root."""
    from click.testing import CliRunner

    from wherevit.app.cli import main

    repo = tmp_path / "repo"
    args = ["export", str(trained_run), "--format", "triton", "--batch", "1:2:4", "--out", str(repo), "--triton-queue-delay-us", "500"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in repo.iterdir()) == [MODEL]  # Triton reads every directory here as a model
    cfg = parse_config(repo / MODEL / "config.pbtxt")
    assert cfg.max_batch_size == 4 and cfg.dynamic_batching.max_queue_delay_microseconds == 500
    model_file = repo / MODEL / "1" / "model.onnx"
    assert read_sidecar(model_file).kind == "onnx" and str(model_file) in r.output
    r = CliRunner().invoke(main, args + ["--triton-instance-kind", "cpu"])  # again: version 2
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (repo / MODEL).iterdir()) == ["1", "2", "config.pbtxt"]
    assert parse_config(repo / MODEL / "config.pbtxt").instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
