"""An analysis is one module: registered here, in this test file alone, a toy analysis becomes a
CLI verb, a study analysis, a report section, a summary column and a verdict sentence, with no
other file touched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import Field
from rich.console import Console

from cnnvit.analyze.images import images_from_run
from cnnvit.analyze.registry import (
    AnalysisOptions,
    Column,
    Command,
    Inputs,
    analysis,
    commands,
    get_analysis,
    unregister,
)
from cnnvit.analyze.subject import subject_from_run
from cnnvit.cli import build_parser, main
from cnnvit.config import ConfigError, validate_config
from cnnvit.folders import AnalysisFolder
from cnnvit.markup import Markup, table
from cnnvit.report import print_summary
from cnnvit.study.config import StudyConfig

SYNTH = "synthetic:train_size=256,val_size=64,image_size=16"


# --- the toy analysis: how sure each model is of its top class --------------------------------


class ConfidenceOptions(AnalysisOptions):
    images: int = Field(48, gt=0, description="validation images (stratified)")


@dataclass
class ConfidenceResult:
    labels: list[str]
    confidence: list[float]
    images: int

    def to_json(self) -> dict:
        return {
            "analysis": "confidence",
            "settings": {"images": self.images},
            "models": [
                {"label": label, "mean_confidence": c}
                for label, c in zip(self.labels, self.confidence, strict=True)
            ],
        }


def _write(result: ConfidenceResult, folder: AnalysisFolder) -> None:
    folder.write_result(result.to_json())


def _render(folder: AnalysisFolder) -> Markup:
    data = folder.read_result() or {"models": []}
    rows = [[m["label"], f"{m['mean_confidence']:.4f}"] for m in data["models"]]
    return table(["model", "mean confidence"], rows, classes=["name", "num"])


def _headline(data: dict) -> dict[str, dict[str, float]]:
    return {m["label"]: {"mean_confidence": m["mean_confidence"]} for m in data["models"]}


def _verdict(data: dict) -> str:
    best = max(data["models"], key=lambda m: m["mean_confidence"])
    return f"The most confident model is {best['label']}."


@pytest.fixture
def confidence() -> Iterator[None]:
    @analysis(
        name="confidence",
        title="Confidence",
        command=Command("confidence", "how sure each model is of its top class"),
        options=ConfidenceOptions,
        write=_write,
        render=_render,
        columns={"mean_confidence": Column("confidence", "pct")},
        headline=_headline,
        verdict=_verdict,
    )
    def compute(inputs: Inputs, options: ConfidenceOptions) -> ConfidenceResult:
        images = inputs.val(options.images)
        found = []
        for subject in inputs.subjects:
            probs = torch.softmax(subject.logits(images.images), dim=1)  # (N, C)
            found.append(float(probs.max(1).values.mean()))
        return ConfidenceResult([s.label for s in inputs.subjects], found, len(images))

    yield
    unregister("confidence")


def _by_hand(run: Path, images: int) -> float:
    """The mean top-class probability of a run's model, computed without the registry."""
    subject = subject_from_run(run)
    val = images_from_run(run, "val", max_images=images)
    with torch.no_grad():
        probs = torch.softmax(subject.model(subject.prepare(val.images)), dim=1)
    return float(probs.max(1).values.mean())


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    config = {
        "name": "toy",
        "data": {"spec": SYNTH},
        "models": ["resnet_mini", "vit_mini"],
        "fractions": [1.0],
        "seeds": [0],
        "recipe": {"train": {"epochs": 1, "batch_size": 64, "threads": 2}},
        "profile": {"enabled": False},
    }
    (root / "study.yaml").write_text(yaml.safe_dump(config))
    assert main(["compare", str(root / "study.yaml"), "--out", str(root / "out")]) == 0
    return root


@pytest.mark.slow
def test_a_toy_analysis_registered_here_runs_everywhere(confidence, study_dir: Path, tmp_path):
    runs = [study_dir / "out" / "runs" / c for c in ("resnet_mini-f1-s0", "vit_mini-f1-s0")]
    expected = {"resnet_mini": _by_hand(runs[0], 32), "vit_mini": _by_hand(runs[1], 32)}

    # A CLI verb, with its options as flags.
    assert "confidence" in commands() and "confidence" in build_parser().format_help()
    out = tmp_path / "cli"
    args = ["confidence", *map(str, runs), "--images", "32", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    data = json.loads((out / "confidence.json").read_text())
    got = {m["label"]: m["mean_confidence"] for m in data["models"]}
    assert got == pytest.approx(expected, abs=1e-6)

    # A study analysis, with typed options (a bad value is refused with its key).
    study = yaml.safe_load((study_dir / "study.yaml").read_text())
    study |= {"analysis": ["confidence"], "analysis_options": {"confidence": {"images": 32}}}
    with pytest.raises(ConfigError, match=r"analysis_options\.confidence\.images"):
        validate_config(StudyConfig, {**study, "analysis_options": {"confidence": {"images": 0}}})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    out = study_dir / "out"
    assert main(["compare", str(tmp_path / "study.yaml"), "--out", str(out)]) == 0
    folder = out / "analysis" / "confidence"
    assert json.loads((folder / "confidence.json").read_text()) == data
    assert json.loads((folder / "run.json").read_text())["options"] == {"images": 32}

    # A report section, a verdict sentence and a column of the terminal summary.
    page = (out / "report.html").read_text()
    section = page[page.index('<section id="confidence">') :]
    assert f"{expected['resnet_mini']:.4f}" in section.split("</section>")[0]
    best = max(expected, key=expected.get)
    assert f"The most confident model is {best}." in page
    console = Console(record=True, width=200)
    print_summary(out, console)
    text = console.export_text()
    assert "confidence" in text and f"{100 * expected['vit_mini']:.1f} %" in text

    # Gone again once unregistered: nothing else knew about it.
    unregister("confidence")
    with pytest.raises(KeyError, match="unknown analysis 'confidence'"):
        get_analysis("confidence")


def test_a_name_cannot_be_registered_twice(confidence):
    with pytest.raises(ValueError, match="'confidence' is registered already"):
        analysis(
            name="confidence",
            title="again",
            command=Command("again", ""),
            options=ConfidenceOptions,
            write=_write,
            render=_render,
        )(lambda inputs, options: None)
