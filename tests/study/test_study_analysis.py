"""The study's analysis stage: every analysis on the analysed cells, files the report reads,
skipping what is unchanged, and a failing analysis that costs nothing else."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cnnvit.analyze import registry
from cnnvit.analyze.registry import all_analyses
from cnnvit.cli import main

ANALYSES = [a.name for a in all_analyses()]

SYNTH = "synthetic:train_size=512,val_size=128,image_size=16"

OPTIONS = {
    "images": 64,
    "gradcam": {"num_images": 2},
    "cka": {"images": 64, "batch_size": 16},
    "knn": {"ks": [1, 5], "max_index": 256},
    "shape_bias": {"num_images": 24},
    "robustness": {"images": 32, "severities": [1, 3, 5]},
}


def _study(path: Path, analysis: list[str], options: dict | None = None) -> Path:
    config = {
        "name": "tiny-analysis",
        "data": {"spec": SYNTH},
        "models": ["resnet_mini", "vit_mini"],
        "fractions": [0.5, 1.0],
        "seeds": [0],
        "recipe": {
            "optim": {"lr": 3.0e-3, "warmup_epochs": 0},
            "train": {"epochs": 1, "batch_size": 64, "threads": 2},
        },
        "profile": {"enabled": False},
        "analysis": analysis,
        "analysis_options": options or OPTIONS,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _compare(study: Path, out: Path) -> int:
    return main(["compare", str(study), "--out", str(out), "--no-progress"])


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("analysed")
    out = root / "out"
    assert _compare(_study(root / "study.yaml", list(ANALYSES)), out) == 0
    return out


OUTPUT = {
    "gradcam": "gradcam.json",
    "attention": "attention.json",
    "featuremaps": "featuremaps.json",
    "cka": "cka.json",
    "knn": "knn.json",
    "shape_bias": "shape_bias.json",
    "robustness": "robustness.json",
}


@pytest.mark.slow
def test_every_analysis_writes_its_files_on_the_largest_size(analysed: Path):
    for name in ANALYSES:
        folder = analysed / "analysis" / name
        assert not (folder / "error.txt").exists(), (folder / "error.txt").read_text()
        run = json.loads((folder / "run.json").read_text())
        assert run["cells"] == ["resnet_mini-f1-s0", "vit_mini-f1-s0"]  # largest size, seed 0
        assert json.loads((folder / OUTPUT[name]).read_text())
        assert list(folder.glob("*.png")), name


@pytest.mark.slow
def test_report_shows_a_section_with_figures_per_analysis(analysed: Path):
    page = (analysed / "report.html").read_text()
    for section in (
        "gradcam",
        "attention",
        "featuremaps",
        "cka",
        "knn",
        "shape-bias",
        "robustness",
    ):
        start = page.index(f'<section id="{section}">')
        body = page[start : page.index("</section>", start)]
        assert "data:image/png;base64," in body, section
        assert "Analysed cells: resnet_mini-f1-s0, vit_mini-f1-s0" in body
    assert 'id="analyses-not-run"' not in page
    verdict = page[page.index('<section id="verdict">') : page.index('<section id="accuracy">')]
    assert "Under 7 corruptions at 3 severities, " in verdict
    assert "Nearest-neighbour retrieval on penultimate features (1-NN top-1)" in verdict


@pytest.mark.slow
def test_rerun_skips_unchanged_and_reruns_what_changed(analysed: Path, tmp_path: Path, capfd):
    analysed = Path(shutil.copytree(analysed, tmp_path / "copy"))  # the fixture stays as it was
    before = {n: (analysed / "analysis" / n / "run.json").read_text() for n in ANALYSES}
    options = json.loads(json.dumps(OPTIONS))
    options["knn"]["ks"] = [1, 3]
    assert _compare(_study(tmp_path / "again.yaml", list(ANALYSES), options), analysed) == 0
    out = capfd.readouterr().err
    after = {n: (analysed / "analysis" / n / "run.json").read_text() for n in ANALYSES}
    assert [n for n in ANALYSES if before[n] != after[n]] == ["knn"]
    assert "analysis cka: done earlier with the same cells, skipped" in out
    knn = json.loads((analysed / "analysis" / "knn" / "knn.json").read_text())
    assert "3" in json.dumps(knn)  # k = 3 is now reported


def test_failing_analysis_is_recorded_and_the_others_run(tmp_path: Path, monkeypatch):
    def broken(inputs, options):
        raise RuntimeError("<b>out of memory</b>")

    gradcam = dataclasses.replace(registry.get_analysis("gradcam"), compute=broken)
    monkeypatch.setitem(registry._REGISTERED, "gradcam", gradcam)
    out = tmp_path / "out"
    study = _study(tmp_path / "s.yaml", ["gradcam", "knn"])
    assert _compare(study, out) == 0
    error = (out / "analysis" / "gradcam" / "error.txt").read_text()
    assert "RuntimeError: <b>out of memory</b>" in error
    assert (out / "analysis" / "knn" / "run.json").is_file()
    page = (out / "report.html").read_text()
    section = page[page.index('<section id="gradcam">') :]
    assert "This analysis failed: RuntimeError: &lt;b&gt;out of memory&lt;/b&gt;" in section
    # Not enabled: listed with the command that runs it.
    not_run = page[page.index('<section id="analyses-not-run">') :]
    assert "cnnvit similarity" in not_run and "cnnvit robustness" in not_run
    # The analyses are added to the finished study: accepted, cells kept, only they run.
    monkeypatch.undo()
    study = _study(tmp_path / "s.yaml", ["gradcam", "knn", "cka"])
    assert _compare(study, out) == 0
    assert not (out / "analysis" / "gradcam" / "error.txt").exists()
    assert (out / "analysis" / "cka" / "cka.json").is_file()


# --- the commands on the study's run folders give what the study's analyses gave ---------------


def _runs(analysed: Path) -> list[str]:
    return [str(analysed / "runs" / c) for c in ("resnet_mini-f1-s0", "vit_mini-f1-s0")]


@pytest.mark.slow
def test_similarity_command_equals_the_study_analysis(analysed: Path, tmp_path: Path):
    out = tmp_path / "cka"
    args = ["--images", "64", "--batch-size", "16", "--out", str(out), "--no-progress"]
    assert main(["similarity", *_runs(analysed), *args]) == 0
    name = "cka_resnet_mini__vit_mini.csv"
    mine = pd.read_csv(out / name, index_col=0)
    study = pd.read_csv(analysed / "analysis" / "cka" / name, index_col=0)
    pd.testing.assert_frame_equal(mine, study, atol=1e-6)
    assert main(["similarity", *_runs(analysed), "--batch-size", "3", "--out", str(out)]) == 2


@pytest.mark.slow
def test_robustness_and_shape_bias_commands_equal_the_study(analysed: Path, tmp_path: Path):
    args = ["--out", str(tmp_path / "r"), "--no-progress"]
    assert (
        main(
            ["robustness", *_runs(analysed), "--images", "32", "--severities", "1", "3", "5", *args]
        )
        == 0
    )
    mine = pd.read_csv(tmp_path / "r" / "robustness.csv")
    study = pd.read_csv(analysed / "analysis" / "robustness" / "robustness.csv")
    pd.testing.assert_frame_equal(mine, study)
    args = ["--out", str(tmp_path / "s"), "--no-progress", "--num-images", "24"]
    assert main(["shape-bias", *_runs(analysed), *args]) == 0
    mine = pd.read_csv(tmp_path / "s" / "shape_bias.csv")
    study = pd.read_csv(analysed / "analysis" / "shape_bias" / "shape_bias.csv")
    pd.testing.assert_frame_equal(mine, study)


@pytest.mark.slow
def test_explain_and_knn_commands(analysed: Path, tmp_path: Path):
    out = tmp_path / "explain"
    args = ["--num-images", "2", "--images", "64", "--out", str(out), "--no-progress"]
    assert main(["explain", *_runs(analysed), *args]) == 0
    gradcam = json.loads((out / "gradcam" / "gradcam.json").read_text())
    layers = {m["label"]: m["layers"] for m in gradcam["models"]}
    assert layers["resnet_mini"] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert len(layers["vit_mini"]) == 4  # every block of vit_mini
    assert (out / "attention" / "attention_distance.png").is_file()
    assert (out / "featuremaps" / "featuremaps_resnet_mini.png").is_file()
    out = tmp_path / "knn"
    args = ["--index-images", "256", "--k", "1", "5", "--out", str(out), "--no-progress"]
    assert main(["knn", *_runs(analysed), *args]) == 0
    knn = json.loads((out / "knn.json").read_text())
    assert knn["settings"]["index_size"] == 256 and knn["settings"]["query_size"] == 128


def test_commands_explain_what_they_need(tmp_path: Path, capsys):
    assert main(["knn"]) == 2
    assert "give run folders, or --model NAME" in capsys.readouterr().err
    assert main(["robustness", "--model", "resnet_mini", "--data", SYNTH]) == 2
    assert "--model needs --weights FILE (one per model) or --pretrained" in capsys.readouterr().err
    assert main(["similarity", str(tmp_path)]) == 2
    assert f"{tmp_path} is not a run folder" in capsys.readouterr().err


@pytest.mark.slow
def test_a_model_with_weights_and_data(analysed: Path, tmp_path: Path):
    """--model NAME --weights FILE --data SPEC: the model as timm's config preprocesses it."""
    from cnnvit.analyze.images import images_from_spec
    from cnnvit.analyze.subject import subject_from_name

    weights = next((analysed / "runs" / "resnet_mini-f1-s0" / "checkpoints").glob("*/model.*"))
    args = [
        "--model",
        "resnet_mini",
        "--weights",
        str(weights),
        "--data",
        SYNTH,
        "--image-size",
        "16",
        "--images",
        "40",
        "--severities",
        "2",
        "--corruption",
        "contrast",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert main(["robustness", *args]) == 0
    result = json.loads((tmp_path / "robustness.json").read_text())
    subject = subject_from_name(
        "resnet_mini", classes=read_dataset_classes(), weights=weights, image_size=16
    )
    images = images_from_spec(SYNTH, image_size=16, max_images=40)
    expected = float((subject.logits(images.images).argmax(1) == images.labels).float().mean())
    assert result["models"][0]["clean_accuracy"] == pytest.approx(expected)


def read_dataset_classes() -> list[str]:
    from cnnvit.data.readers import read_dataset

    return [str(c) for c in read_dataset(SYNTH).classes]


@pytest.mark.slow
def test_classify_writes_cams_side_by_side(analysed: Path, tmp_path: Path):
    from PIL import Image

    images = []
    for i, color in enumerate(((200, 30, 30), (30, 200, 30))):
        path = tmp_path / f"photo{i}.png"
        Image.new("RGB", (40, 30), color).save(path)
        images.append(str(path))
    weights = [
        str(next((analysed / "runs" / c / "checkpoints").glob("*/model.*")))
        for c in ("resnet_mini-f1-s0", "vit_mini-f1-s0")
    ]
    png = tmp_path / "cams.png"
    argv = [
        "classify",
        *images,
        "--model",
        "resnet_mini",
        "--model",
        "vit_mini",
        "--weights",
        weights[0],
        "--weights",
        weights[1],
        "--num-classes",
        "10",
        "--cam",
        str(png),
    ]
    assert main(argv) == 0
    width, height = Image.open(png).size
    assert width > height  # two images as rows, input + two models as columns
