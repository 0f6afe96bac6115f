from pathlib import Path

import pytest

from cnnvit.config import ConfigError, RunConfig, dump_yaml, load_run_config


def test_defaults_and_overrides_are_typed():
    cfg = load_run_config(None, ["optim.lr=3e-4", "data.classes=[cat, dog]", "train.epochs=2"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.data.classes == ["cat", "dog"]
    assert cfg.train.epochs == 2 and isinstance(cfg.train.epochs, int)


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean optim.lr"):
        load_run_config(None, ["optim.lrr=1"])


def test_wrong_type_names_the_key_and_value():
    with pytest.raises(ConfigError, match=r"'train.epochs'.*integer.*2.5"):
        load_run_config(None, ["train.epochs=2.5"])
    with pytest.raises(ConfigError, match=r"'optim.name'"):
        load_run_config(None, ["optim.name=rmsprop"])


def test_yaml_file_then_overrides(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name: vit_mini\noptim:\n  name: sgd\n  lr: 0.01\n")
    cfg = load_run_config(path, ["optim.lr=0.1"])
    assert (cfg.model.name, cfg.optim.name, cfg.optim.lr) == ("vit_mini", "sgd", 0.1)


def test_bad_key_in_yaml_file_is_named(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"'train.epoch'.*did you mean train.epochs"):
        load_run_config(path)


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_run_config(bad)


def test_dump_round_trips(tmp_path: Path):
    cfg = load_run_config(None, ["model.freeze.trainable_blocks=2", "optim.betas=[0.8, 0.9]"])
    dump_yaml(cfg, tmp_path / "c.yaml")
    assert load_run_config(tmp_path / "c.yaml") == cfg
    assert RunConfig() != cfg
