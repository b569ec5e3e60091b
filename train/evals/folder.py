"""Photographs from a folder for the label-free evaluations (position/scale, 8-way location, jigsaw).

Those tasks need no labels: their targets come from where crops are cut. So a user can score
backbones on their own images instead of generated scenes. Images are centre-cropped to a square
and resized; files that do not decode are skipped (and counted), and a folder that gives too few
readable images is an error naming the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wherevit.base.image import IMAGE_EXTENSIONS, ImageDecodeError, read_image
from wherevit.train.data.sources import DataError, ImageFolder

__all__ = ["FolderImages", "load_folder_images"]


class FolderImages(list):
    """A list of (S, S, 3) uint8 RGB images, with the folder and the files that were skipped."""

    def __init__(self, images: list[np.ndarray], folder: Path, skipped: list[str]):
        super().__init__(images)
        self.folder, self.skipped = folder, skipped


def _square(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = np.ascontiguousarray(img[top : top + s, left : left + s])
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def load_folder_images(folder: str | os.PathLike, size: int, limit: int | None = None, min_images: int = 4,
                       seed: int = 0) -> FolderImages:
    """Up to ``limit`` images under ``folder`` (recursive) as ``size`` x ``size`` RGB squares.

    Files are taken in a ``seed``-fixed shuffled order (so a train/test split by index mixes the
    folder's subfolders) until ``limit`` decode. Raises ``DataError`` naming the folder when it is
    missing, not a folder, unreadable, or yields fewer than ``min_images``.
    """
    root = Path(folder)
    if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"image folder {root} is not readable (permission denied)")
    files = ImageFolder(root).files  # missing folder / not a folder / no image files: DataError naming it
    images, skipped = [], []
    for i in np.random.default_rng(seed).permutation(len(files)):
        if limit is not None and len(images) >= limit:
            break
        f = files[i]
        try:
            images.append(_square(read_image(f), size))
        except ImageDecodeError as e:
            skipped.append(str(e))
    if len(images) < min_images:
        why = f"; {len(skipped)} file(s) could not be decoded, e.g. {skipped[0]}" if skipped else ""
        raise DataError(f"image folder {root}: {len(images)} readable image(s), need at least {min_images} "
                        f"(looked recursively for {', '.join(IMAGE_EXTENSIONS)}){why}")
    return FolderImages(images, root, skipped)
