"""Encoded images -> a preprocessed batch on a fixed pool of decode threads: the server's decode memory bound.

Every image's header is checked first (format and pixel cap, ``base/image_header.py``), all of a
request's images before any is decoded, so a request carrying one oversized image costs nothing.
Then each image is decoded and resized to the model's size at once, so a worker holds at most one
full-size image; with ``workers`` threads, decoded pixels in memory stay below
``workers x max_pixels`` (x 8 bytes for 16-bit RGBA, plus its 3-byte RGB copy) whatever the load.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import numpy as np

from wherevit.base.image import Preprocess, check_encoded_image, decode_image

__all__ = ["ImageBatchDecoder"]

T = TypeVar("T")


class ImageBatchDecoder:
    """Decode requests' encoded images on ``workers`` threads, each image refused from its header or
    decoded and resized straight away."""

    def __init__(self, preprocess: Preprocess, max_pixels: int | None, workers: int):
        self.preprocess, self.max_pixels, self.workers = preprocess, max_pixels, workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wherevit-decode")

    def check(self, items: Sequence[bytes], what: str) -> None:
        """Refuse the request if any image's header is not an accepted format within the pixel cap."""
        for i, b in enumerate(items):
            check_encoded_image(b, self.max_pixels, f"{what}[{i}]")

    def decode(self, items: Sequence[bytes], what: str) -> np.ndarray:
        """Encoded images -> the float32 NCHW batch the sidecar's preprocessing makes (checked first)."""
        self.check(items, what)
        # resize_rgb of an image already at the model's size is the identity: same pixels as preprocess(all at once)
        small = [self.preprocess.resize_rgb(decode_image(b, f"{what}[{i}]", self.max_pixels)) for i, b in enumerate(items)]
        return self.preprocess(small)

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run ``fn(*args)`` (which decodes) on the decode pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
