import cv2
import numpy as np
import pytest

from wherevit.base.image import ImageDecodeError, decode_image, read_image
from wherevit.train.data.dataset import MultiCrop, SSLDataset, StepBatchSampler
from wherevit.train.data.sources import DataError, ImageFolder
from wherevit.train.data.synthetic import render_scene, write_synthetic_folder
from wherevit.train.data.views import ViewSpec, crop_view, sample_box


def test_synthetic_scenes_are_deterministic_and_structured():
    a, b = render_scene(3, 64), render_scene(3, 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, render_scene(4, 64))
    # spatial structure: the sky (top rows) and the ground (bottom rows) differ on average
    top, bottom = a[:8].astype(float).mean((0, 1)), a[-8:].astype(float).mean((0, 1))
    assert np.abs(top - bottom).sum() > 20


def test_missing_and_empty_folders_are_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images found under .*empty"):
        ImageFolder(tmp_path / "empty")


def test_folder_is_recursive_and_converts_formats(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "a" / "gray.png"), np.full((10, 12), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "a" / "b" / "rgba.PNG"), np.dstack([np.zeros((10, 12, 3), np.uint8), np.full((10, 12), 128, np.uint8)]))
    cv2.imwrite(str(tmp_path / "deep16.png"), np.full((10, 12, 3), 65535, np.uint16))
    cv2.imwrite(str(tmp_path / "c.jpg"), np.zeros((10, 12, 3), np.uint8))
    folder = ImageFolder(tmp_path)
    assert len(folder) == 4
    for i in range(4):
        img = folder.load(i)
        assert img.shape == (10, 12, 3) and img.dtype == np.uint8
    by_name = {p.name: folder.load(i) for i, p in enumerate(folder.files)}
    assert by_name["deep16.png"].min() == 255
    assert by_name["gray.png"].min() == 200


def test_bgr_is_converted_to_rgb(tmp_path):
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's order
    ok, enc = cv2.imencode(".png", bgr)
    rgb = decode_image(enc.tobytes())
    assert rgb[0, 0].tolist() == [0, 0, 255]


def test_corrupt_images_are_named(tmp_path):
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        read_image(p)
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


def test_corrupt_files_are_skipped_and_reported(tmp_path):
    write_synthetic_folder(tmp_path, 3, size=32)
    (tmp_path / "scene_000001.png").write_bytes(b"garbage")
    ds = SSLDataset(ImageFolder(tmp_path), MultiCrop(ViewSpec(16, (0.5, 1.0)), 2, ViewSpec(8, (0.1, 0.3)), 1))
    sample = ds[(1, 123)]
    assert "scene_000001.png" in sample["skipped"]
    assert sample["global"]["images"].shape == (2, 3, 16, 16)
    assert ds[(0, 1)]["skipped"] == ""


def test_crop_boxes_are_exact():
    img = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)
    rng = np.random.default_rng(0)
    for _ in range(50):
        box = sample_box(rng, (40, 60), (0.05, 0.5), (0.75, 1.33))
        x0, w = box[0] * 60 - box[2] * 30, box[2] * 60
        y0, h = box[1] * 40 - box[3] * 20, box[3] * 40
        for v in (x0, w, y0, h):
            assert abs(v - round(v)) < 1e-9  # boxes sit on the pixel grid
        assert 0 <= x0 and x0 + w <= 60 and 0 <= y0 and y0 + h <= 40
        full = crop_view(img, box, int(w), False) if int(w) == int(h) else None
        if full is not None:
            np.testing.assert_array_equal(full, img[int(round(y0)):int(round(y0 + h)), int(round(x0)):int(round(x0 + w))])


def test_flip_mirrors():
    img = render_scene(0, 32)
    box = np.array([0.5, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(crop_view(img, box, 32, True), img[:, ::-1])


def test_step_sampler_is_addressed_by_step_and_shards_ranks():
    full = StepBatchSampler(10, 4, seed=1)
    r0 = StepBatchSampler(10, 4, seed=1, rank=0, world=2)
    r1 = StepBatchSampler(10, 4, seed=1, rank=1, world=2)
    for step in range(7):  # crosses epoch boundaries
        assert full.batch_for_step(step) == r0.batch_for_step(step) + r1.batch_for_step(step)
    late = iter(StepBatchSampler(10, 4, seed=1, start_step=5))
    assert next(late) == full.batch_for_step(5)
    # every image exactly once per epoch (first 10 positions)
    # keys are (image, seed, global position); the position feeds batch-stratified masks
    first = [key[0] for s in range(3) for key in full.batch_for_step(s)][:10]
    assert sorted(first) == list(range(10))
    with pytest.raises(ValueError, match="not divisible"):
        StepBatchSampler(10, 5, seed=0, world=2)


def test_scenes3d_source_serves_cached_views_of_the_downstream_renderer(tmp_path, monkeypatch, tiny_cfg):
    from wherevit.train.data.scenes3d import SceneSet
    from wherevit.train.loop import build_source

    monkeypatch.setenv("WHEREVIT_CACHE", str(tmp_path))
    cfg = tiny_cfg(**{"data.source": "scenes3d", "data.synthetic_count": 5, "data.synthetic_size": 24, "data.synthetic_seed": 3})
    src = build_source(cfg)
    assert len(src) == 5 and "3-D scene views (count=5, size=24, seed=3)" in src.describe()
    pairs = SceneSet(3, 24, 3)  # 3 pairs -> 6 views, the first 5 used; the cache file is reused
    assert len(list((tmp_path / "scenes3d").iterdir())) == 1
    want = pairs.views()["rgb"]
    for i in range(5):
        img = src.load(i)
        assert img.shape == (24, 24, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(img, want[i])
    assert not np.array_equal(src.load(0), src.load(1))
