"""Image sources: an indexable set of RGB images, from a folder or generated.

A source only knows how to list and decode images. Corrupt files are the dataset's business
(``SSLDataset`` skips them and reports them), so a source raises ``ImageDecodeError`` naming the
file and lets the caller decide.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from wherevit.base.errors import WherevitError
from wherevit.base.image import IMAGE_EXTENSIONS, read_image

__all__ = ["ImageSource", "ImageFolder", "DataError"]


class DataError(WherevitError, ValueError):
    """A data set that cannot be used at all (missing folder, no images)."""


class ImageSource(Protocol):
    def __len__(self) -> int: ...

    def load(self, index: int) -> np.ndarray:
        """HxWx3 uint8 RGB image ``index``; raises ``ImageDecodeError`` for an unreadable file."""
        ...

    def describe(self) -> str: ...


class ImageFolder:
    """All images under ``root`` (recursive; jpg/jpeg/png/webp/bmp, case-insensitive), sorted by path."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.exists():
            raise DataError(f"data folder does not exist: {self.root}")
        if not self.root.is_dir():
            raise DataError(f"data path is not a folder: {self.root}")
        files = []
        for dirpath, _dirs, names in os.walk(self.root, followlinks=True):
            for n in names:
                if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."):
                    files.append(Path(dirpath) / n)
        if not files:
            raise DataError(
                f"no images found under {self.root} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})"
            )
        self.files = sorted(files)

    def __len__(self) -> int:
        return len(self.files)

    def describe(self) -> str:
        return f"image folder {self.root} ({len(self.files)} files)"

    def name(self, index: int) -> str:
        return str(self.files[index])

    def load(self, index: int) -> np.ndarray:
        return read_image(self.files[index])
