"""A run trained under older method defaults is never reused for newer ones.

Study keys hash only non-default config values, so a changed default leaves a config's key
unchanged unless something else changes it: the key also hashes ``METHODS_VERSION``. The second
test pins every default a training config and the built-in plug-ins have; changing one fails it,
with the instruction to bump ``METHODS_VERSION`` when the change alters what a config trains.
"""

from __future__ import annotations

import hashlib
import json

import yaml
from conftest import tiny_train_dict

from wherevit.base.config import to_dict
from wherevit.train.config import METHODS_VERSION, TrainConfig
from wherevit.train.plugins import registered_plugins
from wherevit.train.study import load_study_config, plan_runs
from wherevit.train.study import runner as study_runner


def _study(tmp_path):
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(tiny_train_dict(total_steps=4)))
    doc = {"name": "keys", "train": str(tmp_path / "t.yaml"), "seeds": [0], "baseline": "dino",
           "variants": [{"name": "dino"}, {"name": "eq", "plugins": {"equivariance": {}}}, {"name": "random", "kind": "random"}],
           "runs_dir": str(tmp_path / "runs"), "out": str(tmp_path / "out")}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    return load_study_config(tmp_path / "s.yaml")


def test_the_methods_version_is_in_every_training_key(tmp_path, monkeypatch):
    study = _study(tmp_path)
    now = {r.variant: (r.train_key, r.key) for r in plan_runs(study)}
    monkeypatch.setattr(study_runner, "METHODS_VERSION", METHODS_VERSION - 1)  # the same configs under older defaults
    old = {r.variant: (r.train_key, r.key) for r in plan_runs(study)}
    for variant in ("dino", "eq"):
        assert old[variant][0] != now[variant][0] and old[variant][1] != now[variant][1], variant
    assert old["random"] == now["random"]  # random weights do not depend on the training methods


def _defaults() -> dict:
    plugins = {name: to_dict(cls.Config()) for name, cls in sorted(registered_plugins().items())
               if name in ("sp", "posfield", "scrl", "gtsa", "equivariance")}
    return {"train": to_dict(TrainConfig()), "plugins": plugins}


# The digest of every default above, as of METHODS_VERSION 2. If this fails, a default changed: if the
# change alters what an existing config trains, bump train/config.py METHODS_VERSION (and say so in
# docs/METHODS.md); either way, update the digest here.
DEFAULTS_DIGEST = {2: "8895e2ca0e69e71f"}  # + optim.layer_decay, optim.freeze_blocks, model.weights (defaults train as before)


def test_a_changed_default_asks_for_a_methods_version_decision():
    digest = hashlib.sha256(json.dumps(_defaults(), sort_keys=True, default=str).encode()).hexdigest()[:16]
    expected = DEFAULTS_DIGEST.get(METHODS_VERSION)
    assert expected == digest, (
        f"training or plug-in defaults changed (digest {digest}, pinned {expected} for methods version "
        f"{METHODS_VERSION}): if existing configs now train something else, bump METHODS_VERSION in "
        "train/config.py; then pin the new digest in this test")
