"""Backbone + head exported as one graph, served by the runtime and the server like features."""

import cv2
import numpy as np
import pytest
import torch

from wherevit import runtime
from wherevit.base.sidecar import read_sidecar
from wherevit.export.api import ExportRequest, export_artifacts
from wherevit.export.head_models import HeadModel, load_head
from wherevit.train.checkpoint import CheckpointError, load_backbone
from wherevit.train.data.scenes3d import render_pair
from wherevit.train.downstream.fit import HeadTrainConfig, fit_head


@pytest.fixture(scope="module")
def heads(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    backbone = load_backbone(trained_run)[0]
    cfg = HeadTrainConfig(n_train=16, n_test=8, size=32, epochs=2, cache_dir=str(out))
    for task in ("depth", "seg", "pose"):
        fit_head(task, backbone, cfg, progress=False, out_dir=out)
    return out


@pytest.mark.parametrize("task,outputs", [("depth", ["depth"]), ("seg", ["logits", "labels"]), ("pose", ["rotation", "translation"])])
def test_head_graph_matches_pytorch(task, outputs, heads, trained_run, tmp_path):
    res = export_artifacts(ExportRequest(str(trained_run), tmp_path, head=str(heads / f"head_{task}.safetensors"), batch=(1, 2, 4)))
    meta = read_sidecar(res.onnx)
    assert res.onnx.name == f"{task}_fp32.onnx" and meta.task == task and meta.parity["passed"]
    assert meta.output_names == outputs
    pair = render_pair(4, 32)
    head, hmeta = load_head(heads / f"head_{task}.safetensors")
    ref_model = HeadModel(load_backbone(trained_run, dynamic_img_size=False)[0], head, hmeta).eval()
    with runtime.load(res.onnx) as model:
        if task == "pose":
            got = model.predict([pair["a"]["rgb"]] * 3, [pair["b"]["rgb"]] * 3)
            feeds = [torch.from_numpy(model.preprocess([pair[v]["rgb"]] * 3)) for v in "ab"]
        else:
            got = model.predict([pair["a"]["rgb"], pair["b"]["rgb"]])
            feeds = [torch.from_numpy(model.preprocess([pair["a"]["rgb"], pair["b"]["rgb"]]))]
        with torch.no_grad():
            ref = dict(zip(ref_model.output_names, ref_model(*feeds)))
        for name in outputs:
            if name == "labels":
                assert (got[name] == ref[name].numpy()).mean() > 0.99
            else:
                np.testing.assert_allclose(got[name], ref[name].numpy(), rtol=1e-4, atol=1e-4)
    if task == "depth":
        assert got["depth"].shape == (2, 32, 32)
    if task == "pose":
        R = got["rotation"]
        np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-4)


def test_pose_artifact_needs_two_image_sets(heads, trained_run, tmp_path):
    res = export_artifacts(ExportRequest(str(trained_run), tmp_path, head=str(heads / "head_pose.safetensors"), batch=(1, 2, 4)))
    with runtime.load(res.onnx) as model:
        with pytest.raises(ValueError, match="takes 2 image set"):
            model.predict([np.zeros((32, 32, 3), np.uint8)])


def test_a_head_for_another_width_is_refused(heads, tmp_path):
    with pytest.raises(CheckpointError, match="head for width 64"):
        export_artifacts(ExportRequest("vit_tiny_patch16_224", tmp_path, head=str(heads / "head_depth.safetensors"), imgsz=32))


