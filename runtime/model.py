"""``wherevit.runtime.load(path)``: an exported artifact as one object with ``embed(images)``.

The sidecar beside the artifact supplies everything: input name and size, preprocessing
(OpenCV resize, mean/std, colour order), output names, batch range. Inputs larger than the
artifact's max batch are split; a batch smaller than the profile's minimum is padded only up to
that minimum and the padding is dropped from the outputs. An artifact whose sidecar says its outputs
depend on the batch (dynamic INT8 quantisation: activation scales span the batch) is run one image
at a time, so an image's features never depend on what it was sent with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np

from wherevit.base.errors import InvalidRequest
from wherevit.base.image import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, decode_image, read_image, to_rgb_uint8
from wherevit.base.sidecar import Sidecar, read_sidecar
from wherevit.runtime.backends import (
    Backend,
    BackendUnavailable,
    InputError,
    auto_order,
    registered_backends,
)
from wherevit.runtime.backends.base import BACKENDS, unloadable_backends

__all__ = ["Model", "Features", "load", "ImageLike", "available_backends", "batch_dependent", "non_finite_count"]

ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]


@dataclass
class Features:
    """Outputs by name (``cls``, ``patch_tokens``, ``pooled``), plus the patch grid size."""

    outputs: dict[str, np.ndarray]
    grid: tuple[int, int] | None

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]

    def __contains__(self, name: str) -> bool:
        return name in self.outputs

    @property
    def cls(self) -> np.ndarray:
        return self.outputs["cls"]

    @property
    def patch_tokens(self) -> np.ndarray:
        return self.outputs["patch_tokens"]

    def patch_grid(self) -> np.ndarray:
        """Patch tokens as (B, grid_h, grid_w, D), ready for a dense head."""
        if self.grid is None:
            raise InvalidRequest("this artifact has a dynamic input size; reshape patch_tokens with your own grid")
        t = self.patch_tokens
        return t.reshape(t.shape[0], self.grid[0], self.grid[1], t.shape[-1])


def batch_dependent(meta: Sidecar) -> bool:
    """True when an image's outputs depend on its batch-mates (the sidecar's ``quantization.batch_dependent``)."""
    return meta.batch_dependent


def available_backends(meta: Sidecar) -> dict[str, str | None]:
    """Every registered backend -> None if it can run this artifact here, else why not."""
    return {name: cls.unavailable_reason(meta) for name, cls in registered_backends().items()}


class Model:
    """An artifact opened on one backend. Use ``embed`` for images, ``run`` for preprocessed batches.

    ``max_image_pixels`` caps the size an encoded image (path or bytes) may declare in its header; larger
    ones are refused before decoding (``ImageTooLarge``). None lifts the cap (trusted input only)."""

    def __init__(self, artifact: str | os.PathLike, backend: str = "auto", *, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 **backend_opts):
        if max_image_pixels is not None and (not isinstance(max_image_pixels, int) or isinstance(max_image_pixels, bool)
                                             or max_image_pixels < 1):
            raise InvalidRequest(f"max_image_pixels must be a positive integer or None, got {max_image_pixels!r}")
        self.max_image_pixels = max_image_pixels
        self.artifact = Path(artifact)
        self.meta = read_sidecar(self.artifact)
        self.preprocess = self.meta.input_preprocess()
        self.input_names = self.meta.input_names
        self.input_name = self.input_names[0]
        self.task = self.meta.task
        self.output_names = self.meta.output_names
        self.grid = self.meta.grid
        self.batch = self.meta.batch
        self.batch_dependent = batch_dependent(self.meta)
        self.backend = self._open_backend(backend, backend_opts)

    def _open_backend(self, name: str, opts: dict) -> Backend:
        if name != "auto":  # by name: imports that backend's entry point only (a torch backend imports torch when run)
            return BACKENDS.get(name)(self.artifact, self.meta, **opts).activate()
        reasons = []
        for cand in auto_order():
            cls = BACKENDS.get(cand)
            reason = cls.unavailable_reason(self.meta)
            if reason is None:
                return cls(self.artifact, self.meta, **opts).activate()
            reasons.append(f"{cand}: {reason}")
        reasons += unloadable_backends().values()
        raise BackendUnavailable(f"no backend can run {self.artifact.name} here:\n  " + "\n  ".join(reasons))

    def close(self) -> None:
        self.backend.deactivate()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def max_batch(self) -> int:
        return int(self.batch.max)

    def load_images(self, images: Iterable[ImageLike], color_order: str = "RGB") -> list[np.ndarray]:
        """Paths, encoded bytes or HWC arrays (uint8/uint16/float in [0, 1]) -> HWC uint8 RGB.

        ``color_order`` applies to arrays only ("RGB", or "BGR" for OpenCV-loaded arrays);
        files and bytes are decoded to RGB, after their header passed the ``max_image_pixels`` cap.
        A float array outside [0, 1] (e.g. 0-255 data after ``astype(np.float32)``) is an error.
        """
        out = []
        for i, im in enumerate(images):
            if isinstance(im, (str, os.PathLike)):
                out.append(read_image(im, max_pixels=self.max_image_pixels))
            elif isinstance(im, (bytes, bytearray, memoryview)):
                out.append(decode_image(im, what=f"image {i}", max_pixels=self.max_image_pixels))
            elif isinstance(im, np.ndarray):
                if im.ndim == 3 and im.shape[0] in (1, 3, 4) and im.shape[-1] not in (1, 3, 4):
                    raise InputError(f"image {i}: shape {im.shape} looks CHW; pass HWC arrays")
                try:
                    out.append(to_rgb_uint8(im, color_order, what=f"image {i}"))
                except ImageDecodeError as e:  # a bad array is the caller's input, not a file problem
                    raise InputError(str(e)) from None
            else:
                raise InputError(f"image {i}: unsupported type {type(im).__name__} (path, bytes or HWC array)")
        return out

    def embed(self, images: Sequence[ImageLike] | ImageLike, color_order: str = "RGB") -> Features:
        """Features for images given as paths, encoded bytes or HWC arrays (see ``load_images``)."""
        if isinstance(images, np.ndarray) and images.ndim not in (2, 3, 4):
            raise InputError(f"an image array must be HxW, HxWxC or a batch NxHxWxC, got shape {images.shape}")
        if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) or (
                isinstance(images, np.ndarray) and images.ndim in (2, 3)):
            images = [images]
        rgb = self.load_images(images, color_order)
        if not rgb:
            raise InputError("no images given")
        return self.run(self.preprocess(rgb))

    def predict(self, images: Sequence[ImageLike], images_b: Sequence[ImageLike] | None = None, color_order: str = "RGB") -> Features:
        """Head outputs (depth, seg logits/labels, or pose from ``images`` and ``images_b``) for raw images."""
        groups = [images] if images_b is None else [images, images_b]
        if len(groups) != len(self.input_names):
            raise InputError(f"this {self.task} artifact takes {len(self.input_names)} image set(s): {self.input_names}")
        feeds = {n: self.preprocess(self.load_images(g, color_order)) for n, g in zip(self.input_names, groups)}
        return self.run_inputs(feeds)

    def run(self, batch: np.ndarray) -> Features:
        """Outputs for an already preprocessed float32 NCHW batch of any size (single-input artifacts)."""
        if len(self.input_names) != 1:
            raise InputError(f"this artifact takes inputs {self.input_names}; use run_inputs({{name: batch}})")
        return self.run_inputs({self.input_name: batch})

    def run_inputs(self, feeds: dict[str, np.ndarray]) -> Features:
        """Outputs for preprocessed float32 NCHW batches by input name (all the same batch size)."""
        if set(feeds) != set(self.input_names):
            raise InputError(f"inputs must be {self.input_names}, got {sorted(feeds)}")
        for name, b in feeds.items():
            if not isinstance(b, np.ndarray) or b.ndim != 4:
                raise InputError(f"input {name!r}: expected a float32 NCHW array, got {getattr(b, 'shape', type(b).__name__)}")
            if min(b.shape) < 1:
                raise InputError(f"input {name!r}: shape {list(b.shape)} has an empty dimension")
            bad = non_finite_count(b)
            if bad:
                raise InputError(f"input {name!r}: {bad} non-finite value(s) (NaN or infinity); inputs must be finite")
        sizes = {b.shape[0] for b in feeds.values()}
        if len(sizes) != 1:
            raise InputError(f"inputs have different batch sizes {sorted(sizes)}")
        total = sizes.pop()
        chunks = []
        lo, hi = int(self.batch.min), 1 if self.batch_dependent else self.max_batch
        for start in range(0, total, hi):
            x = {k: v[start : start + hi] for k, v in feeds.items()}
            n = min(hi, total - start)
            if n < lo:  # pad only to the profile minimum
                x = {k: np.concatenate([v, np.repeat(v[-1:], lo - n, axis=0)]) for k, v in x.items()}
            out = self.backend.infer(x)
            chunks.append({k: v[:n] for k, v in out.items()})
        return Features({k: np.concatenate([c[k] for c in chunks]) for k in self.output_names}, self.grid)


    # The server's batcher needs plain arrays by name.
    def run_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_inputs(feeds).outputs


def non_finite_count(x: np.ndarray) -> int:
    """How many NaN/infinite values ``x`` holds; one summing pass when there are none (the common case)."""
    if x.dtype.kind != "f" or np.isfinite(x.sum()):  # a finite sum means every element is finite (overflow: counted below)
        return 0
    return int(np.size(x) - np.count_nonzero(np.isfinite(x)))


def load(artifact: str | os.PathLike, backend: str = "auto", *, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
         **backend_opts) -> Model:
    """Open an exported artifact (its sidecar beside it) on ``backend`` ("auto" picks the fastest available).

    ``max_image_pixels``: the most pixels an encoded image given to ``embed``/``predict`` may declare."""
    return Model(artifact, backend, max_image_pixels=max_image_pixels, **backend_opts)
