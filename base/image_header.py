"""An encoded image's format and pixel size, read from its header before anything is decoded.

A 1.7 MB PNG can declare 24000 x 24000 pixels and cost gigabytes once decoded, so the decoded
size is checked first, from the header, against a pixel cap (``check_image_size``). Only the four
formats the project documents (JPEG, PNG, WebP, BMP) are read; every other format OpenCV would
decode (TIFF, JPEG 2000, GIF, AVIF, HDR, PNM/PFM, Sun raster) is refused, because a bound we do
not read from the header is no bound.

Why our own reader and not a library's: Pillow's lazy ``Image.open`` reads only the header for PNG,
JPEG and BMP, but for WebP it builds libwebp's animation decoder, which allocates the canvas, and
its size guard is the process-global ``Image.MAX_IMAGE_PIXELS`` (a per-model cap would fight a
global); OpenCV's ``OPENCV_IO_MAX_IMAGE_PIXELS`` is a process-wide environment variable read once;
``imagesize`` reads BMP heights as signed (a negative, top-down height passes any cap) and loops
on malformed JPEG segment lengths. The four headers are a few fixed fields each; the reader fails
closed (anything it cannot parse is refused) and a property test checks that wherever OpenCV
decodes a (mutated) image, the size read here is the size decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wherevit.base.errors import WherevitError

__all__ = ["ImageHeader", "ACCEPTED_FORMATS", "DEFAULT_MAX_IMAGE_PIXELS", "ImageDecodeError", "ImageHeaderError", "UnsupportedImageFormat",
           "ImageTooLarge", "image_format", "read_image_header", "check_image_size"]

ACCEPTED_FORMATS = ("JPEG", "PNG", "WebP", "BMP")
# 8192 x 8192: every DSLR and phone photo (<= 61 MP) passes; one decoded image costs at most
# 64 Mi x 8 bytes (16-bit RGBA) = 512 MiB before it is resized, so a server's decode memory is
# bounded by (decode workers) x that. Raise it with ``max_image_pixels`` / ``--max-image-pixels``.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192

# Signatures of formats OpenCV decodes but we refuse: named in the error instead of "not an image".
_REFUSED = ((b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "BigTIFF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
            (b"\xff\x4f\xff\x51", "JPEG 2000"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"#?RADIANCE", "Radiance HDR"),
            (b"#?RGBE", "Radiance HDR"), (b"\x59\xa6\x6a\x95", "Sun raster"), (b"\x76\x2f\x31\x01", "OpenEXR"))


class ImageDecodeError(WherevitError, ValueError):
    """An image file or buffer that cannot be decoded (corrupt, truncated, refused format or size).

    Every error below is one, so one ``except ImageDecodeError`` catches every refused image."""


class ImageHeaderError(ImageDecodeError):
    """A buffer whose header cannot be read as one of the accepted formats."""


class UnsupportedImageFormat(ImageHeaderError):
    """An image format we do not decode (its decoded size cannot be bounded from our header reader)."""


class ImageTooLarge(ImageHeaderError):
    """An image whose header declares more pixels than the cap allows (refused before decoding)."""


@dataclass(frozen=True)
class ImageHeader:
    format: str  # one of ACCEPTED_FORMATS
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def image_format(data: bytes | memoryview) -> str | None:
    """The accepted format ``data`` starts with (by signature, as OpenCV picks its decoder), else None."""
    head = bytes(data[:16])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head.startswith(b"BM"):
        return "BMP"
    return None


def _unsupported(data: bytes | memoryview) -> UnsupportedImageFormat:
    head = bytes(data[:16])
    named = next((name for sig, name in _REFUSED if head.startswith(sig)), None)
    if named is None and head[:1] == b"P" and head[1:2] in b"123456fF" and len(head) > 2 and head[2:3].isspace():
        named = "PNM/PFM"
    if named is None and head[4:8] == b"ftyp":
        named = "AVIF/HEIF"
    if named is None:
        return UnsupportedImageFormat(f"not a decodable image (no {', '.join(ACCEPTED_FORMATS)} signature)")
    return UnsupportedImageFormat(f"{named} images are not accepted (accepted: {', '.join(ACCEPTED_FORMATS)}; "
                                  "the decoded size of others is not bounded)")


def _png(d: memoryview) -> tuple[int, int]:
    # The first chunk must be IHDR (13 bytes): width, height as big-endian uint32 (PNG spec 11.2.2).
    if len(d) < 24 or bytes(d[8:16]) != b"\x00\x00\x00\rIHDR":
        raise ImageHeaderError("PNG without an IHDR chunk first")
    w, h = struct.unpack_from(">II", d, 16)
    return w, h


# Start-of-frame markers carry the size (ITU T.81 B.2.2); C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field


def _jpeg(d: memoryview) -> tuple[int, int]:
    """Walk the marker segments the way libjpeg does (``next_marker``: bytes before an 0xFF and 0xFF00 are
    skipped) up to the first frame header; a scan or the end before it means there is no size to read."""
    i, n = 2, len(d)
    while True:
        while i < n and d[i] != 0xFF:  # garbage before a marker (libjpeg warns and skips it)
            i += 1
        while i < n and d[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            raise ImageHeaderError("JPEG ends before its frame header (SOF)")
        marker = d[i]
        i += 1
        if marker == 0x00 or marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):
            raise ImageHeaderError("JPEG has no frame header (SOF) before its scan")
        if i + 2 > n:
            raise ImageHeaderError("JPEG ends inside a segment length")
        (length,) = struct.unpack_from(">H", d, i)
        if marker in _SOF:
            if length < 8 or i + 7 > n:
                raise ImageHeaderError("JPEG frame header (SOF) is truncated")
            h, w = struct.unpack_from(">HH", d, i + 3)  # after length and sample precision
            if h == 0:
                raise ImageHeaderError("JPEG height 0 (defined later by a DNL marker) is not supported")
            return w, h
        i += max(length, 2)  # libjpeg skips length - 2 bytes when that is positive, else nothing


def _webp(d: memoryview) -> tuple[int, int]:
    # RIFF container, then one of three first chunks (WebP container spec).
    if len(d) < 30:
        raise ImageHeaderError("WebP header is truncated")
    chunk = bytes(d[12:16])
    if chunk == b"VP8X":  # extended: 24-bit canvas width-1, height-1; frames and tiles live on that canvas
        w = int.from_bytes(d[24:27], "little") + 1
        h = int.from_bytes(d[27:30], "little") + 1
        return w, h
    if chunk == b"VP8 ":  # lossy key frame: 3-byte tag, start code, 14-bit width and height (RFC 6386 9.1)
        if bytes(d[23:26]) != b"\x9d\x01\x2a":
            raise ImageHeaderError("WebP (VP8) key frame start code missing")
        w, h = struct.unpack_from("<HH", d, 26)
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2F, then 14-bit width-1, 14-bit height-1
        if d[20] != 0x2F:
            raise ImageHeaderError("WebP (VP8L) signature missing")
        (bits,) = struct.unpack_from("<I", d, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise ImageHeaderError(f"WebP with an unknown first chunk {chunk!r}")


def _bmp(d: memoryview) -> tuple[int, int]:
    # 14-byte file header, then the DIB header: its size says its kind (as OpenCV's BMP reader reads it).
    if len(d) < 26:
        raise ImageHeaderError("BMP header is truncated")
    (size,) = struct.unpack_from("<I", d, 14)
    if size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit width and height
        w, h = struct.unpack_from("<HH", d, 18)
        return w, h
    if size >= 36:  # BITMAPINFOHEADER and later (and OS/2 v2): signed 32-bit; a negative height is top-down
        w, h = struct.unpack_from("<ii", d, 18)
        if w <= 0:
            raise ImageHeaderError(f"BMP width {w}")
        return w, abs(h)
    raise ImageHeaderError(f"BMP with an unknown header size {size}")


_READERS = {"PNG": _png, "JPEG": _jpeg, "WebP": _webp, "BMP": _bmp}


def read_image_header(data: bytes | bytearray | memoryview) -> ImageHeader:
    """Format and size of an encoded JPEG/PNG/WebP/BMP image from its header (nothing is decoded).

    Raises ``UnsupportedImageFormat`` for any other format, ``ImageHeaderError`` for a header that
    cannot be read (truncated, malformed) or declares an empty image."""
    d = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
    fmt = image_format(d)
    if fmt is None:
        raise _unsupported(d)
    w, h = _READERS[fmt](d)
    if w < 1 or h < 1:
        raise ImageHeaderError(f"{fmt} header declares an empty {w}x{h} image")
    return ImageHeader(fmt, w, h)


def check_image_size(data: bytes | bytearray | memoryview, max_pixels: int | None) -> ImageHeader:
    """``read_image_header``, then ``ImageTooLarge`` naming the size and the cap if it declares more than
    ``max_pixels`` (None: no cap)."""
    header = read_image_header(data)
    if max_pixels is not None and header.pixels > max_pixels:
        raise ImageTooLarge(f"{header.format} of {header.width}x{header.height} = {header.pixels:,} pixels exceeds the "
                            f"{max_pixels:,}-pixel limit (max_image_pixels; `wherevit serve --max-image-pixels`); "
                            "downscale it before sending, or raise the limit")
    return header
