"""The study's analysis stage: every analysis on the analysed cells, files the report reads,
skipping what is unchanged, and a failing analysis that costs nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cnnvit.cli import main
from cnnvit.study import analysis as study_analysis
from cnnvit.study.config import ANALYSES

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


@pytest.mark.slow
def test_rerun_skips_unchanged_and_reruns_what_changed(analysed: Path, tmp_path: Path, capfd):
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
    def broken(study, inputs, folder):
        raise RuntimeError("<b>out of memory</b>")

    monkeypatch.setitem(study_analysis.RUNNERS, "gradcam", broken)
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
