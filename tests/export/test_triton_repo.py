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


# --- --triton-images: the encoded-image ensemble (served for real in test_triton_server.py) ----------------------
def _images_options(**kw):
    from wherevit.export.formats.triton_images import ImagesOptions

    return ImagesOptions(**kw)


def test_images_ensemble_configs_and_files(onnx_artifact, tmp_path):
    from wherevit.export.formats.triton_images import vendored_sources

    repo = tmp_path / "repo"
    res = write_triton_model(onnx_artifact, repo, TritonOptions(images=_images_options(instance_count=3, max_request_mb=2)))
    pre_name, ens_name = f"{MODEL}_preprocess", f"{MODEL}_images"
    assert sorted(p.name for p in repo.iterdir()) == [MODEL, ens_name, pre_name]
    assert res.images.ensemble_name == ens_name and any(ens_name in n for n in res.notes)
    pre, ens = parse_config(repo / pre_name / "config.pbtxt"), parse_config(repo / ens_name / "config.pbtxt")
    graph = parse_config(res.config)
    # the preprocessing model: BYTES [B, 1] in, the graph's input out, on CPU processes
    assert pre.backend == "python" and pre.max_batch_size == graph.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in pre.input] == [("image_bytes", model_config_pb2.TYPE_STRING, [1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in pre.output] == [(i.name, i.data_type, list(i.dims)) for i in graph.input]
    assert [(g.count, g.kind) for g in pre.instance_group] == [(3, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    params = {k: v.string_value for k, v in pre.parameters.items()}
    assert json.loads(params["wherevit.preprocess"]) == read_sidecar(onnx_artifact).preprocess
    assert json.loads(params["wherevit.inputs"]) == {"image_bytes": ["images", "float32"]}
    assert params["wherevit.max_request_bytes"] == str(2 << 20) and int(params["wherevit.max_image_pixels"]) == 1 << 26
    # the ensemble: preprocessing -> graph, every graph output out, newest versions
    assert ens.platform == "ensemble" and ens.max_batch_size == 8
    assert [(o.name, list(o.dims)) for o in ens.output] == [(o.name, list(o.dims)) for o in graph.output]
    s1, s2 = ens.ensemble_scheduling.step
    assert (s1.model_name, s1.model_version, dict(s1.input_map), dict(s1.output_map)) == (
        pre_name, -1, {"image_bytes": "image_bytes"}, {"images": "images"})
    assert (s2.model_name, dict(s2.input_map), dict(s2.output_map)) == (
        MODEL, {"images": "images"}, {o.name: o.name for o in graph.output})
    # version 1 of the preprocessing model holds model.py and the torch-free modules it imports, verbatim
    vdir = repo / pre_name / "1"
    sources = vendored_sources()
    assert {"model.py", "wherevit/base/errors.py", "wherevit/base/image.py"} <= set(sources)  # and whatever these import
    assert all(rel == "model.py" or rel.startswith("wherevit/base/") for rel in sources)  # the torch-free layer only
    for rel, src in sources.items():
        assert (vdir / rel).read_bytes() == src.read_bytes()
    assert (vdir / "wherevit" / "__init__.py").is_file() and (vdir / "wherevit" / "base" / "__init__.py").is_file()
    assert (repo / ens_name / "1").is_dir() and not list((repo / ens_name / "1").iterdir())
    # again: the graph and the preprocessing model gain version 2 together; the ensemble keeps its one version
    again = write_triton_model(onnx_artifact, repo, TritonOptions(images=_images_options()))
    assert again.version == 2 and (repo / pre_name / "2" / "model.py").is_file()
    assert sorted(p.name for p in (repo / ens_name).iterdir()) == ["1", "config.pbtxt"]
    assert not [p for p in (repo / pre_name).iterdir() if p.name.startswith(".")]


def test_the_vendored_preprocessing_runs_without_torch_or_the_project(onnx_artifact, tmp_path):
    """model.py imports its own copy of wherevit.base (not the installed one) and never torch."""
    import subprocess
    import sys

    import cv2

    res = write_triton_model(onnx_artifact, tmp_path / "repo", TritonOptions(images=_images_options()))
    vdir = res.images.preprocess_version_dir
    png = tmp_path / "a.png"
    png.write_bytes(cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (40, 36, 3), np.uint8))[1].tobytes())
    code = f"""
import importlib.util, json, sys
import numpy as np
sys.modules['torch'] = None  # any `import torch` now fails
spec = importlib.util.spec_from_file_location('model', {str(vdir / 'model.py')!r})
model = importlib.util.module_from_spec(spec); spec.loader.exec_module(model)
pre = json.loads({parse_config(res.images.preprocess_dir / 'config.pbtxt').parameters['wherevit.preprocess'].string_value!r})
conv = model.ImagesToTensors(pre, {{'image_bytes': ('images', 'float32')}}, 1 << 20)
x = conv({{'image_bytes': np.array([[open({str(png)!r}, 'rb').read()]], dtype=object)}})['images']
np.save({str(tmp_path / 'x.npy')!r}, x)
print(sys.modules['wherevit.base.image'].__file__)
"""
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(vdir / "wherevit" / "base" / "image.py")
    with runtime.load(res.model_file) as m:
        np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), m.preprocess([cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)]))


