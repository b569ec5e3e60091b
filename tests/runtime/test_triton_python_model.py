"""The Triton Python-backend preprocessing model (runtime/triton_python_model.py) without a server.

The real server runs it in tests/export/test_triton_server.py; here its logic is pinned on its own,
with a stand-in for ``triton_python_backend_utils`` that records what ``execute`` answers.
"""

from __future__ import annotations

import json
import sys
import types

import cv2
import numpy as np
import pytest

from wherevit.base.image import Preprocess, decode_image
from wherevit.runtime.triton_python_model import ImagesToTensors, RequestError, TritonPythonModel

# Not the defaults anywhere: a model that ignored the config and used defaults would differ.
PRE = {"size": [24, 40], "mean": [0.1, 0.5, 0.9], "std": [0.3, 0.2, 0.1], "resize": "shorter_center",
       "interpolation": "area", "color_order": "BGR", "layout": "NCHW"}


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


@pytest.fixture
def blobs() -> list[bytes]:
    rng = np.random.default_rng(3)
    return [_png(rng.integers(0, 256, (50, 30, 3), np.uint8)), _png(rng.integers(0, 256, (17, 64), np.uint8)),
            _png(rng.integers(0, 65536, (40, 40, 4), np.uint16))]


def test_images_become_the_sidecars_tensor(blobs):
    conv = ImagesToTensors(PRE, {"image_bytes": ("images", "float32")}, max_request_bytes=1 << 20)
    want = Preprocess.from_dict(PRE)([decode_image(b) for b in blobs])
    assert want.shape == (3, 3, 24, 40)
    for shape in ((3,), (3, 1)):  # Triton's [B, 1] and a flat [B]
        got = conv({"image_bytes": np.array(blobs, dtype=object).reshape(shape)})
        assert list(got) == ["images"] and got["images"].dtype == np.float32
        np.testing.assert_array_equal(got["images"], want)
    # against a hand-made pixel: BGR order, shorter side to 40 then centre crop, per-channel mean/std
    flat = np.zeros((24, 40, 3), np.uint8)
    flat[:] = (10, 100, 200)  # RGB
    out = conv({"image_bytes": np.array([[_png(flat[..., ::-1])]], dtype=object)})["images"][0, :, 0, 0]  # PNG stores BGR
    expected = (np.array([200, 100, 10]) / 255 - np.array(PRE["mean"])) / np.array(PRE["std"])
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_two_image_inputs_and_half_precision(blobs):
    conv = ImagesToTensors(PRE, {"image_bytes_a": ("images_a", "float16"), "image_bytes_b": ("images_b", "float16")},
                           max_request_bytes=1 << 20)
    got = conv({"image_bytes_a": np.array(blobs[:2], dtype=object), "image_bytes_b": np.array(blobs[1:], dtype=object)})
    pre = Preprocess.from_dict(PRE)
    assert got["images_a"].dtype == np.float16
    np.testing.assert_array_equal(got["images_b"], pre([decode_image(b) for b in blobs[1:]]).astype(np.float16))
    with pytest.raises(RequestError, match="different numbers of images"):
        conv({"image_bytes_a": np.array(blobs[:2], dtype=object), "image_bytes_b": np.array(blobs[:1], dtype=object)})
    with pytest.raises(RequestError, match=r"missing input\(s\) \['image_bytes_b'\]"):
        conv({"image_bytes_a": np.array(blobs[:1], dtype=object)})


def test_bad_requests_name_the_image_and_the_bound(blobs):
    conv = ImagesToTensors(PRE, {"image_bytes": ("images", "float32")}, max_request_bytes=sum(map(len, blobs)))
    conv({"image_bytes": np.array(blobs, dtype=object)})  # exactly at the bound: accepted
    with pytest.raises(RequestError, match=rf"{sum(map(len, blobs)) + 1} bytes of encoded images in one request, more than"):
        conv({"image_bytes": np.array([*blobs, b"x"], dtype=object)})
    for bad, message in ((b"", r"image_bytes\[1\]: empty"), (b"GIF89a....", r"image_bytes\[1\]: GIF images are not accepted"),
                         (b"\x00garbage", r"image_bytes\[1\]: not a decodable image"),
                         (_png(np.zeros((1, 9, 3), np.uint8)), r"image_bytes\[1\]: a 1x9 image has no pixels"),
                         (7, r"image_bytes\[1\]: expected encoded image bytes, got int")):
        with pytest.raises(RequestError, match=message):
            conv({"image_bytes": np.array([blobs[0], bad], dtype=object)})
    with pytest.raises(RequestError, match="no images"):
        conv({"image_bytes": np.empty((0, 1), dtype=object)})


class _FakeTensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class _FakeError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message, code=None):
        self.message, self.code = message, code


class _FakeResponse:
    def __init__(self, output_tensors=(), error=None):
        self.tensors, self.error = {t.name: t.array for t in output_tensors}, error


@pytest.fixture
def pb_utils(monkeypatch):
    """A stand-in for Triton's ``triton_python_backend_utils`` with the calls the model makes."""
    mod = types.ModuleType("triton_python_backend_utils")
    mod.Tensor, mod.TritonError, mod.InferenceResponse = _FakeTensor, _FakeError, _FakeResponse
    mod.get_input_tensor_by_name = lambda request, name: request.get(name)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", mod)
    return mod


def test_execute_answers_every_request_in_order_with_its_own_error(pb_utils, blobs):
    params = {"wherevit.preprocess": json.dumps(PRE), "wherevit.inputs": json.dumps({"image_bytes": ["images", "float32"]}),
              "wherevit.max_request_bytes": "100000", "wherevit.max_image_pixels": "1000000"}
    model = TritonPythonModel()
    model.initialize({"model_config": json.dumps({"name": "m_preprocess",
                                                  "parameters": {k: {"string_value": v} for k, v in params.items()}})})
    t = lambda *bs: _FakeTensor("image_bytes", np.array([[b] for b in bs], dtype=object))
    responses = model.execute([{"image_bytes": t(blobs[0], blobs[1])}, {"image_bytes": t(b"junk")}, {}, {"image_bytes": t(blobs[2])}])
    assert len(responses) == 4
    pre = Preprocess.from_dict(PRE)
    np.testing.assert_array_equal(responses[0].tensors["images"], pre([decode_image(blobs[0]), decode_image(blobs[1])]))
    assert responses[1].error.code == "INVALID_ARG" and "image_bytes[0]: not a decodable image" in responses[1].error.message
    assert responses[2].error.code == "INVALID_ARG" and "missing input(s) ['image_bytes']" in responses[2].error.message
    np.testing.assert_array_equal(responses[3].tensors["images"], pre([decode_image(blobs[2])]))


def test_a_config_without_the_parameters_is_refused_at_start_up(pb_utils):
    with pytest.raises(ValueError, match="'wherevit.inputs' is missing"):
        TritonPythonModel().initialize({"model_config": json.dumps({"parameters": {
            "wherevit.preprocess": {"string_value": json.dumps(PRE)}, "wherevit.max_request_bytes": {"string_value": "10"}}})})
