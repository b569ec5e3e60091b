"""The head-task registry: a new head is one class, and it goes through train-head -> export -> runtime predict
(and the INT8 step's head metric, the evaluation suite's columns) with no other edit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from wherevit import runtime
from wherevit.app.cli import main
from wherevit.base.config import ConfigError
from wherevit.base.sidecar import read_sidecar
from wherevit.train.data.synthetic import render_scene
from wherevit.train.downstream.tasks import HEAD_TASKS, Column, HeadSplit, HeadTask, create_head_task, register_head_task
from wherevit.train.evals.suite import SuiteConfig, chance_scores, evaluate_suite, headline_scores, metric_columns


class BrightnessTask(HeadTask):
    """A toy head: an image's mean brightness (0..1) from its CLS token, through one linear layer."""

    name = "toy_brightness"
    summary = "mean brightness of the image (0..1), from its CLS token"
    columns = {"toy_brightness_mae": Column("mae", "brightness MAE", False)}
    parity_metric = Column("mae", "brightness MAE", False)

    def synthetic_split(self, n, size, seed, cache_dir):
        rgb = np.stack([render_scene(seed * 1000 + i, size) for i in range(n)])
        return HeadSplit((rgb,), {"brightness": (rgb.mean(axis=(1, 2, 3)) / 255).astype(np.float32)})

    def build_head(self, embed_dim):
        return nn.Linear(embed_dim, 1)

    def loss(self, head, feats, targets, hw):
        return F.mse_loss(head(feats[0].cls)[:, 0], targets["brightness"])

    def evaluate(self, head, feats, train, test, hw):
        gt, mean = test["brightness"].numpy(), float(train["brightness"].mean())
        return {"mae": float(np.abs(head(feats[0].cls)[:, 0].numpy() - gt).mean()),
                "baseline": {"mae": float(np.abs(mean - gt).mean())}}

    def output_specs(self):
        return [{"name": "brightness", "dtype": "float32", "shape": [-1], "meaning": "mean brightness (0..1)"}]

    def graph_outputs(self, head, feats, hw):
        return (head(feats[0].cls)[:, 0],)

    def parity_scenes(self, count, size, seed):
        imgs = [render_scene(seed + i, size) for i in range(count)]
        return {"images": imgs}, np.array([im.mean() / 255 for im in imgs], np.float32)

    def parity_score(self, outputs, truth):
        return float(np.abs(outputs["brightness"] - truth).mean())

    def summary_line(self, m):
        return f"toy    brightness MAE {m['mae']:.4f}  (mean-brightness baseline {m['baseline']['mae']:.4f})"


@pytest.fixture
def toy_task():
    snap = HEAD_TASKS.snapshot()
    register_head_task(BrightnessTask)
    yield BrightnessTask
    HEAD_TASKS.restore(snap)


def test_a_toy_head_goes_through_train_head_export_and_runtime_predict(toy_task, trained_run, tmp_path):
    cli = CliRunner()
    heads = tmp_path / "heads"
    res = cli.invoke(main, ["train-head", "toy_brightness", str(trained_run), "--n-train", "48", "--n-test", "16", "--epochs", "20",
                            "--size", "32", "-o", str(heads), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "brightness MAE" in res.output and (heads / "head_toy_brightness.safetensors").is_file()
    head_file = heads / "head_toy_brightness.safetensors"

    res = cli.invoke(main, ["export", str(trained_run), "--head", str(head_file), "-o", str(tmp_path / "toy.onnx"), "--batch", "1:2:4"])
    assert res.exit_code == 0, res.output
    meta = read_sidecar(tmp_path / "toy.onnx")
    assert meta.task == "toy_brightness" and meta.output_names == ["brightness"] and meta.parity["passed"] is True
    assert meta.head.task == "toy_brightness" and meta.head.file == str(head_file)

    from wherevit.export.head_models import HeadModel, load_head
    from wherevit.train.checkpoint import load_backbone

    images = [render_scene(900 + i, 32) for i in range(3)]
    with runtime.load(tmp_path / "toy.onnx") as model:
        got = model.predict(images)["brightness"]
        x = torch.from_numpy(model.preprocess(images))
    head, record = load_head(head_file)
    with torch.no_grad():
        ref = HeadModel(load_backbone(trained_run)[0], head, record).eval()(x)[0].numpy()
    assert got.shape == (3,)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)

    # the INT8 step reads the task's own metric (parity_scenes / parity_score) for the head graph
    res = cli.invoke(main, ["export", str(trained_run), "--head", str(head_file), "-o", str(tmp_path / "toy8.onnx"),
                            "--precision", "int8", "--calib-count", "8", "--batch", "1:2:4"])
    assert res.exit_code == 0, res.output
    hm = read_sidecar(tmp_path / "toy8.onnx").parity["head_metric"]
    assert hm["metric"] == "brightness MAE" and hm["better"] == "lower" and np.isfinite(hm["int8"])
    assert hm["change"] == pytest.approx(hm["int8"] - hm["fp32_pytorch"])


def test_the_suite_scores_a_registered_head_task(toy_task, trained_run):
    from wherevit.train.checkpoint import load_backbone

    assert metric_columns()["toy_brightness_mae"] == ("toy_brightness", "brightness MAE", False)
    results = evaluate_suite(load_backbone(trained_run)[0], SuiteConfig(size=32, n_train=16, n_test=8, epochs=2,
                                                                        tasks=("toy_brightness",)))
    r = results["toy_brightness"]
    assert headline_scores(results) == {"toy_brightness_mae": r["mae"]}
    assert chance_scores(results) == {"toy_brightness_mae": r["baseline"]["mae"]}


def test_task_options_are_validated_and_unknown_names_listed():
    assert create_head_task("seg", {"n_classes": 3}).class_names == ["0", "1", "2"]
    with pytest.raises(ConfigError, match="head task 'depth' has no option n_classes; its options: none"):
        create_head_task("depth", {"n_classes": 3})
    with pytest.raises(ValueError, match="unknown head task 'segm'; registered head tasks: depth, pose, seg"):
        create_head_task("segm")
    res = CliRunner().invoke(main, ["train-head", "segm", "runs/none"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "unknown head task 'segm'" in res.output


def test_train_head_help_lists_the_registered_tasks(toy_task):
    out = CliRunner().invoke(main, ["train-head", "--help"]).output
    for name in ("depth", "seg", "pose", "toy_brightness"):
        assert name in out
    assert "ADE20K" in out and "mean brightness" in out
