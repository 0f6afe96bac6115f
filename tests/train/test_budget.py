"""Training budgets: the same optimiser steps at every training size, early stopping that
restores its best selection score's weights, and a test split read only at the end."""

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cnnvit.config import BudgetConfig, load_run_config
from cnnvit.data.pipeline import PreparedData
from cnnvit.evaluate.run import evaluate_run
from cnnvit.train import run as run_module
from cnnvit.train.budget import plan_budget
from cnnvit.train.checkpoint import latest_checkpoint_dir
from cnnvit.train.run import train


def _cfg(out: Path, *extra: str):
    return load_run_config(
        None,
        [
            "data.spec=synthetic",
            f"output.dir={out}",
            "train.batch_size=32",
            "optim.lr=3e-3",
            "train.progress=false",
            *extra,
        ],
    )


def _counting_optimizer_steps(monkeypatch) -> dict:
    """Count the optimiser steps every run takes from now on."""
    count = {"steps": 0}
    real = run_module.build_optimizer

    def counted(*args, **kwargs):
        optimizer = real(*args, **kwargs)
        step = optimizer.step

        def counting_step(*a, **k):
            count["steps"] += 1
            return step(*a, **k)

        optimizer.step = counting_step
        return optimizer

    monkeypatch.setattr(run_module, "build_optimizer", counted)
    return count


def test_plans_spread_scores_evenly_and_end_on_the_last_step():
    steps = plan_budget(
        BudgetConfig(kind="steps", steps=100, evaluations=8), epochs=5, steps_per_epoch=7
    )
    assert steps.total_steps == 100 and steps.epochs == 15  # ceil(100 / 7)
    assert steps.evaluate_at == (12, 25, 38, 50, 62, 75, 88, 100)
    assert steps.epoch_steps(15) == (98, 100)  # the last epoch is cut at step 100
    epochs = plan_budget(BudgetConfig(), epochs=3, steps_per_epoch=7)
    assert epochs.evaluate_at == (7, 14, 21) and epochs.total_steps == 21
    stop = plan_budget(
        BudgetConfig(kind="early_stopping", patience=2), epochs=4, steps_per_epoch=10
    )
    assert stop.total_steps == 40 and stop.patience == 2  # train.epochs caps it


def test_a_step_budget_takes_the_same_steps_at_every_training_size(tmp_path, monkeypatch):
    count = _counting_optimizer_steps(monkeypatch)
    taken, epochs = [], []
    for fraction in (0.01, 0.2):
        out = tmp_path / f"f{fraction}"
        before = count["steps"]
        results = train(
            _cfg(
                out,
                f"data.train_fraction={fraction}",
                "train.budget.kind=steps",
                "train.budget.steps=24",
                "train.budget.evaluations=4",
            )
        )
        taken.append(count["steps"] - before)
        epochs.append(results["epochs_completed"])
        assert results["steps_completed"] == 24 and results["budget"]["kind"] == "steps"
        assert _steps_logged(out) == [6, 12, 18, 24]
        # every row's rate covers all its steps, across the epochs between two scores
        images = sum(float(r["seconds"]) * float(r["images_per_second"]) for r in _log(out))
        seen = results["epochs_completed"] * results["num_train_images"]  # whole epochs here
        assert images == pytest.approx(seen, rel=1e-6)
    assert taken == [24, 24]
    # 1 % of 1,800 images is one batch of 20 (24 epochs); 20 % is 360 images (12 per epoch)
    assert epochs == [24.0, 2.0]


def _log(run_dir: Path) -> list[dict]:
    with (run_dir / "epochs.csv").open() as f:
        return list(csv.DictReader(f))


def _steps_logged(run_dir: Path) -> list[int]:
    lines = (run_dir / "epochs.csv").read_text().splitlines()
    column = lines[0].split(",").index("step")
    return [int(line.split(",")[column]) for line in lines[1:]]


def test_early_stopping_restores_the_weights_of_its_best_score(tmp_path, monkeypatch):
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    real_score = run_module._score

    def scoring(s, epoch, step, stats, peak, progress):
        stop = real_score(s, epoch, step, stats, peak, progress)
        snapshots[step] = {k: v.clone() for k, v in s.model.state_dict().items()}
        return stop

    monkeypatch.setattr(run_module, "_score", scoring)
    out = tmp_path / "stop"
    # A rate far too high makes the selection score bounce, so patience runs out early.
    results = train(
        _cfg(
            out,
            "optim.lr=0.05",
            "train.epochs=8",
            "train.budget.kind=early_stopping",
            "train.budget.patience=2",
            "train.budget.evaluations=40",
        )
    )
    assert results["stopped_early"] and results["evaluated_weights"] == "best"
    best = results["best_step"]
    assert results["steps_completed"] < results["budget"]["steps_planned"]
    assert best < results["steps_completed"]  # the best was not the last score
    saved = load_file(latest_checkpoint_dir(out) / "best.safetensors")
    for name, tensor in snapshots[best].items():
        assert torch.equal(saved[name], tensor), name
    last = snapshots[results["steps_completed"]]
    assert any(not torch.equal(saved[k], last[k]) for k in saved if saved[k].is_floating_point())
    # The reported test numbers are the best weights', and re-evaluation finds them again.
    assert evaluate_run(out)["top1"] == pytest.approx(results["test_top1"])


def test_the_test_split_is_opened_only_after_the_last_step(tmp_path, monkeypatch):
    count = _counting_optimizer_steps(monkeypatch)
    opened_at = []
    real_open = PreparedData.open_test

    def open_test(self):
        opened_at.append(count["steps"])
        return real_open(self)

    monkeypatch.setattr(PreparedData, "open_test", open_test)
    results = train(_cfg(tmp_path / "sealed", "train.epochs=2"))
    assert opened_at == [results["steps_completed"]] == [114]  # 57 steps per epoch, 2 epochs


def test_a_step_budget_resumes_to_the_same_scores(tmp_path, monkeypatch):
    """Scores every 6 steps on a 20-image training set (one step per epoch): checkpoints come
    only after epochs that scored, and a run killed between two of them replays the rest."""
    args = (
        "data.train_fraction=0.01",
        "train.budget.kind=steps",
        "train.budget.steps=24",
        "train.budget.evaluations=4",
    )
    whole = train(_cfg(tmp_path / "whole", *args))
    real = run_module.train_one_epoch
    calls = {"n": 0}

    def killed_in_epoch_9(*a, **k):
        calls["n"] += 1
        if calls["n"] == 9:  # after the scores at steps 6 (epoch 6), before the one at 12
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(run_module, "train_one_epoch", killed_in_epoch_9)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path / "cut", *args))
    monkeypatch.setattr(run_module, "train_one_epoch", real)
    checkpoints = list((tmp_path / "cut" / "checkpoints").glob("epoch-*"))
    assert [c.name for c in checkpoints] == ["epoch-0006"]  # not one per epoch
    resumed = run_module.resume(tmp_path / "cut")
    timing = {"seconds", "images_per_second", "peak_memory_mb"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(_log(tmp_path / "cut")) == strip(_log(tmp_path / "whole"))
    assert resumed["test_top1"] == whole["test_top1"]
