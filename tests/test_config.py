"""EditConfig: validation, coercion, presets, hashing."""
import pytest
import yaml

import workbench as wb
from workbench.config import EditConfig, from_params, preset, presets
from workbench.errors import ConfigError


def test_presets_exist_and_load():
    assert set(presets()) >= {"ft-uke", "locft-bf", "ft-m", "ft-l", "lora", "adalora-uke"}
    for name in presets():
        cfg = preset(name)
        assert cfg == EditConfig.from_dict(cfg.to_dict())  # round trip through plain types
    assert preset("ft-uke").components == ("down",) and preset("ft-uke").loss_scope == "target"
    assert preset("locft-bf").schedule == "breadth_first"
    assert preset("adalora-uke").method == "adalora" and preset("adalora-uke").layers == "all"
    assert preset("ft-l").loss_scope == "prompt_last" and preset("ft-l").norm_constraint > 0


def test_yaml_strings_are_coerced(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lr: 1e-4\nlayers: 3\ncomponents: [q, down]\nweight_decay: '0'\n")
    cfg = EditConfig.from_yaml(p)
    assert yaml.safe_load("lr: 1e-4")["lr"] == "1e-4"  # the PyYAML trap this guards against
    assert (cfg.lr, cfg.layers, cfg.components, cfg.weight_decay) == (1e-4, (3,), ("q", "down"), 0.0)


@pytest.mark.parametrize("bad,fragment", [
    ({"loss_scope": "all"}, "choose one of: 'prompt_last', 'first_token', 'target', 'prompt_target'"),
    ({"schedule": "bfs"}, "'depth_first', 'breadth_first'"),
    ({"components": ["down", "ffn"]}, "components='ffn' is not valid"),
    ({"method": "grace"}, "'ft', 'lora', 'adalora', 'rome', 'memit', 'alphaedit', 'unke', 'anyedit'"),
    ({"optimizer": "lion"}, "'adam', 'adamw', 'sgd'"),
    ({"dtype": "int8"}, "dtype='int8'"),
    ({"lr": "fast"}, "lr='fast': expected a number"),
    ({"epochs": 2.5}, "expected an integer"),
    ({"batch_size": 0}, "batch_size=0 must be >= 1"),
    ({"micro_batch_size": 8, "batch_size": 4}, "exceeds batch_size"),
    ({"chat_template": "yes"}, "expected true or false"),
    ({"layers": "some"}, 'expected a list of integers or "all"'),
    ({"lr": -1.0}, "must be >= 0"),
])
def test_bad_values_name_the_option(bad, fragment):
    with pytest.raises(ConfigError, match=None) as e:
        EditConfig(**bad)
    assert fragment in str(e.value)


def test_unknown_keys_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['lrate'\].*valid options: model_name"):
        EditConfig.from_dict({"lrate": 1e-3})
    p = tmp_path / "c.yaml"
    p.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="c.yaml"):
        EditConfig.from_yaml(p)
    with pytest.raises(ConfigError, match="unknown option"):
        EditConfig().replace(layer=3)
    with pytest.raises(ConfigError, match="preset='nope' is not valid; choose one of: 'adalora-uke'"):
        preset("nope")


def test_hash_is_stable_and_sensitive():
    a, b = EditConfig(), EditConfig(lr=5e-4)
    assert a.hash() == b.hash() and len(a.hash()) == 12
    assert a.hash() != a.replace(layers=(16,)).hash()


def test_frozen_and_from_params():
    cfg = EditConfig()
    with pytest.raises(Exception):
        cfg.lr = 1.0
    got = from_params({"lr": 1e-3, "layers": [4], "n_facts": 10, "wb": wb}, base="ft-uke")
    assert got.lr == 1e-3 and got.layers == (4,) and got.components == preset("ft-uke").components


def test_smoke_shrinks_steps():
    s = preset("locft-bf").smoke()
    assert s.epochs <= 4 and s.steps_per_edit <= 8
