"""Weights that cnnvit writes carry their preprocessing and class names, and every reader uses
them unless told otherwise (issue 13, point 7: `evaluate --model --weights --data folder:` fed a
16 px run 224 px ImageNet-normalised images and scored far below the run's own top-1)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from cnnvit.cli import main
from cnnvit.config import load_run_config
from cnnvit.data.pipeline import load_splits, normalization
from cnnvit.data.readers import read_dataset
from cnnvit.errors import UserError
from cnnvit.evaluate.inference import Preprocess
from cnnvit.models import create_model
from cnnvit.models.weights import Preprocessing, preprocessing_metadata, read_preprocessing
from cnnvit.train.checkpoint import save_checkpoint
from cnnvit.train.run import train

SPEC = "synthetic:train_size=600,val_size=200,image_size=16"
CLASSES = [f"class{i}" for i in range(10)]
QUIET = ["--no-progress", "--device", "cpu", "--set", "data.num_workers=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 16 px resnet_mini run (dataset mean/std), and its 200 test images as a folder:
    ``data/val/<class>/`` (the test split there) and the same images in ``data/train/``."""
    root = tmp_path_factory.mktemp("weights")
    cfg = load_run_config(
        None,
        [
            f"data.spec={SPEC}",
            f"output.dir={root / 'run'}",
            "train.epochs=3",
            "train.batch_size=64",
            "train.progress=false",
            "train.device=cpu",
        ],
    )
    assert train(cfg)["status"] == "completed"
    test = read_dataset(SPEC).val
    for split in ("train", "val"):
        for i, (pixels, label) in enumerate(zip(test.images, test.labels, strict=True)):
            path = root / "data" / split / CLASSES[label] / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root


def _weights(root: Path) -> Path:
    return next((root / "run" / "checkpoints").glob("epoch-*/model.safetensors"))


def _evaluate(root: Path, weights: Path, out: Path, *more: str) -> int:
    data = f"folder:{root / 'data'}"
    args = ["evaluate", "--model", "resnet_mini", "--weights", str(weights), "--data", data]
    return main([*args, "--out", str(out), *QUIET, *more])


def test_evaluating_the_weights_on_a_folder_gives_the_runs_own_top1(trained, tmp_path, capsys):
    run = json.loads((trained / "run" / "metrics.json").read_text())
    assert run["top1"] > 0.3  # learned something: wrong preprocessing shows
    capsys.readouterr()
    assert _evaluate(trained, _weights(trained), tmp_path / "eval") == 0
    err = capsys.readouterr().err
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["num_images"] == run["num_images"] == 200
    assert (again["top1"], again["top5"]) == (run["top1"], run["top5"])
    assert again["confusion_matrix"] == run["confusion_matrix"]
    assert re.search(r"preprocessing: 16 px, 3 channels, .*\(all from model\.safetensors\)", err)


def test_the_run_writes_its_preprocessing_into_its_weights(trained):
    cfg = load_run_config(None, [f"data.spec={SPEC}"])
    mean, std = normalization(cfg.data, load_splits(cfg.data), 3)
    assert read_preprocessing(_weights(trained)) == Preprocessing(
        image_size=16,
        channels=3,
        mean=tuple(mean),
        std=tuple(std),
        class_names=tuple(CLASSES),
        model="resnet_mini",
    )
    assert mean != (0.485, 0.456, 0.406)  # its own dataset's, not ImageNet's


def test_metadata_round_trips_through_every_checkpoint_file(tmp_path):
    meta = preprocessing_metadata(
        image_size=28,
        channels=1,
        mean=[0.286],
        std=[0.353],
        class_names=["T-shirt/top", "Trouser", "Ünïcode"],
        model="vit_mini",
    )
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert json.loads(meta["cnnvit.input_size"]) == [1, 28, 28]
    model = create_model("resnet_mini", num_classes=3, in_chans=1)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    folder = save_checkpoint(tmp_path, 4, model, {"epoch": 4}, model, best, metadata=meta)
    expected = Preprocessing(28, 1, (0.286,), (0.353,), ("T-shirt/top", "Trouser", "Ünïcode"))
    for name in ("model", "ema", "best"):
        file = folder / f"{name}.safetensors"
        assert read_preprocessing(file) == Preprocessing(**{**vars(expected), "model": "vit_mini"})
        with safe_open(str(file), framework="pt") as f:
            assert f.metadata()["epoch"] == "4"


def test_a_foreign_weights_file_is_evaluated_as_before(trained, tmp_path, capsys):
    torch.manual_seed(0)
    foreign = tmp_path / "foreign.safetensors"
    save_file(create_model("resnet_mini", num_classes=10).state_dict(), foreign)
    assert read_preprocessing(foreign) is None
    capsys.readouterr()
    small = ["--set", "data.max_test_images=20", "--set", "data.in_memory=never"]
    assert _evaluate(trained, foreign, tmp_path / "eval", *small) == 0
    err = capsys.readouterr().err
    # timm's defaults for a folder: 224 px, ImageNet's mean and std
    assert (
        "preprocessing: 224 px, 3 channels, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)"
        in err
    )
    assert "the data config (foreign.safetensors records no preprocessing)" in err
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_images"] == 20


