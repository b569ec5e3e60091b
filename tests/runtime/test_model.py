"""The torch-free runtime library: loading, preprocessing, batching, parity with PyTorch."""

import dataclasses
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from wherevit import runtime
from wherevit.base.image import ImageDecodeError
from wherevit.base.sidecar import BatchRange, EngineSection, ModelSection, Sidecar, TensorSpec
from wherevit.runtime.backends import BackendUnavailable, InputError
from wherevit.runtime.backends.tensorrt import EngineMismatch, check_engine_compat
from wherevit.train.backbone import backbone_features
from wherevit.train.checkpoint import load_backbone
from wherevit.train.data.synthetic import render_scene


def test_runtime_imports_without_torch():
    code = ("import sys; import wherevit.runtime, wherevit.runtime.server, wherevit.runtime.grpc_server, wherevit.app.cli; "
            "assert 'torch' not in sys.modules, 'runtime pulled in torch'")
    subprocess.run([sys.executable, "-c", code], check=True)


def _torch_features(run, images_rgb):
    model, _ = load_backbone(run, dynamic_img_size=False)
    x = np.stack([cv2.resize(im, (32, 32), interpolation=cv2.INTER_AREA) for im in images_rgb]).astype(np.float32) / 255
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    with torch.no_grad():
        f = backbone_features(model, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    return f.cls.numpy(), f.patch.numpy()


def test_embed_matches_pytorch_for_every_input_kind(onnx_artifact, trained_run, tmp_path):
    images = [render_scene(100 + i, 48) for i in range(5)]
    ref_cls, ref_patch = _torch_features(trained_run, images)
    paths = []
    for i, im in enumerate(images):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
        paths.append(p)
    with runtime.load(onnx_artifact, backend="ort-cpu") as model:
        for inputs, order in [(images, "RGB"), ([im[..., ::-1] for im in images], "BGR"), (paths, "RGB"),
                              ([p.read_bytes() for p in paths], "RGB")]:
            f = model.embed(inputs, color_order=order)
            np.testing.assert_allclose(f.cls, ref_cls, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(f.patch_tokens, ref_patch, rtol=1e-4, atol=1e-4)
        assert f.patch_grid().shape == (5, 4, 4, 64)
        np.testing.assert_allclose(f["pooled"], ref_patch.mean(1), rtol=1e-4, atol=1e-4)


def test_large_inputs_are_split_and_results_stay_in_order(onnx_artifact):
    with runtime.load(onnx_artifact) as model:
        assert model.max_batch == 8
        x = np.random.default_rng(0).standard_normal((19, 3, 32, 32)).astype(np.float32)
        whole = model.run(x)
        one_by_one = np.concatenate([model.run(x[i : i + 1]).cls for i in range(19)])
        np.testing.assert_allclose(whole.cls, one_by_one, rtol=1e-5, atol=1e-5)
        assert whole.cls.shape == (19, 64)


def test_small_batches_are_padded_only_to_the_profile_minimum(onnx_artifact):
    seen = []
    with runtime.load(onnx_artifact) as model:
        model.batch = dataclasses.replace(model.batch, min=4)
        real = model.backend.infer
        model.backend.infer = lambda feeds: (seen.append(feeds["images"].shape[0]), real(feeds))[1]
        out = model.run(np.zeros((2, 3, 32, 32), np.float32))
    assert seen == [4] and out.cls.shape == (2, 64)


def test_bad_inputs_are_named(onnx_artifact, tmp_path):
    with runtime.load(onnx_artifact) as model:
        with pytest.raises(ImageDecodeError, match="image 0"):
            model.embed([b"definitely not a png"])
        with pytest.raises(InputError, match="looks CHW"):
            model.embed([np.zeros((3, 32, 40), np.uint8)])
        with pytest.raises(InputError, match="dtype float64"):
            model.backend.infer({"images": np.zeros((1, 3, 32, 32))})
        with pytest.raises(InputError, match=r"shape \[1, 3, 16, 16\]"):
            model.backend.infer({"images": np.zeros((1, 3, 16, 16), np.float32)})
        with pytest.raises(InputError, match="batch 9 outside"):
            model.backend.infer({"images": np.zeros((9, 3, 32, 32), np.float32)})
        with pytest.raises(InputError, match="missing"):
            model.backend.infer({"pixels": np.zeros((1, 3, 32, 32), np.float32)})
        with pytest.raises(ImageDecodeError, match="cannot read"):
            model.embed([tmp_path / "nope.jpg"])


_NAN = np.full((8, 8, 3), 0.5, np.float32)
_NAN[2, 3, 1] = np.nan


@pytest.mark.parametrize("image,msg", [
    (np.zeros((0, 32, 3), np.uint8), "a 0x32 image has no pixels"),
    (np.zeros((32, 0), np.uint8), "a 32x0 image has no pixels"),
    (np.zeros((1, 1, 3), np.uint8), "a 1x1 image has no pixels"),
    (np.zeros((1, 40), np.uint8), "a 1x40 image"),
    (np.zeros((32, 32, 0), np.uint8), "channel count 0"),
    (np.zeros((32, 32, 2), np.uint8), "channel count 2"),
    (np.zeros((32,), np.uint8), r"image 0: expected an HxW or HxWxC image, got shape \(32,\)"),
    (np.zeros((8, 8, 3, 1), np.uint8), r"HxW or HxWxC image, got shape \(8, 8, 3, 1\)"),
    (_NAN, "1 non-finite pixel value"),
    (np.full((8, 8), np.inf, np.float64), "64 non-finite pixel value"),
    (np.zeros((8, 8, 3), np.int32), "unsupported image dtype int32"),
])
def test_degenerate_image_arrays_are_refused_by_name(onnx_artifact, image, msg):
    with runtime.load(onnx_artifact) as model:
        with pytest.raises(InputError, match=msg):
            model.embed([image])


def test_degenerate_batches_and_empty_decodes(onnx_artifact):
    with runtime.load(onnx_artifact) as model:
        with pytest.raises(InputError, match="no images given"):
            model.embed(np.zeros((0, 8, 8, 3), np.uint8))
        for shape in ((32,), (1, 2, 8, 8, 3)):
            with pytest.raises(InputError, match=r"HxW, HxWxC or a batch NxHxWxC"):
                model.embed(np.zeros(shape, np.uint8))
        with pytest.raises(InputError, match=r"shape \[0, 3, 32, 32\] has an empty dimension"):
            model.run(np.zeros((0, 3, 32, 32), np.float32))
        bad = np.zeros((2, 3, 32, 32), np.float32)
        bad[1, 1, 1, 1] = np.inf
        with pytest.raises(InputError, match="1 non-finite value"):
            model.run(bad)
        # a 1x1 PNG decodes to one pixel: refused like the array
        with pytest.raises(ImageDecodeError, match="image 0: a 1x1 image"):
            model.embed([cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes()])
        with pytest.raises(ImageDecodeError, match="image 0: empty"):
            model.embed([b""])
        # the smallest accepted image still gives finite features
        assert np.isfinite(model.embed([np.zeros((2, 2, 3), np.uint8)]).cls).all()


def test_unknown_and_unavailable_backends(onnx_artifact):
    with pytest.raises(ValueError, match="unknown backend"):
        runtime.load(onnx_artifact, backend="magic")
    with pytest.raises(BackendUnavailable, match="runs engine artifacts"):
        runtime.load(onnx_artifact, backend="tensorrt")
    reasons = runtime.available_backends(runtime.load(onnx_artifact).meta)
    assert reasons["ort-cpu"] is None


ENGINE_META = Sidecar(
    kind="engine", inputs=[TensorSpec("images", "float32", [-1, 3, 32, 32])], outputs=[TensorSpec("cls", "float32", [-1, 64])],
    preprocess={"size": [32, 32]}, batch=BatchRange(1, 1, 8), precision="fp16", model=ModelSection(checkpoint="runs/qs"),
    engine=EngineSection(library="tensorrt_rtx", version="1.7.1.116", precision="fp16", onnx_precision="fp16",
                         compute_capabilities=["8.6", "8.9"]))


def test_engine_compat_names_both_sides():
    check_engine_compat(ENGINE_META, "1.7.1.116", "8.6")  # compatible: no error
    with pytest.raises(EngineMismatch, match=r"built by tensorrt_rtx 1.7.1.116, this machine has tensorrt_rtx 1.8.0.1.*wherevit export runs/qs"):
        check_engine_compat(ENGINE_META, "1.8.0.1", "8.6")
    with pytest.raises(EngineMismatch, match=r"compute capability 8.6, 8.9, this GPU is 12.0.*--cc 12.0"):
        check_engine_compat(ENGINE_META, "1.7.1.116", "12.0")
    with pytest.raises(EngineMismatch, match="does not support compute capability 9.0"):
        check_engine_compat(ENGINE_META, "1.7.1.116", "9.0")
    with pytest.raises(EngineMismatch, match="not installed"):
        check_engine_compat(ENGINE_META, None, "8.6")


def _gpu_reason():
    from wherevit.runtime.backends.cuda import cuda_unavailable_reason

    return cuda_unavailable_reason()


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_reason() is not None, reason=f"engine execution needs a CUDA GPU: {_gpu_reason()}")
def test_engine_runs_and_matches_onnx(trained_run, onnx_artifact, tmp_path):
    from wherevit.export.api import ExportRequest, export_artifacts

    res = export_artifacts(ExportRequest(str(trained_run), tmp_path, format="engine", batch=(1, 4, 8)))
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    with runtime.load(res.engine, backend="tensorrt") as eng, runtime.load(onnx_artifact, backend="ort-cpu") as ref:
        np.testing.assert_allclose(eng.run(x).cls, ref.run(x).cls, rtol=1e-2, atol=1e-2)
