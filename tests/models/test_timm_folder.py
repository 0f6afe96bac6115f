"""A trained run as a timm hub folder: timm loads it with the run's outputs and preprocessing."""

import json
import os
from pathlib import Path

import pytest
import timm
import torch
from timm.data import resolve_data_config

from cnnvit.cli import main
from cnnvit.folders import RunFolder
from cnnvit.models import create_model, load_into, load_weights_file
from cnnvit.models.timm_folder import load_timm_folder
from cnnvit.models.weights import read_preprocessing

assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: nothing here may reach the hub

DATA = "synthetic:train_size=256,val_size=64,image_size=16"


@pytest.fixture(scope="module", params=["resnet_mini", "vit_mini"])
def exported(request, tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, hub folder) of a 1-epoch run of the model."""
    root = tmp_path_factory.mktemp(request.param)
    run, folder = root / "run", root / "hub"
    train = ["train", "--data", DATA, "--model", request.param, "--epochs", "1"]
    assert main([*train, "--batch-size", "64", "--out", str(run), "--no-progress"]) == 0
    assert main(["hub-folder", str(run), "--out", str(folder)]) == 0
    return run, folder


def _run_model(run: Path) -> torch.nn.Module:
    """The run's own model: its evaluated weights loaded by cnnvit, not through the folder."""
    weights = RunFolder(run).evaluated_weights()
    prep = read_preprocessing(weights)
    name = json.loads((run / "results.json").read_text())["model"]
    model = create_model(name, num_classes=10, in_chans=prep.channels, img_size=prep.image_size)
    load_into(model, load_weights_file(weights), weights)
    return model.eval()


def _batch() -> torch.Tensor:
    return torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # (B, C, H, W)


def test_timm_loads_the_folder_with_the_runs_outputs(exported):
    run, folder = exported
    config = json.loads((folder / "config.json").read_text())
    extra = {"img_size": 16} if config["architecture"] == "vit_mini" else {}
    overlay = {**config["pretrained_cfg"], "file": str(folder / "model.safetensors")}
    by_name = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=overlay,
        num_classes=config["num_classes"],
        in_chans=3,
        **extra,
    ).eval()
    by_folder = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = _batch()
    with torch.no_grad():
        expected = _run_model(run)(x)  # (B, 10)
        for model in (by_name, by_folder, load_timm_folder(folder)):
            assert torch.equal(model(x), expected)


def test_the_folder_carries_the_runs_preprocessing_and_classes(exported):
    run, folder = exported
    prep = read_preprocessing(RunFolder(run).evaluated_weights())
    config = json.loads((folder / "config.json").read_text())
    assert config["label_names"] == [f"class{i}" for i in range(10)] == list(prep.class_names)
    assert config["num_classes"] == 10 and config["num_features"] > 0
    by_timm = timm.create_model(f"local-dir:{folder}", pretrained=True)
    for model in (by_timm, load_timm_folder(folder)):
        data = resolve_data_config(model=model)
        assert tuple(data["input_size"]) == (3, 16, 16) == prep.input_size
        assert tuple(data["mean"]) == prep.mean and tuple(data["std"]) == prep.std
        assert (data["crop_pct"], data["interpolation"]) == (1.0, "bilinear")


def test_cnnvit_evaluates_the_folders_weights_to_the_runs_top1(exported, tmp_path: Path, capsys):
    run, folder = exported
    weights = folder / "model.safetensors"
    assert read_preprocessing(weights) == read_preprocessing(RunFolder(run).evaluated_weights())
    name = json.loads((folder / "config.json").read_text())["architecture"]
    args = ["evaluate", "--data", DATA, "--model", name, "--weights", str(weights)]
    assert main([*args, "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    trained = json.loads((run / "metrics.json").read_text())
    assert json.loads(capsys.readouterr().out)["top1"] == trained["top1"]


def test_a_run_without_checkpoint_is_refused_in_one_line(tmp_path: Path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["hub-folder", str(tmp_path / "run"), "--out", str(tmp_path / "hub")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path / "run") in err
    assert not (tmp_path / "hub").exists()