def test_images_ensemble_for_a_two_input_graph(onnx_artifact):
    from wherevit.export.formats.triton_images import ensemble_config_text, preprocess_config_text

    meta = read_sidecar(onnx_artifact)
    a, b = copy.deepcopy(meta.inputs[0]), copy.deepcopy(meta.inputs[0])
    a.name, b.name, b.dtype = "images_a", "images_b", "float16"
    meta.inputs = [a, b]
    pre = text_format.Parse(preprocess_config_text(meta, "pose"), model_config_pb2.ModelConfig())
    ens = text_format.Parse(ensemble_config_text(meta, "pose"), model_config_pb2.ModelConfig())
    assert [i.name for i in pre.input] == [i.name for i in ens.input] == ["image_bytes_a", "image_bytes_b"]
    assert [(o.name, o.data_type) for o in pre.output] == [("images_a", model_config_pb2.TYPE_FP32),
                                                          ("images_b", model_config_pb2.TYPE_FP16)]
    assert json.loads(pre.parameters["wherevit.inputs"].string_value) == {"image_bytes_a": ["images_a", "float32"],
                                                                           "image_bytes_b": ["images_b", "float16"]}
    assert dict(ens.ensemble_scheduling.step[1].input_map) == {"images_a": "images_a", "images_b": "images_b"}


def test_images_models_refusals_leave_the_repository_as_it_was(onnx_artifact, tmp_path, monkeypatch):
    from wherevit.export.formats import triton_images
    from wherevit.export.formats.triton_images import ImagesOptions, TritonImagesError, check_images_models

    repo = tmp_path / "repo"
    (repo / f"{MODEL}_preprocess").mkdir(parents=True)
    (repo / f"{MODEL}_preprocess" / "config.pbtxt").write_text('name: "theirs" backend: "python"\n')
    with pytest.raises(TritonImagesError, match="was not written by wherevit"):
        write_triton_model(onnx_artifact, repo, TritonOptions(images=ImagesOptions()))
    assert not (repo / MODEL).exists() or not any((repo / MODEL).iterdir())  # nothing of the graph was written
    meta = read_sidecar(onnx_artifact)
    meta.inputs[0].shape, meta.inputs[0].layout = [-1, 16], None
    with pytest.raises(TritonImagesError, match="not an NCHW image batch"):
        check_images_models(tmp_path / "other", "m", meta)
    with pytest.raises(TritonImagesError, match="invalid image-model options"):
        ImagesOptions(max_request_mb=0)

    # a failure while writing the image models removes this call's graph version and its own directories
    repo2 = tmp_path / "repo2"
    write_triton_model(onnx_artifact, repo2)
    config_before = (repo2 / MODEL / "config.pbtxt").read_text()

    def failing(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(triton_images, "atomic_write_text", failing)
    with pytest.raises(OSError, match="disk full"):
        write_triton_model(onnx_artifact, repo2, TritonOptions(images=ImagesOptions()))
    assert sorted(p.name for p in repo2.iterdir()) == [MODEL]
    assert sorted(p.name for p in (repo2 / MODEL).iterdir()) == ["1", "config.pbtxt"]
    assert (repo2 / MODEL / "config.pbtxt").read_text() == config_before


def test_cli_triton_images_flag(trained_run, tmp_path):
    from click.testing import CliRunner

    from wherevit.app.cli import main

    repo = tmp_path / "repo"
    r = CliRunner().invoke(main, ["export", str(trained_run), "--format", "triton", "--batch", "1:2:4", "--out", str(repo),
                                  "--triton-images", "--triton-images-instances", "4"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in repo.iterdir()) == [MODEL, f"{MODEL}_images", f"{MODEL}_preprocess"]
    assert parse_config(repo / f"{MODEL}_preprocess" / "config.pbtxt").instance_group[0].count == 4
    assert f"{MODEL}_images" in r.output
