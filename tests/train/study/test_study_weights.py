"""A study that starts every trained variant from a weights file: keyed by the file's content, and
its untrained starting point scored as a row of its own."""

from __future__ import annotations

import json
import shutil

import pytest
from test_study import counters, write_study  # noqa: F401  (counters is a fixture)
from weight_layouts import PLAIN, tiny_model, write_layout

from wherevit.train.study import StudyError, load_study_config, plan_runs
from wherevit.train.study import run_and_report as study

VARIANTS = [{"name": "dino", "label": "DINO"}, {"name": "start", "kind": "start", "label": "loaded"},
            {"name": "random", "kind": "random"}]


def _study(tmp_path, **over):
    tmp_path.mkdir(exist_ok=True)
    return write_study(tmp_path, **over)


def _keys(path):
    return {(r.variant, r.seed): (r.train_key, r.key) for r in plan_runs(load_study_config(path))}


def test_keys_follow_the_files_content_not_its_path(tmp_path):
    a = write_layout("dino-train", tiny_model(PLAIN), tmp_path / "a.pth")
    b = shutil.copy(a, tmp_path / "b.pth")
    c = write_layout("dino-train", tiny_model(PLAIN, seed=9), tmp_path / "c.pth")
    keys = {n: _keys(_study(tmp_path / n, variants=VARIANTS, seeds=(0,), weights=str(f))) for n, f in (("a", a), ("b", b), ("c", c))}
    assert keys["a"] == keys["b"]  # the same weights under another name: the cached runs are reused
    assert keys["a"][("dino", 0)] != keys["c"][("dino", 0)] and keys["a"][("start", 0)] != keys["c"][("start", 0)]
    assert keys["a"][("random", 0)] == keys["c"][("random", 0)]  # random weights do not depend on the file
    scratch = _keys(_study(tmp_path / "scratch", variants=[VARIANTS[0], VARIANTS[2]], seeds=(0,)))
    assert scratch[("dino", 0)] != keys["a"][("dino", 0)] and scratch[("random", 0)] == keys["a"][("random", 0)]


def test_a_start_variant_needs_weights(tmp_path):
    with pytest.raises(StudyError, match="kind 'start'.*has no weights"):
        plan_runs(load_study_config(write_study(tmp_path, VARIANTS, seeds=(0,))))


def test_a_study_from_weights_trains_from_them_and_scores_the_start(tmp_path, counters):  # noqa: F811
    file = write_layout("dino-train", tiny_model(PLAIN), tmp_path / "dino.pth")
    path = write_study(tmp_path, VARIANTS, seeds=(0,), weights=str(file))
    study(load_study_config(path), echo=lambda *_: None)
    assert counters == {"train": 1, "eval": 3}
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    runs = {r["variant"]: r for r in doc["runs"]}
    assert runs["start"]["kind"] == "start"
    trained = tmp_path / "runs" / "train" / runs["dino"]["train_key"]
    record = json.loads((trained / "weights.json").read_text())
    assert record["layout"] == "dino-train" and record["file"] == "dino.pth"
    full = {v: json.loads((tmp_path / "runs" / "results" / f"{runs[v]['key']}.json").read_text()) for v in ("dino", "start")}
    assert full["dino"]["config"]["model"]["weights"] == str(file) and "train" not in full["start"]
    assert full["start"]["weights"]["sha256"] == record["sha256"]
    # the loaded backbone untrained is its own column next to the trained one
    assert "| evaluation | DINO | loaded | random |" in (tmp_path / "out" / "table.md").read_text()
