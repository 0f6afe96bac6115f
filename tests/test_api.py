"""The Python API as a notebook uses it: the same study as the CLI's, read back, shown, analysed."""

import base64
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import cnnvit
from cnnvit.api.overrides import nested_values
from cnnvit.cli import main
from cnnvit.config import ConfigError

DATA = "synthetic:train_size=256,val_size=64,image_size=16"
# What training decides: equal between two runs of one study on the CPU (not the timings).
TRAINED = ["cell", "status", "num_train_images", "best_selection_top1", "test_top1", "test_top5"]
TRAINED += ["test_macro_f1", "test_ece", "params_total", "epochs_completed", "steps_completed"]


def _study_file(path: Path) -> Path:
    """Two models, one size, one seed; 2 epochs, which both callers override to 1."""
    path.write_text(
        f"name: api\ndata: {{spec: '{DATA}'}}\nmodels: [resnet_mini, vit_mini]\n"
        "fractions: [1.0]\nseeds: [0]\nprofile: {enabled: false}\n"
        "recipe:\n  optim: {lr: 3.0e-3, warmup_epochs: 0}\n"
        "  train: {epochs: 2, batch_size: 64, threads: 2}\n"
    )
    return path


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> tuple[Path, "cnnvit.Study"]:
    """(the CLI's study folder, the API's Study) of the same study file and override."""
    root = tmp_path_factory.mktemp("api")
    study = _study_file(root / "study.yaml")
    cli = root / "cli"
    args = ["compare", str(study), "--out", str(cli), "--no-progress"]
    assert main([*args, "--set", "recipe.train.epochs=1"]) == 0
    made = cnnvit.compare(study, out=root / "api", progress=False, recipe__train__epochs=1)
    return cli, made


def test_compare_gives_the_clis_training_numbers(studies):
    cli, made = studies
    expected = pd.read_csv(cli / "results.csv")
    assert (expected["epochs_completed"] == 1).all()  # the override reached both
    pd.testing.assert_frame_equal(made.results[TRAINED], expected[TRAINED])
    assert made.summary.equals(pd.read_csv(made.path / "summary.csv"))
    assert made.failed == [] and made.report_path == made.path / "report.html"
    assert made.report_path.is_file()


def test_study_load_reads_a_cli_folder_and_its_verdict_is_the_reports(studies):
    cli, _ = studies
    study = cnnvit.Study.load(cli)
    assert study.name == "api"
    assert study.results.equals(pd.read_csv(cli / "results.csv"))
    assert len(study.verdict) >= 2
    page = (cli / "report.html").read_text()
    for sentence in study.verdict:
        assert html.escape(sentence, quote=False) in page or html.escape(sentence) in page


def test_study_load_refuses_a_folder_without_a_study(tmp_path: Path):
    with pytest.raises(cnnvit.api.study.StudyFolderError, match="not a study folder"):
        cnnvit.Study.load(tmp_path)


def test_repr_html_shows_the_verdict_and_the_accuracy_figure(studies):
    cli, _ = studies
    study = cnnvit.Study.load(cli)
    page = study._repr_html_()
    for sentence in study.verdict:
        assert html.escape(sentence) in page
    data = re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert data is not None
    assert (
        base64.b64decode(data.group(1)) == (cli / "figures" / "accuracy_vs_images.png").read_bytes()
    )


def test_repr_html_escapes_text(studies):
    cli, _ = studies
    study = cnnvit.Study.load(cli)
    study.__dict__["verdict"] = ["<script>x</script> & 'vit'"]  # the cached property's slot
    study.__dict__["name"] = 'a "<b>"'
    page = study._repr_html_()
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;x&lt;/script&gt; &amp; &#x27;vit&#x27;" in page


def test_load_run_models_reproduce_the_runs_test_predictions(studies):
    from cnnvit.analyze.images import images_from_run

    cli, _ = studies
    for cell in ("resnet_mini-f1-s0", "vit_mini-f1-s0"):
        run = cnnvit.load_run(cli / "runs" / cell)
        assert run.config.model.name == cell.split("-")[0]
        assert len(run.epochs) == run.metrics["epochs_completed"] == 1
        model = run.model()
        assert not model.training
        images = images_from_run(run.path, "val")  # the run's test split, as it was evaluated
        subject = _subject(run)
        with torch.no_grad():
            predicted = model(subject.prepare(images.images)).argmax(dim=1)  # (N,)
        top1 = (predicted == images.labels).float().mean().item()
        assert top1 == pytest.approx(run.metrics["test_top1"], abs=1e-9)
        counts = pd.Series(predicted.numpy()).value_counts().sort_index()
        recorded = run.predictions["prediction"].value_counts().sort_index()
        assert counts.to_dict() == recorded.to_dict()


def _subject(run):
    from cnnvit.analyze.subject import subject_from_run

    return subject_from_run(run.path)


def test_train_run_gives_the_clis_run(tmp_path: Path):
    train = ["train", "--data", DATA, "--model", "resnet_mini", "--epochs", "1"]
    assert (
        main([*train, "--batch-size", "64", "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    )
    run = cnnvit.train_run(
        data__spec=DATA,
        model__name="resnet_mini",
        train__epochs=1,
        train__batch_size=64,
        train__progress=False,
        output__dir=tmp_path / "api",
    )
    expected = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert run.path == tmp_path / "api" and run.metrics["status"] == "completed"
    assert run.metrics["test_top1"] == expected["test_top1"]
    assert run.metrics["best_selection_acc"] == expected["best_selection_acc"]


def test_analyze_runs_returns_the_analysis_numbers(studies, tmp_path: Path):
    cli, _ = studies
    runs = [cli / "runs" / "resnet_mini-f1-s0", cli / "runs" / "vit_mini-f1-s0"]
    result = cnnvit.analyze_runs(runs, "knn", tmp_path / "knn", progress=False, ks=[1, 5])
    assert result == json.loads((tmp_path / "knn" / "knn.json").read_text())
    assert "knn" in cnnvit.analysis_names()
    with pytest.raises(KeyError, match="unknown analysis"):
        cnnvit.analyze_runs(runs, "no-such-analysis")


def test_overrides_are_nested_and_a_key_is_set_once():
    assert nested_values({"recipe__train__epochs": 2, "models": ["a"]}) == {
        "recipe": {"train": {"epochs": 2}},
        "models": ["a"],
    }
    with pytest.raises(ConfigError, match="recipe__train"):
        nested_values({"recipe__train": {}, "recipe__train__epochs": 2})


def test_import_cnnvit_imports_neither_torch_nor_pandas():
    code = "import sys, cnnvit; print('torch' in sys.modules, 'pandas' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
