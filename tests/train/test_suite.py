"""The evaluation suite behind the downstream table: task selection and its one-number columns."""

import pytest
import torch

from wherevit.train.evals.suite import SuiteConfig, evaluate_suite, headline_scores


def test_unknown_tasks_are_named():
    with pytest.raises(ValueError, match=r"unknown evaluation\(s\) \['detph'\]"):
        evaluate_suite(torch.nn.Identity(), SuiteConfig(tasks=("depth", "detph")))


def test_headline_scores_pick_the_table_columns():
    results = {
        "depth": {"rmse": 2.5, "abs_rel": 0.3, "delta1": 0.4},
        "pose": {"rot_err_median_deg": 9.0, "trans_dir_err_median_deg": 60.0},
        "spatial": {"position_scale": {"r2_mean": 0.5}, "relative_location": {"acc_8way": 0.7}},
        "probes": {"knn_acc": 0.55, "linear_acc": 0.65, "chance": 0.5},
    }
    assert headline_scores(results) == {"depth_rmse": 2.5, "depth_abs_rel": 0.3, "pose_rot_err_deg": 9.0,
                                        "pose_trans_dir_err_deg": 60.0, "pos_scale_r2": 0.5, "rel_loc_8way": 0.7,
                                        "knn": 0.55, "linear": 0.65}


def test_the_suite_runs_the_selected_heads_on_a_tiny_backbone(trained_run):
    from wherevit.train.checkpoint import load_backbone

    model = load_backbone(trained_run)[0]
    r = evaluate_suite(model, SuiteConfig(size=32, n_train=8, n_test=4, epochs=1, tasks=("depth", "seg")))
    assert set(r) == {"depth", "seg"} and r["depth"]["rmse"] > 0 and 0 <= r["seg"]["miou"] <= 1
