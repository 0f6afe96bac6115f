"""Per-model recipe tuning: trials are cells, scored on the selection split, and their choice is
what the cells train with."""

import json
from pathlib import Path

import pytest

from cnnvit.config import load_yaml, validate_config
from cnnvit.folders import StudyFolder
from cnnvit.study import cell as study_cell
from cnnvit.study import run as study_run
from cnnvit.study.config import StudyConfig, Tuning
from cnnvit.study.tuning import grid

SYNTH = "synthetic:train_size=768,val_size=192,image_size=16"


def _study(**tuning) -> StudyConfig:
    return validate_config(
        StudyConfig,
        {
            "name": "tuned",
            "data": {"spec": SYNTH},
            "models": ["resnet_mini"],
            "fractions": [0.5, 1.0],
            "seeds": [0],
            "recipe": {
                "optim": {"lr": 1e-3, "warmup_steps": 0},
                "train": {
                    "batch_size": 32,
                    "threads": 2,
                    "progress": False,
                    "budget": {"kind": "steps", "steps": 24, "evaluations": 4},
                },
            },
            "profile": {"enabled": False},
            "tuning": {"enabled": True, **tuning},
        },
    )


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tuned") / "study"
    # 30 is far too high a rate for AdamW: it must lose to 3e-3 on the selection split.
    study_run.run_study(_study(lr=[30.0, 3e-3]), out, command="test", progress=False)
    return out


def test_a_far_too_high_rate_loses_and_the_cells_train_with_the_winner(tuned: Path):
    record = json.loads((tuned / "tuning" / "tuning.json").read_text())
    assert record["method"] == "grid" and record["fraction"] == 0.5
    scores = {t["setting"]["lr"]: t["score"] for t in record["trials"]}
    assert set(scores) == {30.0, 3e-3}
    assert scores[3e-3] is not None and (scores[30.0] is None or scores[30.0] < scores[3e-3])
    assert record["chosen"] == {"resnet_mini": {"lr": 3e-3}}
    # the score is the trial's best selection accuracy, as its own run folder recorded it
    trial = json.loads(
        (tuned / "tuning" / "resnet_mini-f0.5-s0-lr0.003" / "results.json").read_text()
    )
    assert scores[3e-3] == trial["best_selection_acc"]
    for cell in ("resnet_mini-f0.5-s0", "resnet_mini-f1-s0"):
        config = load_yaml(tuned / "runs" / cell / "config.yaml")
        assert config["optim"]["lr"] == 3e-3, cell


def test_a_rerun_does_not_redo_finished_trials(tuned: Path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished trial or cell was trained again")

    monkeypatch.setattr(study_cell, "train", no_training)
    monkeypatch.setattr(study_cell, "resume", no_training)
    before = (tuned / "tuning" / "tuning.json").read_text()
    study_run.run_study(_study(lr=[30.0, 3e-3]), tuned, command="test", progress=False)
    assert (tuned / "tuning" / "tuning.json").read_text() == before
    assert StudyFolder(tuned).read_tuning()["chosen"]["resnet_mini"] == {"lr": 3e-3}


def test_the_grid_crosses_rates_and_decays_rate_first():
    settings = Tuning(enabled=True, lr=[1e-3, 1e-2], weight_decay=[0.0, 0.05])
    assert grid(settings) == [
        {"lr": 1e-3, "weight_decay": 0.0},
        {"lr": 1e-3, "weight_decay": 0.05},
        {"lr": 1e-2, "weight_decay": 0.0},
        {"lr": 1e-2, "weight_decay": 0.05},
    ]


def test_an_optuna_search_proposes_the_same_trials_again_and_skips_them(tmp_path, monkeypatch):
    out = tmp_path / "study"
    study = _study(lr=[1e-4, 1e-2], trials=3, seed=0)
    study = study.model_copy(update={"fractions": [0.5]})
    study_run.run_study(study, out, command="test", progress=False)
    record = json.loads((out / "tuning" / "tuning.json").read_text())
    assert record["method"] == "optuna-tpe" and len(record["trials"]) == 3
    rates = [t["setting"]["lr"] for t in record["trials"]]
    assert all(1e-4 <= lr <= 1e-2 for lr in rates)  # inside the range, log-uniform
    best = max(record["trials"], key=lambda t: t["score"])
    assert record["chosen"]["resnet_mini"] == best["setting"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(study_cell, "train", no_training)
    monkeypatch.setattr(study_cell, "resume", no_training)
    study_run.run_study(study, out, command="test", progress=False)
    again = json.loads((out / "tuning" / "tuning.json").read_text())
    assert [t["setting"]["lr"] for t in again["trials"]] == rates  # replayed, not redrawn
