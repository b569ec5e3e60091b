"""The plug-in study end to end on a tiny budget: runs, cache keys, resume, report, clear errors."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import tiny_train_dict
from wherevit.base.config import ConfigError
from wherevit.train import loop
from wherevit.train.evals import suite
from wherevit.train.study import StudyError, load_study_config, plan_runs
from wherevit.train.study import run_and_report as study

# a tiny evaluation: every task runs, on a handful of images (seconds, not minutes)
TINY_EVAL = {"n_train": 8, "n_test": 4, "epochs": 1, "spatial_images": 8, "spatial_crop": 16, "jigsaw_train": 6,
             "jigsaw_test": 3, "probe_train": 20, "probe_test": 10}


def write_study(tmp_path, variants, seeds=(0, 1), **over) -> "Path":  # noqa: F821
    train = tiny_train_dict(total_steps=4, ckpt_every=2, log_every=2)
    (tmp_path / "tiny_train.yaml").write_text(yaml.safe_dump(train))
    doc = {"name": "tiny", "train": str(tmp_path / "tiny_train.yaml"), "seeds": list(seeds), "baseline": "dino",
           "variants": variants, "evaluation": dict(TINY_EVAL), "runs_dir": str(tmp_path / "runs"),
           "out": str(tmp_path / "out")} | over
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


TWO = [{"name": "dino", "label": "DINO"}, {"name": "dino_sp", "label": "DINO + SP", "plugins": {"sp": {}}},
       {"name": "random", "kind": "random"}, {"name": "chance", "kind": "chance"}]


@pytest.fixture
def counters(monkeypatch):
    """Count trainings and evaluations (the real ones still run)."""
    n = {"train": 0, "eval": 0}
    real_train, real_eval = loop.train, suite.evaluate_suite

    def train(*a, **k):
        n["train"] += 1
        return real_train(*a, **k)

    def evaluate(*a, **k):
        n["eval"] += 1
        return real_eval(*a, **k)

    monkeypatch.setattr(loop, "train", train)
    monkeypatch.setattr(suite, "evaluate_suite", evaluate)
    return n


def test_two_variants_two_seeds_end_to_end_through_the_cli(tmp_path, counters):
    path = write_study(tmp_path, TWO)
    res = CliRunner().invoke(__import__("wherevit.app.cli", fromlist=["main"]).main, ["study", str(path)])
    assert res.exit_code == 0, res.output
    assert "[6/6] random seed 1" in res.output and "table:" in res.output
    assert counters == {"train": 4, "eval": 6}  # 2 trained variants x 2 seeds; random is evaluated only
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["complete"] and doc["command"].startswith("wherevit study")
    assert doc["machine"]["cpu"] and isinstance(doc["machine"]["isa"], list) and doc["versions"]["torch"]
    assert len(doc["runs"]) == 6 and {r["variant"] for r in doc["runs"]} == {"dino", "dino_sp", "random"}
    cells = doc["summary"]["cells"]
    assert set(cells) == {"dino", "dino_sp", "random", "chance"}
    assert cells["dino"]["rel_loc_8way"]["verdict"] == "baseline"
    assert cells["dino_sp"]["depth_rmse"]["verdict"] in ("better", "worse", "noise")
    assert cells["dino_sp"]["depth_rmse"]["diff"]["n"] == 2
    assert cells["chance"]["rel_loc_8way"]["interval"]["mean"] == pytest.approx(0.125)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| evaluation | DINO | DINO + SP | random | chance |" in table and "8-way rel. loc." in table
    assert (tmp_path / "out" / "study.png").stat().st_size > 1000
    # trained runs recorded their training curve and time
    rec = next(r for r in doc["runs"] if r["variant"] == "dino_sp")
    assert rec["train"]["trained_now"] and rec["train"]["curve"]["last"]["step"] == 4


def test_an_interrupted_study_resumes_and_reruns_nothing(tmp_path, counters, monkeypatch):
    variants = [{"name": "dino"}, {"name": "random", "kind": "random"}]
    cfg = load_study_config(write_study(tmp_path, variants))
    counting = suite.evaluate_suite

    def killed_during_the_second_run(*a, **k):
        if counters["eval"] == 1:
            raise KeyboardInterrupt
        return counting(*a, **k)

    monkeypatch.setattr(suite, "evaluate_suite", killed_during_the_second_run)
    with pytest.raises(KeyboardInterrupt):
        study(cfg, echo=lambda s: None)
    assert counters == {"train": 1, "eval": 1} and len(list((tmp_path / "runs" / "results").glob("*.json"))) == 1
    monkeypatch.setattr(suite, "evaluate_suite", counting)
    counters.update(train=0, eval=0)
    lines = []
    study(cfg, echo=lines.append)
    assert "[1/4] dino seed 0: cached" in lines
    assert counters == {"train": 1, "eval": 3}  # the three runs left; the finished one was not redone
    counters.update(train=0, eval=0)
    study(cfg, echo=lines.append)
    assert counters == {"train": 0, "eval": 0}


def test_new_variants_and_seeds_reuse_finished_runs(tmp_path, counters):
    cfg = load_study_config(write_study(tmp_path, [{"name": "dino"}], seeds=[0]))
    study(cfg, echo=lambda s: None)
    assert counters == {"train": 1, "eval": 1}
    # a renamed copy of the same config is the same run; a new seed and a new variant are new runs
    more = [{"name": "baseline_dino", "label": "DINO"}, {"name": "dino_sp", "plugins": {"sp": {}}}]
    cfg2 = load_study_config(write_study(tmp_path, more, seeds=[0, 1], baseline="baseline_dino"))
    counters.update(train=0, eval=0)
    study(cfg2, echo=lambda s: None)
    assert counters == {"train": 3, "eval": 3}


def test_a_training_cut_off_midway_resumes_from_its_checkpoint(tmp_path):
    cfg = load_study_config(write_study(tmp_path, [{"name": "dino"}], seeds=[0]))
    run = plan_runs(cfg)[0]
    loop.train(run.train_cfg, tmp_path / "runs" / "train" / run.train_key, stop_at=2, progress=False)  # "killed" at step 2
    study(cfg, echo=lambda s: None)
    rec = json.loads((tmp_path / "runs" / "results" / f"{run.key}.json").read_text())
    assert rec["train"]["resumed_from"] == "step_00000002" and rec["train"]["step"] == 4


def test_keys_change_with_what_determines_the_numbers(tmp_path):
    base = load_study_config(write_study(tmp_path, [{"name": "dino"}], seeds=[0]))
    k0 = plan_runs(base)[0]
    more_epochs = load_study_config(write_study(tmp_path, [{"name": "dino"}], seeds=[0]), ["evaluation.epochs=2"])
    k1 = plan_runs(more_epochs)[0]
    assert k1.train_key == k0.train_key and k1.key != k0.key  # re-scored, not retrained
    longer = load_study_config(write_study(tmp_path, [{"name": "dino"}], seeds=[0]), ["budget=[total_steps=6]"])
    assert plan_runs(longer)[0].train_key != k0.train_key


def test_an_unregistered_plugin_is_named(tmp_path):
    path = write_study(tmp_path, [{"name": "dino"}, {"name": "dino_ibot", "plugins": {"ibot": {}}}])
    with pytest.raises(StudyError, match=r"variant 'dino_ibot' names plug-in 'ibot', which is not registered; "
                                         r"registered plug-ins: .*sp"):
        load_study_config(path)


@pytest.mark.parametrize("variant, message", [
    ({"name": "dino", "host": ["total_steps=10"]}, "must look like dino.key=value or ibot.key=value"),
    ({"name": "dino", "host": ["data.global_batch_size=8"]}, "budget"),
    ({"name": "dino", "kind": "random", "plugins": {"sp": {}}}, "trains nothing"),
])
def test_a_variant_cannot_change_the_budget(tmp_path, variant, message):
    with pytest.raises(ConfigError, match=message):
        load_study_config(write_study(tmp_path, [variant]))


@pytest.mark.parametrize("contrasts, message", [
    ({"dino_sp": "dino_ibot"}, "contrasts: 'dino_ibot' is not a variant"),
    ({"dino_sp": "dino_sp"}, "contrasts: 'dino_sp' is compared with itself"),
])
def test_contrasts_name_existing_distinct_variants(tmp_path, contrasts, message):
    with pytest.raises(ConfigError, match=message):
        load_study_config(write_study(tmp_path, TWO, contrasts=contrasts))


def test_the_baseline_must_be_a_trained_variant(tmp_path):
    with pytest.raises(ConfigError, match="baseline 'dino' must name a trained variant"):
        load_study_config(write_study(tmp_path, [{"name": "random", "kind": "random"}]))


def test_the_shipped_study_is_valid_and_compares_same_budget_runs():
    from wherevit.train.study.config import budget_of

    cfg = load_study_config("configs/study_quickstart.yaml")
    assert len(cfg.seeds) >= 3 and cfg.baseline == "dino"
    runs = [r for r in plan_runs(cfg) if r.kind == "trained"]
    assert len({json.dumps(budget_of(r.train_cfg), sort_keys=True) for r in runs}) == 1
    dino = next(r for r in runs if r.variant == "dino")
    assert dino.train_cfg.plugins == {} and dino.train_cfg.dino.teacher_temp == 0.02  # the DINO that learns
    sp = next(r for r in runs if r.variant == "dino_sp")
    assert sp.train_cfg.plugins["sp"]["crop_size"] == 32  # the preset's quickstart-scale section


def test_a_run_locked_by_a_live_process_is_skipped_and_a_dead_ones_lock_taken_over(tmp_path, counters):
    import socket
    import subprocess
    import sys

    cfg = load_study_config(write_study(tmp_path, [{"name": "dino"}, {"name": "random", "kind": "random"}], seeds=[0]))
    dino, rnd = plan_runs(cfg)
    locks = tmp_path / "runs" / "locks"
    locks.mkdir(parents=True)
    (locks / f"{dino.train_key}.lock").write_text(f"{os.getppid()} {socket.gethostname()}")  # alive: the test's parent
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (locks / f"{rnd.key}.lock").write_text(f"{int(dead.stdout)} {socket.gethostname()}")
    lines = []
    study(cfg, echo=lines.append)
    assert any("dino seed 0: skipped, another process" in line for line in lines)
    assert counters == {"train": 0, "eval": 1}  # only the run whose lock was stale
    assert any("1 run(s) still missing: dino seed 0" in line for line in lines)
    assert not (locks / f"{rnd.key}.lock").exists()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["missing"] == ["dino seed 0"]


def test_the_cli_finds_a_shipped_study_by_name_and_reports_what_is_missing(tmp_path):
    from wherevit.app.cli import main

    res = CliRunner().invoke(main, ["study", "quickstart", "--report-only", "--runs", str(tmp_path / "runs"),
                                    "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "15 run(s) still missing: dino seed 0, dino_sp seed 0, random seed 0" in res.output  # 3 variants x 5 seeds
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert not doc["complete"] and doc["runs"] == [] and not (tmp_path / "out" / "study.png").exists()


def test_the_cli_names_an_unregistered_plugin_in_one_line(tmp_path):
    from wherevit.app.cli import main

    path = write_study(tmp_path, [{"name": "dino"}, {"name": "dino_nope", "plugins": {"nope": {}}}])
    res = CliRunner().invoke(main, ["study", str(path)])
    assert res.exit_code == 1 and "names plug-in 'nope', which is not registered" in res.output
    assert "Traceback" not in res.output


def test_the_all_methods_study_reuses_the_quickstart_studys_runs():
    base = {(r.variant, r.seed): r.key for r in plan_runs(load_study_config("configs/study_quickstart.yaml"))}
    everything = plan_runs(load_study_config("configs/study_quickstart_all.yaml"))
    shared = {(r.variant, r.seed): r.key for r in everything if (r.variant, r.seed) in base}
    assert shared == base  # DINO, DINO + SP and random weights: the same runs, not new ones
    ibot = next(r for r in everything if r.variant == "dino_ibot")
    assert ibot.train_cfg.ibot.enabled and ibot.train_cfg.plugins == {}
    assert len({r.variant for r in everything}) == 9
