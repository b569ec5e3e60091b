"""The study report on fixed numbers: verdicts by the metric's direction, bold only outside the noise."""

import json

import pytest

from wherevit.train.study.report import machine_info, markdown_table, summarise, write_report

METRICS = {"depth_rmse": ("depth", "depth RMSE (m)", False), "rel_loc_8way": ("spatial", "8-way rel. loc.", True)}
VARIANTS = [{"name": "dino", "kind": "trained"}, {"name": "sp", "kind": "trained"}, {"name": "chance", "kind": "chance"}]


def records():
    rows = {  # seed: (dino rmse, dino 8-way, sp rmse, sp 8-way)
        0: (2.60, 0.55, 2.50, 0.56),
        1: (2.70, 0.60, 2.61, 0.58),
        2: (2.65, 0.50, 2.54, 0.53),
    }
    out = []
    for seed, (dr, d8, sr, s8) in rows.items():
        chance = {"depth_rmse": 3.1 + seed / 100, "rel_loc_8way": 0.125}
        out.append({"variant": "dino", "seed": seed, "scores": {"depth_rmse": dr, "rel_loc_8way": d8}, "chance": chance})
        out.append({"variant": "sp", "seed": seed, "scores": {"depth_rmse": sr, "rel_loc_8way": s8}, "chance": chance})
    return out


def test_verdicts_follow_the_paired_interval_and_the_metric_direction():
    s = summarise(VARIANTS, "dino", records(), METRICS)
    rmse = s["cells"]["sp"]["depth_rmse"]
    # paired differences -0.10, -0.09, -0.11: mean -0.10, sd 0.01 -> half-width 4.302653 * 0.01 / sqrt(3)
    assert rmse["diff"]["mean"] == pytest.approx(-0.10) and rmse["diff"]["half_width"] == pytest.approx(0.0248414, abs=1e-6)
    assert rmse["verdict"] == "better"  # lower RMSE is better
    loc = s["cells"]["sp"]["rel_loc_8way"]
    # +0.01, -0.02, +0.03: mean 0.00667, sd 0.025166 -> half-width 4.302653 * 0.025166 / sqrt(3) = 0.06252
    assert loc["diff"]["mean"] == pytest.approx(0.02 / 3) and loc["diff"]["half_width"] == pytest.approx(0.06252, abs=1e-5)
    assert loc["verdict"] == "noise"
    assert s["cells"]["dino"]["depth_rmse"]["verdict"] == "baseline"
    # chance: each seed's trivial baseline, read off that seed's baseline run
    assert s["cells"]["chance"]["depth_rmse"]["values"] == {"0": 3.1, "1": 3.11, "2": 3.12}
    assert s["cells"]["chance"]["depth_rmse"]["verdict"] == "worse"


def test_the_table_bolds_only_differences_outside_the_noise():
    table = markdown_table(summarise(VARIANTS, "dino", records(), METRICS), METRICS, {"sp": "DINO + SP"})
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert "| evaluation | dino | DINO + SP | chance |" in table
    assert "(**-0.100 ± 0.025** better)" in rows["| depth RMSE (m) ↓"]
    assert "(+0.007 ± 0.063, noise)" in rows["| 8-way rel. loc. ↑"] and "**" not in rows["| 8-way rel. loc. ↑"].split("|")[3]
    assert "2.650 ± 0.124" in rows["| depth RMSE (m) ↓"]  # dino: mean 2.65, sd 0.05 -> 4.302653 * 0.05 / sqrt(3)
    assert "interval over 3 seeds" in table
    partial = [r for r in records() if not (r["variant"] == "sp" and r["seed"] == 2)]
    assert "interval over 2-3 seeds" in markdown_table(summarise(VARIANTS, "dino", partial, METRICS), METRICS)


def test_contrasts_compare_a_variant_with_its_own_reference():
    recs = records() + [{"variant": "ibot", "seed": seed, "scores": {"depth_rmse": r, "rel_loc_8way": 0.5}, "chance": {}}
                        for seed, r in ((0, 2.55), (1, 2.66), (2, 2.57))]
    variants = VARIANTS + [{"name": "ibot", "kind": "trained"}]
    s = summarise(variants, "dino", recs, METRICS, contrasts_of={"sp": "ibot"})
    (c,) = s["contrasts"]
    # sp - ibot rmse: -0.05, -0.05, -0.03: mean -0.04333, sd 0.011547 -> half-width 4.302653 * 0.011547 / sqrt(3)
    assert c["variant"] == "sp" and c["reference"] == "ibot"
    assert c["cells"]["depth_rmse"]["diff"]["mean"] == pytest.approx(-0.13 / 3)
    assert c["cells"]["depth_rmse"]["diff"]["half_width"] == pytest.approx(0.028684, abs=1e-5)
    assert c["cells"]["depth_rmse"]["verdict"] == "better"
    # 8-way: +0.06, +0.08, +0.03 over ibot's 0.5: mean 0.0567, sd 0.025166 -> half-width 0.0625 contains 0
    assert c["cells"]["rel_loc_8way"]["verdict"] == "noise"
    table = markdown_table(s, METRICS, {"sp": "DINO + SP", "ibot": "DINO + iBOT"})
    assert "| evaluation | DINO + SP vs DINO + iBOT |" in table
    assert "| depth RMSE (m) ↓ | **-0.043 ± 0.029** better |" in table
    assert "| 8-way rel. loc. ↑ | +0.057 ± 0.063, noise |" in table
    # the main table is unchanged: differences there are still against the baseline
    assert summarise(variants, "dino", recs, METRICS)["cells"] == s["cells"]


def test_the_results_file_records_machine_command_and_versions(tmp_path):
    study = {"name": "fixed", "baseline": "dino", "variants": VARIANTS}
    paths = write_report(tmp_path, study, records(), ["sp seed 3"], METRICS, "wherevit study fixed.yaml")
    doc = json.loads(paths["results"].read_text())
    assert doc["command"] == "wherevit study fixed.yaml" and doc["missing"] == ["sp seed 3"] and not doc["complete"]
    assert doc["machine"] == machine_info() and "numpy" in doc["versions"] and len(doc["runs"]) == 6
    assert paths["plot"].stat().st_size > 1000 and "# Study: fixed" in paths["table"].read_text()


def test_the_statistics_and_the_report_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; import wherevit.train.study.report, wherevit.train.study.stats; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
