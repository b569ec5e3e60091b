"""Folder layouts users already have, on tiny fixtures written here, and their bad inputs."""

import cv2
import numpy as np
import pytest

from wherevit.train.data.scenes3d import SceneSet, render_pair
from wherevit.train.downstream.datasets import (
    DatasetError,
    check_rigid,
    holdout_split,
    load_depth_folder,
    load_pose_folder,
    load_seg_folder,
)
from wherevit.train.downstream.tasks import create_head_task


def _img(path, h=12, w=16, v=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), v, np.uint8))


def test_nyu_style_depth_png_mm_and_npy_m(tmp_path):
    _img(tmp_path / "rgb" / "a.png")
    _img(tmp_path / "rgb" / "b.jpg")
    (tmp_path / "depth").mkdir()
    mm = np.full((12, 16), 2500, np.uint16)
    mm[0, 0] = 0  # invalid
    cv2.imwrite(str(tmp_path / "depth" / "a.png"), mm)
    m = np.full((12, 16), 1.5, np.float32)
    m[1, 1] = np.nan
    np.save(tmp_path / "depth" / "b.npy", m)
    d = load_depth_folder(tmp_path, 8)
    assert d.rgb.shape == (2, 8, 8, 3) and d.depth.shape == (2, 8, 8)
    assert set(np.unique(d.depth[0])) <= {0.0, 2.5} and set(np.unique(d.depth[1])) <= {0.0, 1.5}
    assert np.isfinite(d.depth).all()


def test_depth_size_mismatch_and_missing_depth(tmp_path):
    _img(tmp_path / "rgb" / "a.png")
    (tmp_path / "depth").mkdir()
    cv2.imwrite(str(tmp_path / "depth" / "a.png"), np.full((10, 10), 1000, np.uint16))
    with pytest.raises(DatasetError, match="a.png: image 16x12 but depth 10x10"):
        load_depth_folder(tmp_path, 8)
    _img(tmp_path / "rgb" / "c.png")
    (tmp_path / "depth" / "a.png").unlink()
    with pytest.raises(DatasetError, match="no depth/a.png"):
        load_depth_folder(tmp_path, 8)


def test_ade_style_labels(tmp_path):
    _img(tmp_path / "images" / "x.jpg")
    lab = np.zeros((12, 16), np.uint8)
    lab[:, 8:] = 3
    (tmp_path / "annotations").mkdir()
    cv2.imwrite(str(tmp_path / "annotations" / "x.png"), lab)
    s = load_seg_folder(tmp_path, 8, n_classes=4)
    assert set(np.unique(s.labels)) == {0, 3}
    s = load_seg_folder(tmp_path, 8, n_classes=4, reduce_zero_label=True)
    assert set(np.unique(s.labels)) == {2, 255}
    with pytest.raises(DatasetError, match="class 3 outside 0..2"):
        load_seg_folder(tmp_path, 8, n_classes=3)


def test_scannet_style_poses(tmp_path):
    for i in range(4):
        _img(tmp_path / "color" / f"{i}.jpg", v=40 * i)
        T = np.eye(4)
        T[0, 3] = i * 0.1
        (tmp_path / "pose").mkdir(exist_ok=True)
        np.savetxt(tmp_path / "pose" / f"{i}.txt", T)
    p = load_pose_folder(tmp_path, 8, stride=2)
    assert p.T_ab.shape == (2, 4, 4)
    np.testing.assert_allclose(p.T_ab[0][:3, 3], [0.2, 0, 0], atol=1e-6)
    bad = np.eye(4)
    bad[0, 0] = 2.0
    np.savetxt(tmp_path / "pose" / "3.txt", bad)
    with pytest.raises(DatasetError, match="3.txt: not a rigid transform"):
        load_pose_folder(tmp_path, 8, stride=2)
    np.savetxt(tmp_path / "pose" / "3.txt", np.full((4, 4), -np.inf))
    with pytest.raises(DatasetError, match="non-finite"):
        load_pose_folder(tmp_path, 8, stride=2)
    with pytest.raises(DatasetError, match="4x4"):
        check_rigid(np.eye(3), "x")


def test_folder_split_holds_out_every_fifth(tmp_path):
    for i in range(10):
        _img(tmp_path / "images" / f"{i:02d}.jpg")
        (tmp_path / "annotations").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "annotations" / f"{i:02d}.png"), np.zeros((12, 16), np.uint8))
    # through the task (the head-task registry replaced folder_splits(task, ...)): its layout, then the held-out fifth
    train, test = create_head_task("seg", {"n_classes": 2}).folder_splits(tmp_path, 8)
    assert len(train) == 8 and len(test) == 2 and train.targets["labels"].dtype == np.int64
    with pytest.raises(DatasetError, match="4 items is too few to split"):
        holdout_split(list(range(4)), "four")


def test_generated_scenes_are_deterministic_with_consistent_geometry(tmp_path):
    a, b = render_pair(3, 32), render_pair(3, 32)
    np.testing.assert_array_equal(a["a"]["rgb"], b["a"]["rgb"])
    v = a["a"]
    assert v["depth"].dtype == np.float32 and v["labels"].max() <= 4
    assert (v["depth"][v["labels"] == 0] == 0).all() and (v["depth"][v["labels"] > 0] > 0).all()  # sky has no depth
    # the relative pose is rigid and consistent with the two camera poses
    np.testing.assert_allclose(a["T_a"] @ a["T_ab"], a["T_b"], atol=1e-4)
    check_rigid(a["T_ab"], "T_ab")
    # a ground pixel's depth matches the ray/plane intersection computed from K and the pose
    K, T = v["K"], a["T_a"]
    ys, xs = np.nonzero(v["labels"] == 1)
    y, x = ys[-1], xs[-1]
    ray = T[:3, :3] @ np.linalg.inv(K) @ np.array([x + 0.5, y + 0.5, 1.0])
    t = -T[1, 3] / ray[1]
    assert v["depth"][y, x] == pytest.approx(t, rel=1e-3)
    s1 = SceneSet(3, 32, seed=5, cache_dir=tmp_path)
    s2 = SceneSet(3, 32, seed=5, cache_dir=tmp_path)  # from the cache
    np.testing.assert_array_equal(s1.data["a_depth"], s2.data["a_depth"])
    assert len(list(tmp_path.rglob("*.npz"))) == 1
