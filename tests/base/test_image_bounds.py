"""Decoded-size bounds read from the header before any pixel is decoded, and the float-range check."""

import struct
import zlib

import cv2
import numpy as np
import pytest
from helpers import bomb_png
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wherevit.base import image as image_mod
from wherevit.base.image import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageDecodeError,
    ImageTooLarge,
    UnsupportedImageFormat,
    decode_image,
    read_image,
    read_image_header,
    to_rgb_uint8,
)


def _no_decoder(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the decoder was called")

    monkeypatch.setattr(image_mod.cv2, "imdecode", refuse)


def test_the_24000_square_png_is_refused_from_its_header_without_decoding(monkeypatch, tmp_path):
    bomb = bomb_png(24000, 24000)  # 0.6 MB on the wire, 576 MB of pixels (1.7 GB as RGB) once decoded
    assert len(bomb) < 1 << 20 and read_image_header(bomb).pixels == 576_000_000
    _no_decoder(monkeypatch)  # memory bound: nothing is decoded at all
    with pytest.raises(ImageTooLarge, match=r"req\[0\]: PNG of 24000x24000 = 576,000,000 pixels exceeds the 67,108,864-pixel limit"):
        decode_image(bomb, what="req[0]")
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(ImageTooLarge, match="bomb.png"):
        read_image(tmp_path / "bomb.png")
    with pytest.raises(ImageTooLarge, match="exceeds the 1,000-pixel limit"):  # the cap is the caller's
        decode_image(bomb_png(40, 30), max_pixels=1000)


def test_the_cap_is_inclusive_and_none_lifts_it():
    png = bomb_png(40, 25)
    assert decode_image(png, max_pixels=1000).shape == (25, 40, 3)
    with pytest.raises(ImageTooLarge):
        decode_image(png, max_pixels=999)
    assert decode_image(png, max_pixels=None).shape == (25, 40, 3)
    assert DEFAULT_MAX_IMAGE_PIXELS == 8192 * 8192


def _bmp(width: int, height: int, header_size: int = 40) -> bytes:
    """A BMP header with RLE8 compression and an empty pixel stream: tiny on disk, any size declared."""
    if header_size == 12:
        dib = struct.pack("<IHHHH", 12, width, height, 1, 8)
    else:
        dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, 0, 0, 0, 0, 0)
    palette = b"\x00" * 1024
    return b"BM" + struct.pack("<IHHI", 14 + len(dib) + len(palette) + 2, 0, 0, 14 + len(dib) + len(palette)) + dib + palette + b"\x00\x01"


def _jpeg_header(width: int, height: int, garbage: bytes = b"") -> bytes:
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", height, width) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + garbage + b"\xff\xff" + sof + b"\xff\xda\x00\x02"


def _webp_vp8x(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


@pytest.mark.parametrize("data,size", [
    (_bmp(30000, 30000), (30000, 30000)),
    (_bmp(30000, -30000), (30000, 30000)),  # top-down: a negative height is still 30000 rows
    (_bmp(65535, 65535, header_size=12), (65535, 65535)),
    (_jpeg_header(60000, 50000), (60000, 50000)),
    (_jpeg_header(60000, 50000, garbage=b"junk\xff\x00more"), (60000, 50000)),  # libjpeg skips bytes before a marker
    (_webp_vp8x(16_000_000, 9000), (16_000_000, 9000)),
])
def test_every_accepted_format_is_bounded_from_its_header(monkeypatch, data, size):
    hdr = read_image_header(data)
    assert (hdr.width, hdr.height) == size
    _no_decoder(monkeypatch)
    with pytest.raises(ImageTooLarge, match=f"{size[0]}x{size[1]}"):
        decode_image(data, what="x")


@pytest.mark.parametrize("ext,name", [(".tiff", "TIFF"), (".jp2", "JPEG 2000"), (".gif", "GIF"), (".hdr", "Radiance HDR"),
                                      (".pfm", "PNM/PFM"), (".ppm", "PNM/PFM"), (".ras", "Sun raster")])
def test_formats_that_cannot_be_bounded_are_refused_by_name(monkeypatch, ext, name):
    img = np.random.default_rng(0).integers(0, 255, (64, 96, 3)).astype(np.uint8)
    ok, enc = cv2.imencode(ext, img.astype(np.float32) if ext in (".hdr", ".pfm") else img)
    assert ok and cv2.imdecode(enc, cv2.IMREAD_UNCHANGED) is not None  # OpenCV itself would decode it
    _no_decoder(monkeypatch)
    with pytest.raises(UnsupportedImageFormat, match=f"x: {name} images are not accepted .accepted: JPEG, PNG, WebP, BMP"):
        decode_image(enc.tobytes(), what="x")


@pytest.mark.parametrize("data,msg", [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG without an IHDR"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG ends before its frame header"),
    (b"\xff\xd8\xff\xda\x00\x02", "no frame header .SOF. before its scan"),
    (_jpeg_header(10, 0), "height 0"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 14, "start code missing"),
    (b"BM" + b"\x00" * 12 + struct.pack("<I", 20) + b"\x00" * 8, "unknown header size 20"),
])
def test_malformed_headers_fail_closed(data, msg):
    with pytest.raises(ImageDecodeError, match=msg):
        decode_image(data, what="x")


