"""Data for the downstream heads: generated scenes, and the folder layouts users already have.

Layouts (all images decoded with OpenCV to RGB and resized to ``size`` x ``size``; depth and
labels with nearest-neighbour so no invented values appear):

* depth, NYU-Depth-v2 style: ``root/rgb/<name>.(png|jpg)`` + ``root/depth/<name>.png`` (uint16,
  millimetres) or ``root/depth/<name>.npy`` (float, metres). Zero, negative and NaN depths are
  invalid: kept as 0 and masked out of losses and metrics.
* segmentation, ADE20K style: ``root/images/<name>.jpg`` + ``root/annotations/<name>.png`` (class
  index per pixel). ``reduce_zero_label`` (ADE's convention) maps 0 -> 255 (ignored) and k -> k-1.
  A label outside 0..n_classes-1 that is not 255 is an error naming the file.
* pose pairs, ScanNet style: ``root/color/<frame>.jpg`` + ``root/pose/<frame>.txt`` (4x4
  camera-to-world). Frames ``i`` and ``i + stride`` form a pair. A pose that is not a finite rigid
  transform (orthonormal rotation, det +1, last row 0 0 0 1) is an error naming the file.

A folder is split deterministically: every fifth item (by sorted name) is held out for testing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from wherevit.base.errors import WherevitError
from wherevit.base.image import IMAGE_EXTENSIONS, read_image
from wherevit.train.downstream.metrics import IGNORE_INDEX

__all__ = ["DenseSplit", "PairSplit", "DatasetError", "load_depth_folder", "load_seg_folder", "load_pose_folder",
           "holdout_split", "check_rigid"]


class DatasetError(WherevitError, ValueError):
    """A downstream data set that does not match its layout."""


@dataclass
class DenseSplit:
    rgb: np.ndarray  # (N, H, W, 3) uint8
    depth: np.ndarray | None = None  # (N, H, W) float32 metres, 0 = invalid
    labels: np.ndarray | None = None  # (N, H, W) uint8/int64, 255 = ignore

    def __len__(self) -> int:
        return len(self.rgb)

    def __getitem__(self, sl) -> "DenseSplit":
        return DenseSplit(self.rgb[sl], None if self.depth is None else self.depth[sl], None if self.labels is None else self.labels[sl])


@dataclass
class PairSplit:
    rgb_a: np.ndarray
    rgb_b: np.ndarray
    T_ab: np.ndarray  # (N, 4, 4) pose of b in a's camera frame

    def __len__(self) -> int:
        return len(self.rgb_a)

    def __getitem__(self, sl) -> "PairSplit":
        return PairSplit(self.rgb_a[sl], self.rgb_b[sl], self.T_ab[sl])


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"expected a folder {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DatasetError(f"no images in {folder}")
    return files


def _rgb(path: Path, size: int) -> np.ndarray:
    img = read_image(path)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def _nearest(a: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(a, (size, size), interpolation=cv2.INTER_NEAREST)


def load_depth_folder(root: str | os.PathLike, size: int) -> DenseSplit:
    root = Path(root)
    rgbs, depths = [], []
    for p in _images(root / "rgb"):
        png, npy = root / "depth" / f"{p.stem}.png", root / "depth" / f"{p.stem}.npy"
        if png.is_file():
            raw = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
            if raw is None or raw.ndim != 2 or raw.dtype != np.uint16:
                raise DatasetError(f"{png}: depth PNGs must be single-channel uint16 millimetres")
            d = raw.astype(np.float32) / 1000.0
        elif npy.is_file():
            d = np.load(npy, allow_pickle=False).astype(np.float32)
            if d.ndim != 2:
                raise DatasetError(f"{npy}: depth must be 2-D (H, W) metres, got shape {d.shape}")
        else:
            raise DatasetError(f"{p.name}: no depth/{p.stem}.png or depth/{p.stem}.npy")
        img = read_image(p)
        if img.shape[:2] != d.shape:
            raise DatasetError(f"{p.name}: image {img.shape[1]}x{img.shape[0]} but depth {d.shape[1]}x{d.shape[0]}")
        d = np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)  # invalid -> 0 (masked)
        rgbs.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
        depths.append(_nearest(d, size))
    return DenseSplit(np.stack(rgbs), depth=np.stack(depths))


def load_seg_folder(root: str | os.PathLike, size: int, n_classes: int, reduce_zero_label: bool = False) -> DenseSplit:
    root = Path(root)
    rgbs, labels = [], []
    for p in _images(root / "images"):
        ann = root / "annotations" / f"{p.stem}.png"
        if not ann.is_file():
            raise DatasetError(f"{p.name}: no annotations/{p.stem}.png")
        lab = cv2.imread(str(ann), cv2.IMREAD_UNCHANGED)
        if lab is None or lab.ndim != 2:
            raise DatasetError(f"{ann}: label maps must be single-channel class-index PNGs")
        img = read_image(p)
        if img.shape[:2] != lab.shape:
            raise DatasetError(f"{p.name}: image {img.shape[1]}x{img.shape[0]} but labels {lab.shape[1]}x{lab.shape[0]}")
        lab = lab.astype(np.int64)
        if reduce_zero_label:
            lab = np.where(lab == 0, IGNORE_INDEX, lab - 1)
        bad = (lab != IGNORE_INDEX) & ((lab < 0) | (lab >= n_classes))
        if bad.any():
            raise DatasetError(f"{ann}: class {int(lab[bad].max())} outside 0..{n_classes - 1} "
                               f"({int(bad.sum())} pixels; use {IGNORE_INDEX} for 'ignore')")
        rgbs.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
        labels.append(_nearest(lab.astype(np.uint8), size))
    return DenseSplit(np.stack(rgbs), labels=np.stack(labels))


def check_rigid(T: np.ndarray, what: str, tol: float = 1e-3) -> np.ndarray:
    T = np.asarray(T, np.float64)
    if T.shape != (4, 4):
        raise DatasetError(f"{what}: a pose must be a 4x4 matrix, got shape {T.shape}")
    if not np.isfinite(T).all():
        raise DatasetError(f"{what}: pose has non-finite values (ScanNet marks untracked frames with -inf)")
    R = T[:3, :3]
    if np.abs(R.T @ R - np.eye(3)).max() > tol or abs(np.linalg.det(R) - 1) > tol or np.abs(T[3] - [0, 0, 0, 1]).max() > tol:
        raise DatasetError(f"{what}: not a rigid transform (rotation not orthonormal with det +1, or last row not 0 0 0 1)")
    return T


def load_pose_folder(root: str | os.PathLike, size: int, stride: int = 10) -> PairSplit:
    root = Path(root)
    frames = _images(root / "color")
    poses = []
    for p in frames:
        f = root / "pose" / f"{p.stem}.txt"
        if not f.is_file():
            raise DatasetError(f"{p.name}: no pose/{p.stem}.txt")
        try:
            T = np.loadtxt(f)
        except ValueError as e:
            raise DatasetError(f"{f}: not a whitespace-separated 4x4 matrix ({e})") from None
        poses.append(check_rigid(T, str(f)))
    if len(frames) <= stride:
        raise DatasetError(f"{root}: {len(frames)} frames, need more than the pair stride {stride}")
    idx = range(len(frames) - stride)
    a = np.stack([_rgb(frames[i], size) for i in idx])
    b = np.stack([_rgb(frames[i + stride], size) for i in idx])
    T_ab = np.stack([np.linalg.inv(poses[i]) @ poses[i + stride] for i in idx]).astype(np.float32)
    return PairSplit(a, b, T_ab)


def holdout_split(data, root: str | os.PathLike = "the data"):
    """Hold out every fifth item (by position: sorted name) of ``data`` for testing -> (train, test)."""
    n = len(data)
    test = np.arange(n) % 5 == 4
    if test.sum() == 0 or (~test).sum() == 0:
        raise DatasetError(f"{root}: {n} items is too few to split (need at least 5)")
    return data[~test], data[test]
