"""Bad input that used to end in a traceback or in a silently wrong result is refused in one
line with exit status 2, and nothing is written (issue 13, items 8 and 9)."""

from pathlib import Path

import pytest
from safetensors.torch import save_file

from cnnvit.cli import main
from cnnvit.models import create_model

DATA = "synthetic:train_size=200,val_size=50,image_size=16"


def _refused(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("more", "expected"),
    [
        (["--set", "optim.lr=.inf"], "config key 'optim.lr': Input should be a finite number"),
        (["--set", "optim.lr=.nan"], "config key 'optim.lr': Input should be a finite number"),
        (
            ["--model", "vit_mini", "--set", "data.image_size=30"],
            "vit_mini: img_size 30 is not a multiple of patch_size 4",
        ),
        (["--set", "model.kwargs.num_classes=3"], "model.kwargs cannot set num_classes"),
        (["--set", "model.kwargs.no_such_argument=1"], "does not accept model.kwargs"),
    ],
)
def test_bad_train_input_is_one_line_and_writes_nothing(tmp_path, capsys, more, expected):
    out = tmp_path / "run"
    err = _refused(["train", "--data", DATA, "--out", str(out), "--no-progress", *more], capsys)
    assert "cnnvit train: error: " in err
    assert expected in err
    assert not out.exists()


def test_evaluate_with_weights_of_another_model_is_one_line(tmp_path, capsys):
    weights = tmp_path / "resnet.safetensors"
    save_file(create_model("resnet_mini", num_classes=10).state_dict(), weights)
    err = _refused(
        ["evaluate", "--model", "vit_mini", "--weights", str(weights), "--data", DATA], capsys
    )
    assert len(err.splitlines()) == 1
    assert f"weights in {weights} do not fit this VisionTransformer" in err
    assert "missing, e.g. cls_token" in err and "unexpected" in err


def test_evaluate_with_a_head_of_another_size_names_the_shapes(tmp_path, capsys):
    weights = tmp_path / "three.safetensors"
    save_file(create_model("resnet_mini", num_classes=3).state_dict(), weights)
    err = _refused(
        ["evaluate", "--model", "resnet_mini", "--weights", str(weights), "--data", DATA], capsys
    )
    assert "of another shape (file vs model), e.g. fc.weight (3, 128) vs (10, 128)" in err


def _study(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "is empty; a study needs at least `models:`"),
        ("name: x\nmodels: []\n", "a study compares models: list at least one"),
        ("models: [resnet_mini]\nseeds: [0, 0]\n", "seeds [0] appear more than once in [0, 0]"),
        ("name: ../../escape\nmodels: [resnet_mini]\n", "must be a name, not a path"),
        ("name: a/b\nmodels: [resnet_mini]\n", "must be a name, not a path"),
    ],
)
def test_bad_studies_are_refused_before_any_folder(tmp_path, capsys, monkeypatch, text, expected):
    monkeypatch.chdir(tmp_path)  # without --out a study goes to runs/<name> under here
    err = _refused(["compare", str(_study(tmp_path, text)), "--no-progress"], capsys)
    assert expected in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_a_corrected_study_runs_in_the_folder_the_refused_one_named(tmp_path, capsys):
    out = tmp_path / "out"
    study = "data: {spec: '" + DATA + "'}\nmodels: [resnet_mini]\nprofile: {enabled: false}\n"
    study += "recipe: {train: {epochs: 1, batch_size: 64}}\n"
    _refused(
        ["compare", str(_study(tmp_path, study + "seeds: [0, 0]\n")), "--out", str(out)], capsys
    )
    assert not out.exists()
    assert main(["compare", str(_study(tmp_path, study)), "--out", str(out), "--no-progress"]) == 0
    assert (out / "runs" / "resnet_mini-f1-s0" / "results.json").is_file()


def test_an_unforeseen_error_is_one_line_with_its_traceback_saved(monkeypatch, capsys):
    from cnnvit.cli import listing

    def broken(args):
        raise ZeroDivisionError("deep inside")

    monkeypatch.setattr(listing, "cmd_models", broken)  # looked up when the parser is built
    monkeypatch.delenv("CNNVIT_TRACEBACK", raising=False)
    assert main(["models"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "internal error: ZeroDivisionError: deep inside; the traceback is in " in err
    saved = Path(err.split("the traceback is in ")[1].split(" ")[0])
    assert 'raise ZeroDivisionError("deep inside")' in saved.read_text()
    saved.unlink()
