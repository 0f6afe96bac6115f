"""Recipe presets: each one holds its seed's numbers, sits under the user's settings, and splits
by model family where the seed trained the two families differently."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnvit.cli import main
from cnnvit.config import ConfigError, RunConfig, load_run_config, validate_config
from cnnvit.models import family_of_name
from cnnvit.presets import PRESETS, describe_presets
from cnnvit.study.config import StudyConfig, cells


def _run(*overrides: str) -> RunConfig:
    return load_run_config(None, list(overrides), family_of=family_of_name)


def test_seed000_is_section_3() -> None:
    # seed 000 §3.2-3.3: SGD lr 0.01 momentum 0.9, batch 64, 10 epochs, flip + rotation <= 10°,
    # CIFAR mean/std normalisation, 224 px
    cfg = _run("preset=seed000", "model.name=resnet101")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 0.01, 0.9)
    assert (cfg.optim.schedule, cfg.optim.warmup_epochs) == ("constant", 0.0)
    assert (cfg.train.batch_size, cfg.train.epochs) == (64, 10)
    assert (cfg.data.image_size, cfg.data.normalize) == (224, "dataset")
    aug = cfg.data.augment
    assert (aug.hflip, aug.rotation_degrees, aug.crop_padding) == (True, 10.0, 0)


@pytest.mark.parametrize(
    ("model", "optimizer", "lr"),
    [("resnet18", "adam", 1e-3), ("vit_base_patch16_224", "adamw", 1e-4)],
)
def test_seed001_splits_by_family(model: str, optimizer: str, lr: float) -> None:
    cfg = _run("preset=seed001", f"model.name={model}")
    assert (cfg.optim.name, cfg.optim.lr) == (optimizer, lr)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.data.image_size) == (32, 5, 224)
    assert cfg.data.augment.hflip and cfg.data.augment.rotation_degrees > 0


def test_seed003_has_the_modern_recipe() -> None:
    cfg = _run("preset=seed003", "model.name=gresnet50")
    assert (cfg.optim.name, cfg.optim.schedule, cfg.optim.warmup_epochs) == ("sgd", "cosine", 5)
    assert cfg.optim.label_smoothing == 0.1
    assert cfg.data.augment.mixup_alpha > 0 and cfg.data.augment.cutmix_alpha > 0
    assert cfg.train.ema_decay is not None


def test_seed004_is_section_2() -> None:
    # seed 004 §2.1, §2.3: Adam 1e-4, batch 100, crop 32 pad 4 + flip, no normalisation
    cfg = _run("preset=seed004", "model.name=resnet18_cifar")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", 1e-4, 0.0)
    assert (cfg.train.batch_size, cfg.data.normalize) == (100, "none")
    assert (cfg.data.augment.crop_padding, cfg.data.augment.hflip) == (4, True)
    assert cfg.data.image_size is None  # native 32 px


def test_user_settings_win_over_the_preset(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("preset: seed004\ntrain: {epochs: 7}\ndata: {augment: {hflip: false}}\n")
    cfg = load_run_config(path, ["optim.lr=3e-4"])
    assert (cfg.train.epochs, cfg.optim.lr, cfg.data.augment.hflip) == (7, 3e-4, False)
    assert (cfg.train.batch_size, cfg.data.augment.crop_padding) == (100, 4)  # from the preset
    assert cfg.preset == "seed004"


def test_unknown_preset_names_the_close_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'seed04'; did you mean seed004\?"):
        _run("preset=seed04")
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        validate_config(StudyConfig, {"models": ["resnet_mini"], "recipe": {"preset": "nope"}})


def _study(**recipe: object) -> StudyConfig:
    return validate_config(
        StudyConfig,
        {
            "data": {"spec": "synthetic", "augment": {"hflip": False}},
            "models": ["resnet18", {"name": "vit_tiny_patch16_224", "optim": {"lr": 3e-4}}],
            "recipe": {"preset": "seed001", **recipe},
        },
    )


def test_study_preset_per_family_and_user_keys_win(tmp_path: Path) -> None:
    by_model = {c.model: c.config for c in cells(_study(), tmp_path)}
    resnet, vit = by_model["resnet18"], by_model["vit_tiny_patch16_224"]
    assert (resnet.optim.name, resnet.optim.lr) == ("adam", 1e-3)
    assert (vit.optim.name, vit.optim.lr) == ("adamw", 3e-4)  # the model's own lr wins
    assert resnet.data.augment.hflip is False  # the study's data wins over the preset
    assert resnet.data.image_size == 224 and resnet.train.batch_size == 32
    assert resnet.preset == vit.preset == "seed001"


def test_study_recipe_key_applies_to_every_family(tmp_path: Path) -> None:
    study = _study(optim={"lr": 5e-4}, train={"epochs": 2})
    configs = [c.config for c in cells(study, tmp_path)]
    assert [c.optim.lr for c in configs] == [5e-4, 3e-4]  # recipe lr beats the family lr
    assert [c.optim.name for c in configs] == ["adam", "adamw"]
    assert {c.train.epochs for c in configs} == {2}


def test_study_with_preset_reloads_unchanged() -> None:
    study = _study()
    again = validate_config(StudyConfig, study.model_dump(mode="json"))
    assert again == study


def test_every_preset_builds_a_valid_run_config() -> None:
    for name in PRESETS:
        assert _run(f"preset={name}").preset == name


def test_describe_presets_flattens_family_parts() -> None:
    rows = {row["name"]: row for row in describe_presets()}
    assert set(rows) == set(PRESETS)
    assert "cnn: optim.name=adam" in rows["seed001"]["settings"]
    assert "vit: optim.lr=0.0001" in rows["seed001"]["settings"]
    assert "train.batch_size=100" in rows["seed004"]["settings"]


def test_recipes_command_lists_every_preset() -> None:
    from cnnvit.ui import console

    with console.capture() as captured:
        assert main(["recipes"]) == 0
    text = captured.get()
    assert all(name in text for name in PRESETS)
