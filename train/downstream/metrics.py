"""Metrics for the downstream heads (numpy): depth, segmentation, relative pose.

Invalid pixels (depth <= 0 or not finite; label == ignore_index) are masked out, never averaged in.
"""

from __future__ import annotations

import numpy as np

__all__ = ["depth_metrics", "confusion_matrix", "mean_iou", "rotation_error_deg", "translation_direction_error_deg",
           "pose_metrics", "IGNORE_INDEX"]

IGNORE_INDEX = 255


def depth_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """RMSE (m), AbsRel and delta < 1.25 over pixels with a valid ground truth."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground truth shape {gt.shape}")
    valid = np.isfinite(gt) & (gt > 0)
    if not valid.any():
        raise ValueError("no valid ground-truth depth (all zero or NaN)")
    p, g = np.maximum(pred[valid], 1e-6), gt[valid]
    ratio = np.maximum(p / g, g / p)
    return {"rmse": float(np.sqrt(np.mean((p - g) ** 2))), "abs_rel": float(np.mean(np.abs(p - g) / g)),
            "delta1": float(np.mean(ratio < 1.25)), "valid_pixels": int(valid.sum())}


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, n_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    pred, gt = np.asarray(pred).reshape(-1), np.asarray(gt).reshape(-1)
    keep = gt != ignore_index
    pred, gt = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
    if gt.size and (gt.min() < 0 or gt.max() >= n_classes):
        raise ValueError(f"label {int(gt.max())} outside 0..{n_classes - 1} (use {ignore_index} for 'ignore')")
    return np.bincount(gt * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def mean_iou(conf: np.ndarray) -> dict:
    """mIoU over classes present in the ground truth or the prediction; per-class IoU (NaN if absent)."""
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return {"miou": float(np.nanmean(iou)), "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
            "pixel_acc": float(inter.sum() / max(conf.sum(), 1))}


def rotation_error_deg(R_pred: np.ndarray, R_gt: np.ndarray) -> np.ndarray:
    """Geodesic angle between rotations (..., 3, 3), in degrees."""
    R = np.einsum("...ji,...jk->...ik", R_pred, R_gt)
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def translation_direction_error_deg(t_pred: np.ndarray, t_gt: np.ndarray) -> np.ndarray:
    """Angle between translation directions (scale-free, as in relative-pose benchmarks), degrees."""
    a = t_pred / np.maximum(np.linalg.norm(t_pred, axis=-1, keepdims=True), 1e-12)
    b = t_gt / np.maximum(np.linalg.norm(t_gt, axis=-1, keepdims=True), 1e-12)
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1, 1)))


def pose_metrics(R_pred, t_pred, R_gt, t_gt) -> dict[str, float]:
    re, te = rotation_error_deg(R_pred, R_gt), translation_direction_error_deg(t_pred, t_gt)
    worst = np.maximum(re, te)
    return {"rot_err_median_deg": float(np.median(re)), "trans_dir_err_median_deg": float(np.median(te)),
            "acc_15deg": float(np.mean(worst < 15)), "acc_30deg": float(np.mean(worst < 30))}
