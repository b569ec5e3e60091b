"""The label-free evaluations on a folder of photographs the test writes, and clear errors for bad folders."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from wherevit.train.backbone import create_backbone
from wherevit.train.data.sources import DataError
from wherevit.train.data.synthetic import render_scene
from wherevit.train.evals.folder import load_folder_images
from wherevit.train.evals.jigsaw import JigsawConfig, evaluate_jigsaw
from wherevit.train.evals.spatial import SpatialEvalConfig, evaluate_spatial
from wherevit.train.evals.suite import SuiteConfig, evaluate_suite, headline_scores


@pytest.fixture
def photo_folder(tmp_path):
    """12 scene 'photographs' of mixed sizes and aspect ratios as JPEG and PNG (some in a subfolder), one corrupt file."""
    root = tmp_path / "photos"
    (root / "trip").mkdir(parents=True)
    for i in range(12):
        a, b = render_scene(900 + i, 80), render_scene(950 + i, 80)
        img = np.concatenate([a, b[:, : 20 + 4 * i]], axis=1)  # landscape, 80 x (100..144)
        img = img.transpose(1, 0, 2) if i % 3 == 0 else img  # and some portrait ones
        noise = np.random.default_rng(i).normal(0, 6, img.shape)  # sensor noise: not a flat rendering
        img = np.clip(img + noise, 0, 255).astype(np.uint8)
        folder = root / "trip" if i % 2 else root
        ext = ".jpg" if i % 2 else ".png"
        assert cv2.imwrite(str(folder / f"img_{i:02d}{ext}"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return create_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2).eval()


def test_folder_images_are_squared_and_corrupt_files_skipped(photo_folder):
    imgs = load_folder_images(photo_folder, 48)
    assert len(imgs) == 12 and all(im.shape == (48, 48, 3) and im.dtype == np.uint8 for im in imgs)
    assert len(imgs.skipped) == 1 and "broken.jpg" in imgs.skipped[0]
    subset = load_folder_images(photo_folder, 48, limit=5, seed=1)
    assert len(subset) == 5


def test_spatial_and_jigsaw_run_on_a_folder(photo_folder, tiny_vit):
    r = evaluate_spatial(tiny_vit, SpatialEvalConfig(n_images=10, crop_size=16, folder=str(photo_folder)))
    assert r["config"]["n_images"] == 10 and r["config"]["data"] == f"folder {photo_folder}"
    assert 0.0 <= r["relative_location"]["acc_8way"] <= 1.0 and np.isfinite(r["position_scale"]["r2_mean"])
    j = evaluate_jigsaw(tiny_vit, JigsawConfig(n_train=8, n_test=4, tile_size=16, image_size=32, folder=str(photo_folder)))
    assert j["n_test"] == 4 and 0.0 <= j["per_tile_acc"] <= 1.0 and j["recognition_intact"] is None


def test_the_suite_scores_label_free_tasks_on_a_folder(photo_folder, tiny_vit):
    cfg = SuiteConfig(size=32, tasks=("spatial", "jigsaw"), spatial_images=12, spatial_crop=16, jigsaw_train=8,
                      jigsaw_test=4, folder=str(photo_folder))
    scores = headline_scores(evaluate_suite(tiny_vit, cfg))
    assert set(scores) == {"pos_scale_r2", "rel_loc_8way", "jigsaw_per_tile", "jigsaw_full_perm"}


def test_an_empty_folder_is_named(tmp_path, tiny_vit):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"no images found under {tmp_path / 'empty'}"):
        evaluate_spatial(tiny_vit, SpatialEvalConfig(folder=str(tmp_path / "empty")))


def test_a_missing_folder_or_a_file_is_named(tmp_path, tiny_vit):
    with pytest.raises(DataError, match=f"data folder does not exist: {tmp_path / 'nope'}"):
        evaluate_jigsaw(tiny_vit, JigsawConfig(folder=str(tmp_path / "nope")))
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="is not a folder"):
        load_folder_images(tmp_path / "a.png", 32)


def test_a_folder_of_undecodable_files_is_named(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(5):
        (bad / f"{i}.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match=rf"image folder {bad}: 0 readable image\(s\), need at least 4.*could not be decoded"):
        load_folder_images(bad, 32)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder regardless of its mode")
def test_an_unreadable_folder_is_named(photo_folder):
    photo_folder.chmod(0)
    try:
        with pytest.raises(DataError, match=f"image folder {photo_folder} is not readable"):
            load_folder_images(photo_folder, 32)
    finally:
        photo_folder.chmod(0o755)


def test_the_cli_scores_a_folder_and_names_an_empty_one(photo_folder, tmp_path):
    from click.testing import CliRunner

    from wherevit.app.cli import main

    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, ["eval", "spatial", "vit_tiny_patch16_224", "--folder", str(tmp_path / "empty")])
    assert res.exit_code == 1 and f"DataError: no images found under {tmp_path / 'empty'}" in res.output
    res = CliRunner().invoke(main, ["eval", "jigsaw", "vit_tiny_patch16_224", "--folder", str(photo_folder), "--n-test", "4"])
    assert res.exit_code == 0, res.output
    assert "jigsaw  per-tile" in res.output and "recognition" not in res.output
