"""Every command that takes a backbone takes ``--weights``: the evaluations score the file's weights,
``train-head`` fits on them and ``export --head`` ships them with the head (the README's three
commands, from a downloaded DINOv2 file to a depth graph, on a tiny DINOv2-shaped model)."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from weight_layouts import DINOV2_REG, PLAIN, tiny_model, write_layout

from wherevit.app.cli import main
from wherevit.base.sidecar import read_sidecar


def _invoke(args):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return res


def test_eval_spatial_scores_the_files_weights(tmp_path):
    from wherevit.train.evals.spatial import SpatialEvalConfig, evaluate_spatial

    source = tiny_model(PLAIN, dynamic_img_size=True)  # the evaluation embeds 16 px crops
    file = write_layout("dino-train", source, tmp_path / "dino.pth")
    out = tmp_path / "spatial.json"
    res = _invoke(["eval", "spatial", PLAIN, "--weights", str(file), "--n-images", "24", "--crop-size", "16", "--json", str(out)])
    got = json.loads(out.read_text())
    ref = evaluate_spatial(source, SpatialEvalConfig(n_images=24, crop_size=16))
    plain = lambda d: json.loads(json.dumps(d, default=float))  # noqa: E731 -- numpy scalars as the CLI writes them
    assert got["position_scale"] == plain(ref["position_scale"])  # the same numbers, exactly
    assert got["relative_location"] == plain(ref["relative_location"])
    assert got["backbone"]["weights"]["layout"] == "dino-train" and got["backbone"]["source"] == "teacher"
    assert "weights: dino.pth (dino-train layout, teacher" in res.output


@pytest.mark.parametrize("command, module, fn, result", [
    ("probes", "wherevit.train.evals.probes", "evaluate_probes",
     {"knn_acc": 0.5, "linear_acc": 0.5, "chance": 0.25, "classes": ["a", "b"]}),
    ("jigsaw", "wherevit.train.evals.jigsaw", "evaluate_jigsaw",
     {"per_tile_acc": 0.5, "chance_per_tile": 0.11, "full_permutation_acc": 0.1, "recognition_intact": None}),
])
def test_probes_and_jigsaw_evaluate_the_files_weights(tmp_path, monkeypatch, command, module, fn, result):
    """What the command hands its evaluation is the file's network, bit for bit (the evaluations
    themselves are tested elsewhere; here only which weights reach them)."""
    import importlib

    seen = {}

    def capture(model, cfg):
        seen["model"] = model
        return result

    monkeypatch.setattr(importlib.import_module(module), fn, capture)
    source = tiny_model(PLAIN)
    file = write_layout("mae", source, tmp_path / "mae.pth")
    _invoke(["eval", command, PLAIN, "--weights", str(file)])
    got = seen["model"].state_dict()
    assert all(torch.equal(got[k], v) for k, v in source.state_dict().items())


def test_from_a_dinov2_file_to_a_depth_graph(tmp_path, monkeypatch):
    """train-head on a 518 px DINOv2 file at 56 px, then export backbone + head: the head equals the
    one fitted on timm's own loading of the file, and the graph computes that model's depth."""
    from wherevit.export.head_models import HeadModel, load_head
    from wherevit.train.downstream.fit import HeadTrainConfig, fit_head, load_task_data

    monkeypatch.setenv("WHEREVIT_CACHE", str(tmp_path / "cache"))
    file = write_layout("dinov2-reg4", tiny_model(DINOV2_REG), tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    heads = tmp_path / "heads"
    _invoke(["train-head", "depth", DINOV2_REG, "--weights", str(file), "--size", "56", "--n-train", "6", "--n-test", "4",
             "--epochs", "1", "-o", str(heads), "--no-progress"])
    timm_model = timm.create_model(DINOV2_REG, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)), num_classes=0,
                                   img_size=56).eval()
    cfg = HeadTrainConfig(n_train=6, n_test=4, size=56, epochs=1)
    fit_head("depth", timm_model, cfg, progress=False, out_dir=tmp_path / "ref", splits=load_task_data("depth", "synthetic", cfg))
    got, want = load_file(str(heads / "head_depth.safetensors")), load_file(str(tmp_path / "ref" / "head_depth.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)

    onnx = tmp_path / "art" / "depth.onnx"
    _invoke(["export", DINOV2_REG, "--weights", str(file), "--head", str(heads / "head_depth.safetensors"), "--imgsz", "56",
             "--batch", "1:1:2", "-o", str(onnx)])
    head, meta = load_head(heads / "head_depth.safetensors")
    x = np.random.default_rng(0).standard_normal((2, 3, 56, 56)).astype(np.float32)
    (depth,) = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    with torch.no_grad():
        (ref,) = HeadModel(timm_model, head, meta).eval()(torch.from_numpy(x))
    np.testing.assert_allclose(depth, ref.numpy(), rtol=1e-4, atol=1e-4)
    sc = read_sidecar(onnx)
    assert sc.task == "depth" and sc.model.weights["layout"] == "dinov2" and sc.model.weights["file"] == file.name