def test_server_serves_a_two_input_pose_graph(heads, trained_run, tmp_path):
    th = pytest.importorskip("tritonclient.http")
    from helpers import Server

    res = export_artifacts(ExportRequest(str(trained_run), tmp_path, head=str(heads / "head_pose.safetensors"), batch=(1, 2, 4)))
    s = Server(res.onnx)
    try:
        c = th.InferenceServerClient(s.url)
        # served under the same default name a Triton repository gives it: the model name plus the task
        md = c.get_model_metadata("vit_tiny_patch16_224_pose")
        assert [i["name"] for i in md["inputs"]] == ["images_a", "images_b"]
        xa, xb = (np.random.default_rng(i).standard_normal((2, 3, 32, 32)).astype(np.float32) for i in (1, 2))
        ins = []
        for name, x in (("images_a", xa), ("images_b", xb)):
            inp = th.InferInput(name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            ins.append(inp)
        r = c.infer("vit_tiny_patch16_224_pose", ins)
        with runtime.load(res.onnx) as model:
            ref = model.run_inputs({"images_a": xa, "images_b": xb})
        np.testing.assert_allclose(r.as_numpy("rotation"), ref["rotation"], rtol=1e-5, atol=1e-5)
        assert [i["name"] for i in c.get_model_metadata("vit_tiny_patch16_224_pose_images")["inputs"]] == ["image_bytes_a", "image_bytes_b"]
        # encoded pairs through the _images model: each input decoded and preprocessed, rows kept in order
        pairs = [render_pair(s, 48) for s in (3, 4)]
        ins = []
        for key in ("a", "b"):
            pngs = [cv2.imencode(".png", cv2.cvtColor(p[key]["rgb"], cv2.COLOR_RGB2BGR))[1].tobytes() for p in pairs]
            inp = th.InferInput(f"image_bytes_{key}", [len(pngs)], "BYTES")
            inp.set_data_from_numpy(np.array(pngs, dtype=object))
            ins.append(inp)
        r = c.infer("vit_tiny_patch16_224_pose_images", ins)
        with runtime.load(res.onnx) as model:
            ref = model.predict([p["a"]["rgb"] for p in pairs], [p["b"]["rgb"] for p in pairs])
        np.testing.assert_allclose(r.as_numpy("rotation"), ref["rotation"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(r.as_numpy("translation"), ref["translation"], rtol=1e-5, atol=1e-5)
        assert not np.allclose(r.as_numpy("translation")[0], r.as_numpy("translation")[1])  # two different pairs
    finally:
        s.stop()


@pytest.mark.parametrize("task,inputs,outputs", [
    ("depth", ["images"], {"depth": [-1, -1]}),  # the sidecar's shapes: per-pixel maps are "input resolution"
    ("seg", ["images"], {"logits": None, "labels": [-1, -1]}),
    ("pose", ["images_a", "images_b"], {"rotation": [3, 3], "translation": [3]}),
])
def test_head_graphs_become_triton_models(task, inputs, outputs, heads, trained_run, tmp_path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    from wherevit.export.formats.triton import write_triton_model

    res = export_artifacts(ExportRequest(str(trained_run), tmp_path, head=str(heads / f"head_{task}.safetensors"), batch=(1, 2, 4)))
    out = write_triton_model(res.onnx, tmp_path / "repo")
    cfg = text_format.Parse(out.config.read_text(), model_config_pb2.ModelConfig())
    assert cfg.name == f"vit_tiny_patch16_224_{task}" and cfg.max_batch_size == 4
    assert [i.name for i in cfg.input] == inputs and all(list(i.dims) == [3, 32, 32] for i in cfg.input)
    assert [o.name for o in cfg.output] == list(outputs)
    for o in cfg.output:
        if outputs[o.name] is not None:
            assert list(o.dims) == outputs[o.name], o.name
    if task == "seg":
        assert [o.data_type for o in cfg.output] == [model_config_pb2.TYPE_FP32, model_config_pb2.TYPE_INT64]
    assert cfg.parameters["wherevit.task"].string_value == task


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt_rtx") is None, reason="tensorrt_rtx is not installed")
@pytest.mark.parametrize("task", ["depth", "pose"])
def test_head_engines_build_with_tensorrt_rtx(task, heads, trained_run, tmp_path):
    res = export_artifacts(ExportRequest(str(trained_run), tmp_path, format="engine", head=str(heads / f"head_{task}.safetensors"),
                                         batch=(1, 2, 4), format_options={"engine": {"trt_lib": "tensorrt_rtx", "compute_capabilities": ("SM89",)}}))
    meta = read_sidecar(res.engine)
    assert res.engine.name == f"{task}_fp32.engine" and meta.task == task
    assert meta.engine.profile.inputs == (["images_a", "images_b"] if task == "pose" else ["images"])