def test_an_explicit_size_or_normalisation_wins(trained, tmp_path, capsys):
    weights = _weights(trained)
    capsys.readouterr()
    assert _evaluate(trained, weights, tmp_path / "a", "--set", "data.image_size=24") == 0
    err = capsys.readouterr().err
    assert "preprocessing: 24 px, 3 channels" in err
    assert "size from data.image_size=24, set explicitly; channels, normalisation from model" in err
    assert _evaluate(trained, weights, tmp_path / "b", "--set", "data.normalize=imagenet") == 0
    err = capsys.readouterr().err
    assert "preprocessing: 16 px, 3 channels, mean (0.485, 0.456, 0.406)" in err
    assert "normalisation from data.normalize=imagenet, set explicitly" in err
    assert _evaluate(trained, weights, tmp_path / "c", "--set", "data.channels=1") == 2
    assert "takes 3-channel input" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("classes", "how"),
    [(["class1", "class0", *CLASSES[2:]], "in another order"), (CLASSES[:2], "differ")],
)
def test_data_with_other_classes_is_refused(trained, tmp_path, capsys, classes, how):
    setting = f"data.classes={json.dumps(classes)}"
    assert _evaluate(trained, _weights(trained), tmp_path / "e", "--set", setting) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    weights = "(class0, class1, class2, class3, class4, class5, ... (10 in all))"
    data = ", ".join(classes[:6]) + (", ... (10 in all)" if len(classes) > 6 else "")
    assert f"the classes of the weights {weights} and of --data folder:" in err
    assert f"/data ({data}) {how}" in err
    assert f"{how}, so the logits would be mislabelled" in err
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_the_one_pass_evaluation_uses_the_weights_preprocessing(trained, tmp_path, capsys):
    data = f"folder:{trained / 'data'}"
    args = ["evaluate", "--pretrained", "--model", "resnet_mini", "--weights"]
    out = tmp_path / "one-pass"
    capsys.readouterr()
    assert main([*args, str(_weights(trained)), "--data", data, "--out", str(out), *QUIET[:3]]) == 0
    assert "resnet_mini preprocessing: 16 px (shorter side 16" in capsys.readouterr().err
    run = json.loads((trained / "run" / "metrics.json").read_text())
    metrics = json.loads((out / "resnet_mini" / "metrics.json").read_text())
    assert abs(metrics["top1"] - run["top1"]) <= 1 / 200  # float order of normalising may differ


def test_classify_names_the_weights_classes(trained, tmp_path, capsys):
    image = next((trained / "data" / "val" / "class3").iterdir())
    args = ["classify", str(image), "--model", "resnet_mini", "--weights", str(_weights(trained))]
    capsys.readouterr()
    assert main([*args, "--json", str(tmp_path / "top.json"), "--device", "cpu"]) == 0
    assert "resnet_mini preprocessing: 16 px" in capsys.readouterr().err
    (row,) = json.loads((tmp_path / "top.json").read_text())
    assert set(row["labels"]) <= set(CLASSES)
    assert main([*args, "--num-classes", "1000", "--device", "cpu"]) == 2
    assert "has 10 classes" in capsys.readouterr().err


def test_an_analysis_subject_from_weights_sees_what_the_run_saw(trained):
    from cnnvit.analyze.images import images_from_spec
    from cnnvit.analyze.subject import subject_from_name

    weights = _weights(trained)
    subject = subject_from_name("resnet_mini", classes=None, weights=weights)
    recorded = read_preprocessing(weights)
    assert (subject.image_size, subject.channels) == (16, 3)
    assert (subject.mean, subject.std, tuple(subject.classes)) == (
        recorded.mean,
        recorded.std,
        recorded.class_names,
    )
    images = images_from_spec(f"folder:{trained / 'data'}", image_size=16)
    top1 = float((subject.logits(images.images).argmax(1) == images.labels).float().mean())
    run = json.loads((trained / "run" / "metrics.json").read_text())
    assert abs(top1 - run["top1"]) <= 1 / 200
    with pytest.raises(UserError, match="in another order"):
        subject_from_name("resnet_mini", classes=CLASSES[::-1], weights=weights)


def test_one_channel_weights_get_luma():
    prep = Preprocess.from_weights(Preprocessing(8, 1, (0.5,), (0.25,)))
    x = torch.rand(2, 3, 8, 8)
    luma = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(prep.normalize(x.clone()), (luma - 0.5) / 0.25)
