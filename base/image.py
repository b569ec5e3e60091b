"""Image decoding and preprocessing shared by training, export parity and the runtime (torch-free).

One decoder for every entry point, so a model sees the same pixels at training time, in the export
parity check and behind the server: OpenCV decode, then conversion to 8-bit RGB whatever the file
held (grayscale, RGBA, 16-bit).

Every encoded image is bounded before a pixel is decoded: its header (``base/image_header.py``)
must be JPEG, PNG, WebP or BMP and declare at most ``max_pixels`` pixels (default
``DEFAULT_MAX_IMAGE_PIXELS``). This module is the public decoding API of the torch-free base layer
(``decode_image``, ``read_image``, ``to_rgb_uint8``, ``Preprocess``), also used by the Triton
Python-backend model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from wherevit.base.errors import InvalidRequest
from wherevit.base.image_header import (
    ACCEPTED_FORMATS,
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageDecodeError,
    ImageHeader,
    ImageHeaderError,
    ImageTooLarge,
    UnsupportedImageFormat,
    check_image_size,
    read_image_header,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDecodeError",
    "ImageTooLarge",
    "UnsupportedImageFormat",
    "ImageHeader",
    "ACCEPTED_FORMATS",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "FLOAT_RANGE_TOLERANCE",
    "read_image_header",
    "check_encoded_image",
    "decode_image",
    "read_image",
    "to_rgb_uint8",
    "check_image_array",
    "MIN_IMAGE_SIDE",
    "Preprocess",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# A side of one pixel has no spatial structure: resizing it to the model's size would feed a constant
# image along that axis and return confident features of nothing, so such images are refused.
MIN_IMAGE_SIDE = 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("stretch", "shorter_center")
INTERPOLATIONS = ("area", "linear", "cubic")
# Float images hold values in [0, 1]; up to one 8-bit step beyond is resampling overshoot and is clipped.
# More than that is data on another scale ([0, 255] after ``astype(np.float32)``), which clipping would
# turn into a white image without a word.
FLOAT_RANGE_TOLERANCE = 1.0 / 255.0



def check_image_array(img: np.ndarray, what: str = "image") -> None:
    """Refuse arrays that are not an image with pixels: wrong rank, empty or one-pixel sides, a channel
    count other than 1/3/4, an unsupported dtype, or NaN/infinity in float data (``ImageDecodeError``)."""
    if not isinstance(img, np.ndarray):
        raise ImageDecodeError(f"{what}: expected a numpy array, got {type(img).__name__}")
    if img.ndim not in (2, 3):
        raise ImageDecodeError(f"{what}: expected an HxW or HxWxC image, got shape {img.shape}")
    if img.ndim == 3 and img.shape[2] not in (1, 3, 4):
        raise ImageDecodeError(f"{what}: unsupported channel count {img.shape[2]} in shape {img.shape} (1, 3 or 4)")
    h, w = img.shape[:2]
    if h < MIN_IMAGE_SIDE or w < MIN_IMAGE_SIDE:
        raise ImageDecodeError(f"{what}: a {h}x{w} image has no pixels to look at (each side must be >= {MIN_IMAGE_SIDE})")
    if img.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise ImageDecodeError(f"{what}: unsupported image dtype {img.dtype} (uint8, uint16, or float in [0, 1])")
    if img.dtype.kind == "f":
        if not np.isfinite(img).all():
            raise ImageDecodeError(f"{what}: {int(np.size(img) - np.count_nonzero(np.isfinite(img)))} non-finite pixel value(s) (NaN or infinity)")
        lo, hi = float(img.min()), float(img.max())
        if lo < -FLOAT_RANGE_TOLERANCE or hi > 1.0 + FLOAT_RANGE_TOLERANCE:
            hint = ("divide by 255 (8-bit data) or 65535 (16-bit data), or pass the uint8/uint16 array itself"
                    if lo >= -FLOAT_RANGE_TOLERANCE else "rescale it to [0, 1]")
            raise ImageDecodeError(f"{what}: float image values span [{lo:g}, {hi:g}], but float images must be in [0, 1]; {hint}")


def to_rgb_uint8(img: np.ndarray, color_order: str = "BGR", what: str = "image") -> np.ndarray:
    """Convert a decoded image (HxW, HxWx1/3/4; uint8/uint16/float) to contiguous HxWx3 uint8 RGB.

    ``color_order`` says how a 3- or 4-channel input is ordered ("BGR" as OpenCV decodes, or
    "RGB"). Alpha is dropped (composited on black would tint edges; ViTs were trained on opaque
    images). 16-bit data is scaled by 1/257 so 65535 maps to 255. Degenerate arrays are refused
    (see ``check_image_array``) instead of reaching an OpenCV assertion.
    """
    check_image_array(img, what)
    if img.dtype == np.uint16:  # round(x / 257) straight to uint8: no full-size float temporaries
        img = cv2.convertScaleAbs(img, alpha=1.0 / 257.0)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageDecodeError(f"unsupported image dtype {img.dtype}")
    if img.ndim == 2 or img.shape[2] == 1:
        return np.ascontiguousarray(cv2.cvtColor(img.reshape(img.shape[0], img.shape[1]), cv2.COLOR_GRAY2RGB))
    c = img.shape[2]
    if c == 4:
        code = cv2.COLOR_BGRA2RGB if color_order.upper() == "BGR" else cv2.COLOR_RGBA2RGB
        return np.ascontiguousarray(cv2.cvtColor(img, code))
    if c == 3:
        if color_order.upper() == "BGR":
            return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        return np.ascontiguousarray(img)
    raise ImageDecodeError(f"unsupported channel count {c}")


def check_encoded_image(data: bytes | bytearray | memoryview | np.ndarray, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                        what: str = "image buffer") -> ImageHeader:
    """The header of an encoded image, checked: an accepted format declaring at most ``max_pixels`` pixels.

    Raises ``ImageTooLarge`` / ``UnsupportedImageFormat`` / ``ImageDecodeError`` naming ``what``; nothing is decoded."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    if buf.size == 0:
        raise ImageDecodeError(f"{what}: empty")
    try:
        return check_image_size(memoryview(buf), max_pixels)
    except (ImageTooLarge, UnsupportedImageFormat) as e:
        raise type(e)(f"{what}: {e}") from None
    except ImageHeaderError as e:
        raise ImageHeaderError(f"{what}: not a decodable image ({e})") from None


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, what: str = "image buffer",
                 max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode an encoded JPEG/PNG/WebP/BMP image to HxWx3 uint8 RGB.

    The header is checked first (``check_encoded_image``): other formats and images declaring more
    than ``max_pixels`` pixels (None: no cap) are refused before anything is decoded."""
    header = check_encoded_image(data, max_pixels, what)
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:  # OpenCV's own limits and assertions: still the caller's image
        raise ImageDecodeError(f"{what}: not a decodable {header.format} ({str(e).strip().splitlines()[-1]})") from None
    if img is None or img.size == 0:
        raise ImageDecodeError(f"{what}: not a decodable image (corrupt or truncated {header.format})")
    if img.shape[0] * img.shape[1] != header.pixels:  # the decoder read another size than the header: never trust it
        raise ImageDecodeError(f"{what}: {header.format} header says {header.width}x{header.height}, "
                               f"the decoder read {img.shape[1]}x{img.shape[0]}")
    return to_rgb_uint8(img, "BGR", what)


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read and decode an image file to HxWx3 uint8 RGB; raises ``ImageDecodeError`` naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"{path}: cannot read ({e.strerror or e})") from e
    return decode_image(data, what=str(path), max_pixels=max_pixels)


@dataclass(frozen=True)
class Preprocess:
    """The exact preprocessing an artifact expects; recorded in every sidecar.

    ``resize`` is "stretch" (resize to size x size, the training crops' convention) or
    "shorter_center" (resize the shorter side then centre-crop).
    """

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "stretch"
    interpolation: str = "area"  # cv2.INTER_AREA when shrinking, linear when enlarging
    color_order: str = "RGB"
    layout: str = "NCHW"

    def to_dict(self) -> dict:
        return {
            "size": list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "interpolation": self.interpolation,
            "color_order": self.color_order,
            "layout": self.layout,
            "scale": "pixel values / 255, then (x - mean) / std",
        }

    @classmethod
    def from_dict(cls, d: dict, size: tuple[int, int] | None = None) -> "Preprocess":
        """Settings from a sidecar or a checkpoint's ``preprocess`` record (missing keys: the defaults).

        ``size`` overrides the recorded size (export at another resolution). Unknown modes are errors."""
        if not isinstance(d, dict):
            raise InvalidRequest(f"preprocess must be a mapping, got {type(d).__name__}")
        known = {"size", "mean", "std", "resize", "interpolation", "color_order", "layout", "scale"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidRequest(f"preprocess: unknown field(s) {unknown}; known: {sorted(known)}")
        pre = cls(
            size=tuple(int(v) for v in (size or d.get("size", cls.size))),
            mean=tuple(float(v) for v in d.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in d.get("std", IMAGENET_STD)),
            resize=d.get("resize", "stretch"),
            interpolation=d.get("interpolation", "area"),
            color_order=d.get("color_order", "RGB"),
            layout=d.get("layout", "NCHW"),
        )
        pre.validate()
        return pre

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field that no runtime could follow."""
        if len(self.size) != 2 or min(self.size) < 1:
            raise InvalidRequest(f"preprocess.size must be two positive integers, got {list(self.size)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InvalidRequest(f"preprocess.mean/std must be 3 numbers each with std > 0, got {list(self.mean)} / {list(self.std)}")
        for name, value, allowed in (("resize", self.resize, RESIZE_MODES), ("interpolation", self.interpolation, INTERPOLATIONS),
                                     ("color_order", self.color_order, ("RGB", "BGR")), ("layout", self.layout, ("NCHW",))):
            if value not in allowed:
                raise InvalidRequest(f"preprocess.{name} {value!r} is not one of {list(allowed)}")

    def resize_rgb(self, img: np.ndarray) -> np.ndarray:
        """Resize one HxWx3 uint8 RGB image to the model's input size."""
        h, w = self.size
        if self.resize == "shorter_center":
            s = max(h / img.shape[0], w / img.shape[1])
            nh, nw = max(h, round(img.shape[0] * s)), max(w, round(img.shape[1] * s))
            img = _resize(img, nh, nw, self.interpolation)
            y0, x0 = (nh - h) // 2, (nw - w) // 2
            return img[y0 : y0 + h, x0 : x0 + w]
        if self.resize != "stretch":
            raise InvalidRequest(f"unknown resize mode {self.resize!r}")
        return _resize(img, h, w, self.interpolation)

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """HxWx3 uint8 RGB images -> float32 NCHW batch, normalised."""
        if len(images) == 0:
            raise ImageDecodeError("no images to preprocess")
        batch = np.stack([self.resize_rgb(im) for im in images]).astype(np.float32)
        if self.color_order == "BGR":  # a model trained on OpenCV-ordered pixels
            batch = batch[..., ::-1]
        batch *= 1.0 / 255.0
        batch -= np.asarray(self.mean, np.float32)
        batch /= np.asarray(self.std, np.float32)
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def _resize(img: np.ndarray, h: int, w: int, interpolation: str) -> np.ndarray:
    if img.shape[0] == h and img.shape[1] == w:
        return img
    if interpolation == "area":
        shrinking = h < img.shape[0] or w < img.shape[1]
        flag = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    elif interpolation == "linear":
        flag = cv2.INTER_LINEAR
    elif interpolation == "cubic":
        flag = cv2.INTER_CUBIC
    else:
        raise InvalidRequest(f"unknown interpolation {interpolation!r}")
    return cv2.resize(img, (w, h), interpolation=flag)