_FORMATS = [".png", ".jpg", ".webp", ".bmp"]


@st.composite
def _mutated_images(draw):
    """A real image in an accepted format (any size, channels, 16-bit PNG, lossy/lossless WebP, progressive JPEG),
    then a few bytes overwritten (mostly in the header) and maybe truncated; some PNGs get a rewritten IHDR
    with a valid CRC, so libpng reads the lie."""
    ext = draw(st.sampled_from(_FORMATS))
    h, w = draw(st.integers(2, 48)), draw(st.integers(2, 48))
    c = draw(st.sampled_from([1, 3] if ext == ".jpg" else [1, 3, 4]))
    deep = ext == ".png" and draw(st.booleans())
    rng = np.random.default_rng(h * 100 + w)
    img = rng.integers(0, 65535 if deep else 255, (h, w, c)[: 2 if c == 1 else 3]).astype(np.uint16 if deep else np.uint8)
    params = {".jpg": [cv2.IMWRITE_JPEG_PROGRESSIVE, int(draw(st.booleans()))],
              ".webp": [cv2.IMWRITE_WEBP_QUALITY, draw(st.sampled_from([60, 101]))]}.get(ext, [])
    data = bytearray(cv2.imencode(ext, img, params)[1].tobytes())
    if ext == ".png" and draw(st.booleans()):
        data[16:24] = struct.pack(">II", draw(st.integers(1, 64)), draw(st.integers(1, 64)))
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    for _ in range(draw(st.integers(0, 4))):
        hi = min(len(data) - 1, 80) if draw(st.booleans()) else len(data) - 1
        data[draw(st.integers(0, hi))] = draw(st.integers(0, 255))
    if draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(1, len(data)))]
    return bytes(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated_images())
def test_the_header_size_is_the_decoded_size_wherever_opencv_decodes(data):
    """The bound is only as good as the agreement between our header reader and OpenCV's decoders: whenever
    OpenCV decodes a (corrupted) image, our reader read that image's header, and its size."""
    try:
        hdr = read_image_header(data)
    except ImageDecodeError:
        hdr = None
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is not None:
        assert hdr is not None, "OpenCV decoded an image whose header we refused"
        assert (img.shape[1], img.shape[0]) == (hdr.width, hdr.height)
        if min(img.shape[:2]) >= 2:  # (a 1-pixel side is refused as no image)
            assert decode_image(data).shape == (hdr.height, hdr.width, 3)


def test_float_images_outside_0_1_are_an_error_that_says_what_to_do():
    img = np.random.default_rng(0).integers(0, 256, (8, 9, 3)).astype(np.float32)  # the astype(np.float32) slip
    with pytest.raises(ImageDecodeError, match=r"image 0: float image values span \[0, 255\].*must be in \[0, 1\]; divide by 255"):
        to_rgb_uint8(img, "RGB", what="image 0")
    with pytest.raises(ImageDecodeError, match=r"span \[-1, 1\].*rescale it to \[0, 1\]"):
        to_rgb_uint8(np.linspace(-1, 1, 48, dtype=np.float32).reshape(4, 4, 3), "RGB")
    # values in [0, 1] and resampling overshoot within one 8-bit step are fine and clip as before
    ok = np.full((4, 4, 3), 1.0 + 0.5 / 255, np.float32)
    ok[0, 0] = -0.5 / 255
    out = to_rgb_uint8(ok, "RGB")
    assert out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]
    assert to_rgb_uint8(np.full((2, 2, 3), 0.5, np.float64), "RGB")[0, 0].tolist() == [128, 128, 128]


def test_16_bit_conversion_rounds_every_value_as_before():
    x = np.arange(65536, dtype=np.uint16).reshape(256, 256, 1).repeat(3, axis=2)
    want = np.floor(x[..., 0].astype(np.float64) / 257.0 + 0.5).astype(np.uint8)  # round(x / 257): 65535 -> 255
    out = to_rgb_uint8(x, "RGB")
    assert np.array_equal(out[..., 0], want) and np.array_equal(out[..., 2], want)
