"""The recipe-tuning section: shown for a study that tuned, with every trial and the choice."""

from __future__ import annotations

import pandas as pd

from cnnvit.folders import StudyFolder
from cnnvit.report import write_report

TUNING = {
    "method": "grid",
    "fraction": 0.02,
    "seed": 0,
    "score": "best_selection_acc (the selection split)",
    "trials": [
        {
            "model": "resnet_mini",
            "setting": {"lr": 0.001},
            "status": "completed",
            "score": 0.71,
            "steps": 300,
            "still_improving": False,
            "run_dir": "tuning/a",
        },
        {
            "model": "resnet_mini",
            "setting": {"lr": 30.0},
            "status": "diverged",
            "score": None,
            "steps": 40,
            "still_improving": None,
            "run_dir": "tuning/b",
        },
        {
            "model": "vit_mini",
            "setting": {"lr": 0.001},
            "status": "completed",
            "score": 0.52,
            "steps": 300,
            "still_improving": False,
            "run_dir": "tuning/c",
        },
        {
            "model": "vit_mini",
            "setting": {"lr": 0.003},
            "status": "completed",
            "score": 0.58,
            "steps": 300,
            "still_improving": True,
            "run_dir": "tuning/d",
        },
    ],
    "chosen": {"resnet_mini": {"lr": 0.001}, "vit_mini": {"lr": 0.003}},
}


def test_a_tuned_study_shows_its_search_and_choice(tmp_path, study_factory):
    root = study_factory(tmp_path / "s")
    StudyFolder(root).write_tuning(TUNING)
    page = write_report(root).read_text()
    assert '<section id="tuning">' in page
    assert (
        "The cells trained with: resnet_mini: learning rate 0.001; vit_mini: learning rate "
        "0.003." in page
    )
    assert "Searched with a grid at training fraction 0.02, seed 0" in page
    frame = pd.read_csv(root / "tables" / "tuning.csv")
    assert frame["chosen"].tolist() == [True, False, False, True]
    assert frame["selection_score"].isna().tolist() == [False, True, False, False]


def test_an_untuned_study_has_no_tuning_section(tmp_path, study_factory):
    root = study_factory(tmp_path / "s")
    page = write_report(root).read_text()
    assert '<section id="tuning">' not in page
    assert not (root / "tables" / "tuning.csv").exists()
