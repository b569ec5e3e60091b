import pytest
from conftest import tiny_train_dict

from wherevit.base.config import ConfigError, from_dict
from wherevit.train.config import TrainConfig, load_train_config, preset_names


def test_presets_load():
    assert {"quickstart", "vit_s16_dino_sp", "vit_s16_dino"} <= set(preset_names())
    for name in preset_names():
        cfg = load_train_config(name)
        assert cfg.total_steps > 0


def test_vit_s16_preset_has_sp_and_the_baseline_does_not():
    assert "sp" in load_train_config("vit_s16_dino_sp").plugins
    assert load_train_config("vit_s16_dino").plugins == {}


def test_ibot_and_posfield_presets_change_only_their_sections():
    base = load_train_config("vit_s16_dino").to_dict()
    ibot = load_train_config("vit_s16_dino_ibot").to_dict()
    pos = load_train_config("vit_s16_dino_posfield").to_dict()
    assert ibot["ibot"]["enabled"] and {k for k in base if base[k] != ibot[k]} == {"ibot"}
    assert {k for k in ibot if ibot[k] != pos[k]} == {"plugins"} and list(pos["plugins"]) == ["posfield"]


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.base_rl' \(did you mean 'base_lr'\?\)"):
        load_train_config("quickstart", ["optim.base_rl=0.1"])


def test_unknown_plugin_key_is_named():
    d = tiny_train_dict()
    d["plugins"]["sp"]["hiden_dim"] = 3
    with pytest.raises(ConfigError, match=r"plugins\.sp\.hiden_dim"):
        from_dict(TrainConfig, d)


def test_unknown_plugin_is_named():
    d = tiny_train_dict()
    d["plugins"]["nope"] = {}
    with pytest.raises(ConfigError, match="unknown plug-in 'plugins.nope'.*sp"):
        from_dict(TrainConfig, d)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"total_steps: expected an integer, got 'many'"):
        load_train_config("quickstart", ["total_steps=many"])
    with pytest.raises(ConfigError, match=r"model: drop_path_rate must be in \[0, 1\), got 1.5"):
        load_train_config("quickstart", ["model.drop_path_rate=1.5"])


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no config file or preset named"):
        load_train_config("does-not-exist")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_train_config(bad)


def test_folder_source_needs_a_path():
    with pytest.raises(ConfigError, match="data.path is required"):
        load_train_config("quickstart", ["data.source=folder"])
