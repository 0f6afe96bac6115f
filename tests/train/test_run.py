"""Training end to end on the synthetic dataset: accuracy, run folder, resume, divergence."""

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from cnnvit.config import load_run_config
from cnnvit.folders import RunFolderError
from cnnvit.train import run as run_module
from cnnvit.train.checkpoint import latest_checkpoint_dir, load_checkpoint
from cnnvit.train.run import EPOCH_COLUMNS, resume, train

TIMING = {"seconds", "images_per_second", "peak_memory_mb"}


def _cfg(out: Path, *extra: str):
    return load_run_config(
        None,
        [
            "data.spec=synthetic",
            "model.name=resnet_mini",
            f"output.dir={out}",
            "train.epochs=2",
            "train.batch_size=64",
            "optim.lr=3e-3",
            "train.progress=false",
            "train.threads=2",
            *extra,
        ],
    )


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "epochs.csv").open() as f:
        return list(csv.DictReader(f))


def _without_timing(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "a"
    results = train(_cfg(out))
    assert results["status"] == "completed"
    return out


def test_two_epochs_learn_well_above_chance(finished_run: Path):
    results = json.loads((finished_run / "results.json").read_text())
    assert results["num_classes"] == 10
    assert results["test_top1"] > 0.5  # chance is 0.1
    assert results["epochs_completed"] == 2
    # 10 % of the 2,000 synthetic training images are held out for selection
    assert results["num_selection_images"] == 200 and results["num_train_images"] == 1800


def test_run_folder_holds_everything(finished_run: Path):
    rows = _rows(finished_run)
    assert list(rows[0]) == EPOCH_COLUMNS and [r["epoch"] for r in rows] == ["1", "2"]
    assert [r["step"] for r in rows] == ["29", "58"]  # 1,800 images at batch 64: 29 steps
    assert all(float(r["images_per_second"]) > 0 and float(r["peak_memory_mb"]) > 0 for r in rows)
    env = json.loads((finished_run / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["dtype"] == "float32" and env["seed"] == 0
    cfg = load_run_config(finished_run / "config.yaml")
    assert cfg.model.name == "resnet_mini" and cfg.data.spec == "synthetic"
    weights = load_file(latest_checkpoint_dir(finished_run) / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    preds = pd.read_parquet(finished_run / "predictions.parquet")
    results = json.loads((finished_run / "results.json").read_text())
    assert len(preds) == results["num_test_images"]
    # the saved predictions are the test split's, and give the reported test accuracy
    assert (preds.label == preds.prediction).mean() == pytest.approx(results["test_top1"])
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert metrics["top1"] == pytest.approx(results["test_top1"])


def test_same_seed_same_numbers_and_resume_is_exact(
    finished_run: Path, tmp_path: Path, interrupt_in_second_epoch
):
    out = tmp_path / "b"
    interrupt_in_second_epoch(lambda: train(_cfg(out)))
    assert json.loads((out / "results.json").read_text())["status"] == "failed"
    assert load_checkpoint(out).epoch == 1

    results = resume(out)
    assert results["status"] == "completed"
    expected, got = _rows(finished_run), _rows(out)
    assert [_without_timing(r) for r in got] == [_without_timing(r) for r in expected]


def test_refuses_to_overwrite_a_run(finished_run: Path):
    with pytest.raises(RunFolderError, match="--resume"):
        train(_cfg(finished_run))


def test_nan_loss_marks_diverged_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch):
    real = run_module.make_loss
    calls = {"n": 0}

    def make_poisoned_loss(label_smoothing: float):
        loss_fn = real(label_smoothing)

        def poisoned(logits, labels):
            calls["n"] += 1
            loss = loss_fn(logits, labels)
            # Epoch 1 (29 steps at batch 64, one selection score) is clean; epoch 2 turns NaN.
            return loss * float("nan") if calls["n"] > 40 else loss

        return poisoned

    monkeypatch.setattr(run_module, "make_loss", make_poisoned_loss)
    out = tmp_path / "nan"
    results = train(_cfg(out, "train.epochs=3"))
    assert results["status"] == "diverged" and "nan" in results["error"]
    assert [r["epoch"] for r in _rows(out)] == ["1"]
    ckpt = load_checkpoint(out)
    assert ckpt.epoch == 1
    assert all(torch.isfinite(w).all() for w in ckpt.weights.values() if w.is_floating_point())
    assert math.isfinite(results["best_selection_acc"])
    assert not (out / "metrics.json").exists()
