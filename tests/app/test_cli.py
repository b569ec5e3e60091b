import json

from click.testing import CliRunner

from wherevit.app.cli import main


def test_help_examples_name_real_commands_and_options():
    """Each `wherevit ...` example in the top-level help parses against the real command tree."""
    import shlex

    import click

    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0
    examples = [ln.split("#")[0].strip() for ln in res.output.splitlines() if ln.strip().startswith("wherevit ")]
    assert len(examples) >= 4
    for ex in examples:
        words = shlex.split(ex)[1:]
        cmd, ctx = main, click.Context(main)
        while isinstance(cmd, click.Group):  # walk down to the leaf command
            cmd = cmd.get_command(ctx, words.pop(0))
            assert cmd is not None, f"help example names no command: {ex}"
        known = {o for p in cmd.params for o in p.opts + p.secondary_opts}
        unknown = [w.split("=")[0] for w in words if w.startswith("-") and w.split("=")[0] not in known]
        assert not unknown, f"help example uses unknown option(s) {unknown}: {ex}"


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only user-actionable errors (WherevitError) become one-line messages; a bug is not disguised."""
    import wherevit.train.config as tc

    def boom(*a, **k):
        raise KeyError("internal")

    monkeypatch.setattr(tc, "load_train_config", boom)
    res = CliRunner().invoke(main, ["train", "--out", "/tmp/never"])
    assert res.exit_code != 0 and isinstance(res.exception, KeyError)


def test_train_reports_config_errors_without_traceback(tmp_path):
    res = CliRunner().invoke(main, ["train", "--set", "optim.lrr=1", "--out", str(tmp_path)])
    assert res.exit_code != 0
    assert "unknown config key 'optim.lrr'" in res.output
    assert "Traceback" not in res.output


def test_train_reports_missing_data_folder(tmp_path):
    res = CliRunner().invoke(main, ["train", "--set", "data.source=folder", "--set", f"data.path={tmp_path}/nope",
                                    "--out", str(tmp_path / "run")])
    assert res.exit_code != 0 and "data folder does not exist" in res.output


def test_eval_spatial_on_random_tiny_model(tmp_path, tiny_cfg):
    from wherevit.train.loop import train

    train(tiny_cfg(total_steps=2, plugins={}), tmp_path / "run", progress=False)
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(main, ["eval", "spatial", str(tmp_path / "run"), "--n-images", "40", "--crop-size", "16",
                                    "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    ps = data["position_scale"]
    assert set(ps) >= {"mae_dx", "mae_dy", "mae_logscale", "r2_dx", "r2_dy", "r2_logscale"}
    assert 0 <= data["relative_location"]["acc_8way"] <= 1
    assert data["backbone"]["step"] == 2


def test_data_synth_writes_deterministic_pngs(tmp_path):
    res = CliRunner().invoke(main, ["data", "synth", str(tmp_path / "a"), "-n", "3", "--size", "32", "--seed", "5"])
    assert res.exit_code == 0 and "wrote 3 images" in res.output
    CliRunner().invoke(main, ["data", "synth", str(tmp_path / "b"), "-n", "3", "--size", "32", "--seed", "5"])
    for i in range(3):
        name = f"scene_{i:06d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_resume_uses_the_runs_own_config(tmp_path, tiny_cfg):
    import yaml
    from conftest import tiny_train_dict

    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_train_dict(total_steps=4, ckpt_every=2, plugins={})))
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "-c", str(cfg_file), "--out", str(run), "--stop-at", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["train", "--out", str(run), "--resume", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "done: step 4" in res.output
