"""Triton Python-backend model: encoded images (BYTES) -> the artifact's preprocessed input tensors.

``wherevit export RUN --format triton --triton-images`` copies this file into the model repository
as ``REPO/<name>_preprocess/<v>/model.py`` and the torch-free modules it imports beside it
(``<v>/wherevit/base/image.py`` and the ``wherevit.base`` modules it imports): the preprocessing that runs in Triton is the code of
the wherevit that wrote the sidecar, whatever is installed in the server. An ensemble
``<name>_images`` feeds its output to the graph ``<name>``, so a client sends image files' bytes.

Triton's stub process runs it with the Python environment Triton is given; it needs ``numpy`` and
``opencv-python-headless`` there, nothing else (no torch, no wherevit install). Everything it does
comes from its ``config.pbtxt`` parameters, read once at start-up:

* ``wherevit.preprocess``         the sidecar's ``preprocess`` record (JSON): size, resize mode, mean/std, ...
* ``wherevit.inputs``             JSON ``{bytes input: [graph input, numpy dtype]}``
* ``wherevit.max_request_bytes``  encoded bytes of all images in one request (as ``wherevit serve --max-request-mb``)
* ``wherevit.max_image_pixels``   the largest image (pixels) a header may declare; refused before decoding

A request with an undecodable or oversized image gets its own INVALID_ARG error (HTTP 400); the other
requests of the same ``execute`` call are answered normally.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

import numpy as np

__all__ = ["ImagesToTensors", "TritonPythonModel", "PARAM_PREPROCESS", "PARAM_INPUTS", "PARAM_MAX_REQUEST_BYTES",
           "PARAM_MAX_IMAGE_PIXELS", "VENDORED_MODULES"]

PARAM_PREPROCESS = "wherevit.preprocess"
PARAM_INPUTS = "wherevit.inputs"
PARAM_MAX_REQUEST_BYTES = "wherevit.max_request_bytes"
PARAM_MAX_IMAGE_PIXELS = "wherevit.max_image_pixels"
# What this model imports of wherevit (copied beside it; the export adds what these import in turn).
VENDORED_MODULES = ("wherevit.base.image",)


class RequestError(ValueError):
    """A client's mistake in one request (Triton: INVALID_ARG, HTTP 400)."""


