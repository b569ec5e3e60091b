import numpy as np
import pytest

from wherevit.train.downstream.metrics import (
    confusion_matrix,
    depth_metrics,
    mean_iou,
    pose_metrics,
    rotation_error_deg,
    translation_direction_error_deg,
)


def test_depth_metrics_by_hand():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])  # one invalid pixel
    pred = np.array([[1.0, 3.0], [2.0, 99.0]])
    m = depth_metrics(pred, gt)
    # valid: (1,1) (3,2) (2,4): errors 0, 1, -2
    assert m["rmse"] == pytest.approx(np.sqrt((0 + 1 + 4) / 3))
    assert m["abs_rel"] == pytest.approx((0 + 0.5 + 0.5) / 3)
    assert m["delta1"] == pytest.approx(1 / 3)  # only the exact pixel is within 1.25
    assert m["valid_pixels"] == 3


def test_nan_and_zero_depth_are_masked_not_averaged():
    gt = np.array([1.0, np.nan, 0.0, -1.0, 2.0])
    pred = np.array([1.0, 5.0, 5.0, 5.0, 2.0])
    assert depth_metrics(pred, gt)["rmse"] == 0.0
    with pytest.raises(ValueError, match="no valid"):
        depth_metrics(pred, np.zeros(5))
    with pytest.raises(ValueError, match="shape"):
        depth_metrics(np.zeros(3), np.ones(4))


def test_miou_by_hand():
    gt = np.array([0, 0, 1, 1, 2, 255])
    pred = np.array([0, 1, 1, 1, 0, 2])
    conf = confusion_matrix(pred, gt, 3)
    assert conf.sum() == 5  # the ignored pixel is not counted
    m = mean_iou(conf)
    # class 0: inter 1, union 3 ; class 1: inter 2, union 3 ; class 2: inter 0, union 1
    assert m["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    with pytest.raises(ValueError, match="label 7 outside"):
        confusion_matrix(pred, np.array([0, 0, 1, 1, 7, 255]), 3)


def _rot_z(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def test_pose_errors_by_hand():
    assert rotation_error_deg(_rot_z(30), _rot_z(10)) == pytest.approx(20)
    assert translation_direction_error_deg(np.array([1.0, 0, 0]), np.array([0, 2.0, 0])) == pytest.approx(90)
    assert translation_direction_error_deg(np.array([3.0, 0, 0]), np.array([1.0, 0, 0])) == pytest.approx(0, abs=1e-6)
    R_pred = np.stack([_rot_z(0), _rot_z(20), _rot_z(40)])
    R_gt = np.stack([_rot_z(0)] * 3)
    t = np.array([[1.0, 0, 0]] * 3)
    m = pose_metrics(R_pred, t, R_gt, t)
    assert m["rot_err_median_deg"] == pytest.approx(20)
    assert m["acc_15deg"] == pytest.approx(1 / 3) and m["acc_30deg"] == pytest.approx(2 / 3)
