"""Each head trains to better than chance on generated scenes in a few CPU seconds."""

import pytest
import torch

from wherevit.train.downstream.fit import HeadTrainConfig, fit_head
from wherevit.train.downstream.heads import rotation_6d_to_matrix


@pytest.fixture(scope="module")
def backbone(trained_run):
    from wherevit.train.checkpoint import load_backbone

    return load_backbone(trained_run)[0]


CFG = dict(n_train=80, n_test=24, size=32, epochs=12, batch_size=32)


def test_depth_head_beats_the_mean_depth(backbone, tmp_path):
    _, m = fit_head("depth", backbone, HeadTrainConfig(**CFG, cache_dir=str(tmp_path)), progress=False, out_dir=tmp_path)
    assert m["rmse"] < m["baseline"]["rmse"] and m["abs_rel"] < m["baseline"]["abs_rel"]
    assert (tmp_path / "head_depth.safetensors").is_file() and (tmp_path / "head_depth.json").is_file()


def test_seg_head_beats_the_majority_class(backbone, tmp_path):
    _, m = fit_head("seg", backbone, HeadTrainConfig(**CFG, cache_dir=str(tmp_path)), progress=False)
    assert m["miou"] > m["baseline"]["miou"] + 0.05


def test_pose_head_learns(backbone, tmp_path):
    _, m = fit_head("pose", backbone, HeadTrainConfig(**{**CFG, "epochs": 40}, cache_dir=str(tmp_path)), progress=False)
    assert m["last_loss"] < m["first_loss"]
    assert 0 <= m["acc_30deg"] <= 1 and m["rot_err_median_deg"] < 90


def test_6d_rotation_is_orthonormal():
    R = rotation_6d_to_matrix(torch.randn(10, 6))
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3).expand(10, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(10), atol=1e-5, rtol=0)