def _image_module():
    """``wherevit.base.image``, the copy beside this file first (a repository preprocesses with the code that wrote it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isdir(os.path.join(here, "wherevit")) and sys.path[:1] != [here]:
        sys.path.insert(0, here)  # the vendored copy wins over an installed wherevit of another version
    from wherevit.base import image

    return image


class ImagesToTensors:
    """Decode and preprocess one request's encoded images exactly as the sidecar says.

    ``inputs`` maps each BYTES input to the graph input it becomes and that input's numpy dtype,
    e.g. ``{"image_bytes": ("images", "float32")}`` (a pose graph has ``image_bytes_a``/``_b``).
    """

    def __init__(self, preprocess: Mapping[str, Any], inputs: Mapping[str, tuple[str, str]], max_request_bytes: int,
                 max_image_pixels: int | None = None):
        self._image = _image_module()
        self.preprocess = self._image.Preprocess.from_dict(dict(preprocess))
        self.inputs = {k: (str(v[0]), np.dtype(v[1])) for k, v in inputs.items()}
        self.max_request_bytes = int(max_request_bytes)
        self.max_image_pixels = max_image_pixels
        if not self.inputs or self.max_request_bytes < 1:
            raise ValueError(f"{PARAM_INPUTS} must name at least one input and {PARAM_MAX_REQUEST_BYTES} must be >= 1")

    def _decode(self, data: Any, what: str) -> np.ndarray:
        if isinstance(data, str):  # a JSON client's string: its UTF-8 bytes are not an image anyway
            data = data.encode()
        if not isinstance(data, (bytes, bytearray, memoryview, np.ndarray)):
            raise RequestError(f"{what}: expected encoded image bytes, got {type(data).__name__}")
        try:
            # The header is checked against the cap before any pixel is decoded (base/image.py).
            return self._image.decode_image(data, what=what, max_pixels=self.max_image_pixels)
        except self._image.ImageTooLarge as e:
            raise RequestError(f"{what}: the image is larger than {self.max_image_pixels} pixels "
                               f"({PARAM_MAX_IMAGE_PIXELS}); refused before decoding: {e}") from None
        except self._image.ImageDecodeError as e:
            raise RequestError(str(e)) from None

    def __call__(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Preprocessed batches by graph input name, from BYTES tensors of shape [B] or [B, 1]."""
        missing = sorted(set(self.inputs) - set(tensors))
        if missing:
            raise RequestError(f"missing input(s) {missing}; this model takes {sorted(self.inputs)}")
        flat = {k: np.asarray(tensors[k], dtype=object).reshape(-1) for k in self.inputs}
        sizes = {k: len(v) for k, v in flat.items()}
        if min(sizes.values()) < 1:
            raise RequestError(f"no images in {sizes}")
        if len(set(sizes.values())) != 1:
            raise RequestError(f"inputs have different numbers of images: {sizes}")
        total = sum(len(b) for v in flat.values() for b in v if isinstance(b, (bytes, bytearray, str)))
        if total > self.max_request_bytes:
            raise RequestError(f"{total} bytes of encoded images in one request, more than {self.max_request_bytes} "
                               f"({PARAM_MAX_REQUEST_BYTES}); send fewer or smaller images per request")
        out = {}
        for name, (graph_input, dtype) in self.inputs.items():
            rgb = [self._decode(b, f"{name}[{i}]") for i, b in enumerate(flat[name])]
            out[graph_input] = self.preprocess(rgb).astype(dtype, copy=False)
        return out

    @classmethod
    def from_parameters(cls, params: Mapping[str, Any]) -> "ImagesToTensors":
        """From Triton's model-config ``parameters`` (``{key: {"string_value": ...}}``)."""
        value = lambda k: params[k]["string_value"] if isinstance(params.get(k), dict) else params.get(k)
        for key in (PARAM_PREPROCESS, PARAM_INPUTS, PARAM_MAX_REQUEST_BYTES):
            if value(key) in (None, ""):
                raise ValueError(f"config.pbtxt: parameter {key!r} is missing (re-export with --triton-images)")
        pixels = value(PARAM_MAX_IMAGE_PIXELS)
        return cls(json.loads(value(PARAM_PREPROCESS)), {k: tuple(v) for k, v in json.loads(value(PARAM_INPUTS)).items()},
                   int(value(PARAM_MAX_REQUEST_BYTES)), int(pixels) if pixels not in (None, "") else None)


class TritonPythonModel:
    """Triton's Python-backend interface: ``initialize(args)``, ``execute(requests) -> responses`` (same
    length and order, an error per request), ``finalize()``."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils  # provided by Triton's stub process

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        try:
            self.convert = ImagesToTensors.from_parameters(config.get("parameters", {}))
        except ImportError as e:
            raise RuntimeError(f"{config.get('name')}: the Python environment of Triton's Python backend needs numpy and "
                               f"opencv-python-headless ({e}); install them there or set EXECUTION_ENV_PATH") from e

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                tensors = {}
                for name in self.convert.inputs:
                    t = self.pb.get_input_tensor_by_name(request, name)
                    if t is not None:
                        tensors[name] = t.as_numpy()
                out = self.convert(tensors)
                responses.append(self.pb.InferenceResponse(output_tensors=[self.pb.Tensor(k, v) for k, v in out.items()]))
            except RequestError as e:
                responses.append(self.pb.InferenceResponse(error=self.pb.TritonError(str(e), self.pb.TritonError.INVALID_ARG)))
            except Exception as e:  # a bug, not the client's: answer this request, keep serving the others
                responses.append(self.pb.InferenceResponse(error=self.pb.TritonError(f"{type(e).__name__}: {e}",
                                                                                     self.pb.TritonError.INTERNAL)))
        return responses

    def finalize(self) -> None:
        pass
