from pathlib import Path

import pytest

from cnnvit.config import ConfigError
from cnnvit.study.config import StudyConfig, cells, load_study


def _study(**extra) -> StudyConfig:
    data = {
        "data": {"spec": "synthetic"},
        "models": ["resnet_mini", {"name": "vit_mini", "optim": {"lr": 1.0e-4, "name": "adam"}}],
        "fractions": [0.5, 0.1],
        "seeds": [0, 1],
        "recipe": {"optim": {"name": "sgd", "lr": 0.01}, "train": {"epochs": 3}},
        **extra,
    }
    return StudyConfig.model_validate(data)


def test_grid_order_ids_and_folders(tmp_path: Path):
    grid = cells(_study(), tmp_path)
    assert len(grid) == 8
    assert [c.id for c in grid[:4]] == [
        "resnet_mini-f0.1-s0",
        "vit_mini-f0.1-s0",
        "resnet_mini-f0.1-s1",
        "vit_mini-f0.1-s1",
    ]
    assert all(c.config.output.dir == tmp_path / "runs" / c.id for c in grid)


def test_per_model_recipe_overrides_only_that_model(tmp_path: Path):
    by_id = {c.id: c.config for c in cells(_study(), tmp_path)}
    resnet, vit = by_id["resnet_mini-f0.5-s1"], by_id["vit_mini-f0.5-s1"]
    assert (resnet.optim.name, resnet.optim.lr) == ("sgd", 0.01)
    assert (vit.optim.name, vit.optim.lr) == ("adam", 1e-4)
    assert resnet.train.epochs == vit.train.epochs == 3
    assert (resnet.data.train_fraction, resnet.data.split_seed, resnet.train.seed) == (0.5, 1, 1)


def test_freeze_axis_multiplies_the_grid(tmp_path: Path):
    grid = cells(_study(grid={"trainable_blocks": [None, 0, 2]}), tmp_path)
    assert len(grid) == 24
    assert {c.config.model.freeze.trainable_blocks for c in grid} == {None, 0, 2}
    assert "resnet_mini-f0.1-k2-s0" in {c.id for c in grid}


def test_bad_model_override_names_the_model(tmp_path: Path):
    study = _study(models=[{"name": "vit_mini", "optim": {"lrr": 1}}])
    with pytest.raises(ConfigError, match=r"(?s)model vit_mini: .*optim.lrr"):
        cells(study, tmp_path)


def test_duplicate_labels_and_bad_fractions_are_refused(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text("models: [resnet_mini, resnet_mini]\n")
    with pytest.raises(ConfigError, match="share a label"):
        load_study(path)
    path.write_text("models: [resnet_mini]\nfractions: [0, 0.5]\n")
    with pytest.raises(ConfigError, match="fractions"):
        load_study(path)


def test_default_studies_meet_the_brief():
    cpu, cuda = load_study(None), load_study(None, cuda=True)
    assert [m.name for m in cpu.models] == ["resnet_mini", "vit_mini"]
    assert [m.name for m in cuda.models] == ["resnet18_cifar", "vit_small_data"]
    for study in (cpu, cuda):
        # A fair study: the same optimiser steps at every size, three seeds to pair, and at least
        # four sizes for the learning-curve fit.
        assert study.data.spec == "fashion-mnist"
        assert len(study.fractions) >= 4 and max(study.fractions) / min(study.fractions) >= 5
        assert len(study.seeds) >= 3
        assert study.recipe.train.budget.kind == "steps"
        assert study.data.selection_size >= 1000
    # The CPU study's cost section answers seed 002's deployment question (ONNX Runtime, int8).
    assert cpu.profile.runtimes == ["torch", "onnxruntime"]


def test_labels_become_safe_folder_names(tmp_path: Path):
    study = _study(models=[{"name": "vit_mini", "label": "ViT-B/16 <x>"}, "resnet_mini"])
    grid = cells(study, tmp_path)
    assert grid[0].id == "ViT-B_16__x_-f0.1-s0"
    assert all(c.config.output.dir.parent == tmp_path / "runs" for c in grid)
    clash = _study(
        models=[{"name": "vit_mini", "label": "a/b"}, {"name": "resnet_mini", "label": "a_b"}]
    )
    with pytest.raises(ConfigError, match="clashing"):
        cells(clash, tmp_path)


def test_each_model_may_fix_its_own_unfrozen_depth(tmp_path: Path):
    models = [
        {"name": "resnet_mini", "freeze": {"trainable_blocks": 2}},
        {"name": "vit_mini", "freeze": {"trainable_blocks": 3, "also_trainable": ["patch_embed"]}},
    ]
    by_model = {c.model: c for c in cells(_study(models=models), tmp_path)}
    assert by_model["resnet_mini"].config.model.freeze.trainable_blocks == 2
    vit = by_model["vit_mini"].config.model.freeze
    assert (vit.trainable_blocks, vit.also_trainable) == (3, ["patch_embed"])
    # not a grid axis: the two models stay one head-to-head group in the report
    assert by_model["resnet_mini"].trainable_blocks is None
    assert by_model["resnet_mini"].id == "resnet_mini-f0.5-s1"  # no -k in the folder name


def test_own_depth_and_depth_sweep_do_not_mix():
    models = [{"name": "resnet_mini", "freeze": {"trainable_blocks": 2}}, "vit_mini"]
    with pytest.raises(ValueError, match=r"sweeps the unfrozen depth, but \['resnet_mini'\]"):
        _study(models=models, grid={"trainable_blocks": [1, 2]})


def test_progress_bars_do_not_make_a_different_study():
    from cnnvit.study.run import _trained_part

    def study(progress: bool, steps: int) -> dict:
        return {"name": "s", "recipe": {"train": {"progress": progress, "epochs": steps}}}

    assert _trained_part(study(True, 1)) == _trained_part(study(False, 1))
    assert _trained_part(study(True, 1)) != _trained_part(study(True, 2))
