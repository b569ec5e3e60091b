"""The study report on fixed numbers: verdicts by the metric's direction from p-values corrected over
each table, bold only for the differences that survive the correction."""

import json
import math

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
    # depth: t = -0.10 / (0.01 / sqrt 3) = -17.3205, df 2: p = 1 - 17.3205 / sqrt(2 + 300) = 0.003311; the family
    # is the 4 marked cells (sp and chance on both metrics), and this p is the smallest: Holm p_adj = 4 p = 0.0132
    p_rmse = 1 - 10 * math.sqrt(3) / math.sqrt(2 + 300)
    assert f"(**-0.100 ± 0.025** better, p_adj {4 * p_rmse:.3f})" in rows["| depth RMSE (m) ↓"]
    # 8-way: t = 0.006667 / (0.025166 / sqrt 3) = 0.45883, p = 1 - t / sqrt(2 + t^2) = 0.6914, the family's largest:
    # Holm leaves it (1 x p, no smaller adjusted value above it)
    t = (0.02 / 3) / (math.sqrt(0.00063333333) / math.sqrt(3))
    assert f"(+0.007 ± 0.063, noise, p_adj {1 - t / math.sqrt(2 + t * t):.3f})" in rows["| 8-way rel. loc. ↑"]
    assert "**" not in rows["| 8-way rel. loc. ↑"].split("|")[3]
    assert "**Holm correction** over the 4 comparisons of this table" in table
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
    # rmse: t = -0.04333 / (0.011547 / sqrt 3) = -6.5, df 2: p = 1 - 6.5 / sqrt(44.25) = 0.02284; 8-way: t = 3.9,
    # p = 1 - 3.9 / sqrt(17.21) = 0.05990. Holm over this table's 2: 2 x 0.02284 = 0.0457, max(0.0457, 0.0599)
    assert "| depth RMSE (m) ↓ | **-0.043 ± 0.029** better, p_adj 0.046 |" in table
    assert "| 8-way rel. loc. ↑ | +0.057 ± 0.063, noise, p_adj 0.060 |" in table
    assert s["correction"]["contrast_family_size"] == 2 and s["correction"]["family_size"] == 6  # sp, chance, ibot x 2
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


def _family(diffs):
    """Records of three variants a, b, c over seeds 0-2 whose paired differences to dino are ``diffs``."""
    out = []
    for seed in range(3):
        out.append({"variant": "dino", "seed": seed, "scores": {"rel_loc_8way": 0.5 + seed / 10}, "chance": {}})
        for name, d in diffs.items():
            out.append({"variant": name, "seed": seed, "scores": {"rel_loc_8way": 0.5 + seed / 10 + d[seed]}, "chance": {}})
    return out


def test_a_difference_whose_interval_excludes_zero_can_be_noise_after_the_correction():
    metrics = {"rel_loc_8way": METRICS["rel_loc_8way"]}
    variants = [{"name": n, "kind": "trained"} for n in ("dino", "a", "b", "c")]
    # each variant: differences 0.03, 0.02, 0.04 -> t = 5.196, df 2, p = 1 - 5.196 / sqrt(29) = 0.035080 < 0.05
    recs = _family({n: (0.03, 0.02, 0.04) for n in "abc"})
    p = 1 - 3 * math.sqrt(3) / math.sqrt(29)
    holm = summarise(variants, "dino", recs, metrics)
    for n in "abc":
        cell = holm["cells"][n]["rel_loc_8way"]
        assert cell["test"]["p"] == pytest.approx(p, rel=1e-9)
        assert cell["diff"]["low"] > 0  # the uncorrected interval excludes 0 ...
        assert cell["p_adj"] == pytest.approx(3 * p, rel=1e-9) and cell["verdict"] == "noise"  # ... Holm: 3 p = 0.105
    bh = summarise(variants, "dino", recs, metrics, correction="bh")
    for n in "abc":  # Benjamini-Hochberg: 3 p / 3 = p for all three: they stay
        assert bh["cells"][n]["rel_loc_8way"]["p_adj"] == pytest.approx(p, rel=1e-9)
        assert bh["cells"][n]["rel_loc_8way"]["verdict"] == "better"
    table = markdown_table(bh, metrics)
    assert "**Benjamini-Hochberg correction** over the 3 comparisons" in table
    with pytest.raises(ValueError, match="unknown multiple-comparison correction"):
        summarise(variants, "dino", recs, metrics, correction="none")


def test_the_verdict_direction_follows_the_sign_and_the_metric():
    metrics = {"rel_loc_8way": METRICS["rel_loc_8way"], "depth_rmse": METRICS["depth_rmse"]}
    variants = [{"name": "dino", "kind": "trained"}, {"name": "a", "kind": "trained"}]
    recs = []
    for seed in range(3):
        recs.append({"variant": "dino", "seed": seed, "scores": {"rel_loc_8way": 0.5, "depth_rmse": 2.0 + seed}, "chance": {}})
        recs.append({"variant": "a", "seed": seed, "scores": {"rel_loc_8way": 0.4 - seed / 1000, "depth_rmse": 1.0 + seed * 1.001},
                     "chance": {}})
    cells = summarise(variants, "dino", recs, metrics)["cells"]["a"]
    assert cells["rel_loc_8way"]["verdict"] == "worse"  # lower accuracy
    assert cells["depth_rmse"]["verdict"] == "better"  # lower error
