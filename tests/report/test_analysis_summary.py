"""The analyses' headline numbers: read from their JSON files, into the verdict and the table."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console

from cnnvit.report.analysis_summary import analysis_headlines, analysis_verdict
from cnnvit.report.build import _analysis_table


def _write(root: Path, name: str, data: dict) -> None:
    folder = root / "analysis" / name
    folder.mkdir(parents=True)
    (folder / f"{name}.json").write_text(json.dumps(data))


def _study(root: Path) -> Path:
    _write(
        root,
        "knn",
        {
            "models": [
                {"label": "cnn", "head_top1": 0.9, "knn_accuracy": {"1": 0.8, "5": 0.85}},
                {"label": "<vit>", "head_top1": 0.7, "knn_accuracy": {"1": 0.6, "5": 0.65}},
            ]
        },
    )
    _write(
        root,
        "robustness",
        {
            "settings": {"corruptions": ["contrast", "jpeg"], "severities": [1, 2, 3]},
            "models": [
                {"label": "cnn", "mean_corruption_accuracy": 0.45, "relative_accuracy": 0.5},
                {"label": "<vit>", "mean_corruption_accuracy": 0.49, "relative_accuracy": 0.7},
            ],
        },
    )
    _write(
        root,
        "attention",
        {
            "models": [
                {"label": "<vit>", "kind": "attention", "mean_distance_px": [12.0, 13.0, 14.5]},
                {
                    "label": "cnn",
                    "kind": "receptive_field",
                    "stages": [{"erf_distance_px": 1.0}, {"erf_distance_px": 6.25}],
                },
            ]
        },
    )
    (root / "analysis" / "shape_bias").mkdir()
    (root / "analysis" / "shape_bias" / "shape_bias.json").write_text("{not json")
    return root


def test_headlines_come_from_each_file(tmp_path: Path):
    frame = analysis_headlines(_study(tmp_path))
    assert frame.loc["cnn", "knn_top1"] == 0.8 and frame.loc["<vit>", "head_top1"] == 0.7
    assert frame.loc["<vit>", "relative_robustness"] == 0.7
    assert frame.loc["cnn", "last_distance_px"] == 6.25
    assert frame.loc["<vit>", "first_distance_px"] == 12.0
    assert math.isnan(frame.loc["cnn", "shape_bias"])  # a damaged file leaves its column empty


def test_verdict_sentences_rank_the_models(tmp_path: Path):
    # One sentence per analysis that ran, in the report's order of the analyses.
    lines = analysis_verdict(_study(tmp_path))
    assert "<vit> 12.0 px at its first layer, 14.5 px at its last" in lines[0]
    assert "cnn 80.0 % (its classifier head 90.0 %); <vit> 60.0 %" in lines[1]
    assert lines[2] == (
        "Under 2 corruptions at 3 severities, <vit> keeps 70 % of its clean accuracy (49.0 % on "
        "average); cnn keeps 50 % of its clean accuracy (45.0 % on average)."
    )
    assert not any("Shape bias" in line for line in lines)
    assert analysis_verdict(tmp_path / "empty") == []


def test_terminal_table_shows_only_measured_columns(tmp_path: Path):
    console = Console(width=120, record=True)
    console.print(_analysis_table(_study(tmp_path)))
    text = console.export_text()
    assert "1-NN" in text and "80.0 %" in text and "14.5" in text
    assert "shape bias" not in text
    assert _analysis_table(tmp_path / "nothing") is None
