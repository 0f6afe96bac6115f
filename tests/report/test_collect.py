"""collect_results / summarize: one row per cell, aggregates over completed seeds only."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cnnvit.report import collect_results, summarize
from cnnvit.report.collect import RESULT_COLUMNS, load_study_data

STATUSES = {
    "vit_mini-f0.02-s1": "failed",
    "resnet_mini-f0.07-s0": "diverged",
    "vit_mini-f0.25-s2": "missing",
}


@pytest.fixture
def study(tmp_path, study_factory):
    return study_factory(tmp_path / "study", statuses=STATUSES)


def test_one_row_per_cell_in_study_order(study):
    results = collect_results(study)
    cells = [c["id"] for c in json.loads((study / "study.json").read_text())["cells"]]
    assert list(results.columns) == RESULT_COLUMNS
    assert list(results["cell"]) == cells
    status = dict(zip(results["cell"], results["status"], strict=True))
    for cell, expected in STATUSES.items():
        assert status[cell] == expected
    assert sum(s == "completed" for s in status.values()) == len(cells) - len(STATUSES)
    failed = results.set_index("cell").loc["vit_mini-f0.02-s1"]
    assert "out of memory" in failed["error"]
    assert math.isnan(failed["test_top1"])


def test_numbers_come_from_results_json(study):
    results = collect_results(study).set_index("cell")
    raw = json.loads((study / "runs/resnet_mini-f0.25-s1/results.json").read_text())
    row = results.loc["resnet_mini-f0.25-s1"]
    assert row["test_top1"] == raw["test_top1"]
    assert row["best_selection_top1"] == raw["best_selection_acc"]
    assert row["test_top5"] == raw["test_top5"]
    assert row["test_ece"] == raw["test_ece"]
    assert row["num_selection_images"] == raw["num_selection_images"] == 2000
    assert row["steps_completed"] == raw["steps_completed"]
    assert row["steps_planned"] == raw["budget"]["steps_planned"]
    assert row["budget"] == "steps" and row["selected_on"] == "selection"
    assert not row["still_improving"] and not row["stopped_early"]
    assert row["num_train_images"] == raw["num_train_images"]
    assert row["params_trainable"] == raw["params_trainable"]
    assert row["peak_memory_mb"] == raw["peak_memory_mb"]
    assert pd.isna(row["trainable_blocks"])


def test_summary_matches_numpy_over_completed_rows(study):
    results = collect_results(study)
    summary = summarize(results)
    done = results[results["status"] == "completed"]
    assert len(summary) == 6  # 2 models x 3 fractions
    for row in summary.itertuples():
        mine = done[(done["model"] == row.model) & (done["fraction"] == row.fraction)]
        # n counts completed cells only: the failed, diverged and missing ones are left out.
        assert row.n == len(mine)
        for metric in ("test_top1", "best_selection_top1", "test_macro_f1", "test_ece"):
            x = mine[metric].to_numpy(dtype=float)
            assert getattr(row, f"{metric}_mean") == pytest.approx(np.mean(x))
            assert getattr(row, f"{metric}_std") == pytest.approx(np.std(x, ddof=1))
            # An independent route to the interval: scipy's own t.interval on the mean.
            low, high = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
            assert getattr(row, f"{metric}_ci95_low") == pytest.approx(low)
            assert getattr(row, f"{metric}_ci95_high") == pytest.approx(high)
        assert row.train_seconds == pytest.approx(mine["train_seconds"].mean())
        assert row.peak_memory_mb == pytest.approx(mine["peak_memory_mb"].mean())
    counts = summary.set_index(["model", "fraction"])["n"]
    assert counts[("vit_mini", 0.02)] == 2
    assert counts[("resnet_mini", 0.07)] == 2
    assert counts[("vit_mini", 0.25)] == 2
    assert counts[("resnet_mini", 0.25)] == 3


def test_single_seed_has_no_spread(tmp_path, study_factory):
    study = study_factory(tmp_path / "one", seeds=[0])
    summary = summarize(collect_results(study))
    assert (summary["n"] == 1).all()
    assert summary["test_top1_std"].isna().all()
    assert summary["test_top1_ci95_low"].isna().all()
    assert summary["test_top1_mean"].notna().all()


def test_curves_stack_completed_epoch_logs(study):
    data = load_study_data(study)
    completed = (data.results["status"] == "completed").sum()
    assert data.curves["cell"].nunique() == completed
    assert (data.curves.groupby("cell").size() == 5).all()  # five selection scores each
    assert (data.curves.groupby("cell")["step"].max() == 1500).all()  # the `steps` budget
    assert (data.curves["scored_on"] == "selection").all()
    assert (data.curves["score_acc"] == data.curves["selection_acc"]).all()
    assert "resnet_mini-f0.07-s0" not in set(data.curves["cell"])  # diverged: left out


def test_trainable_blocks_is_a_grouping_key(tmp_path, study_factory):
    study = study_factory(tmp_path / "k", trainable_blocks=[1, 2], seeds=[0, 1])
    summary = summarize(collect_results(study))
    assert sorted(summary["trainable_blocks"].unique().tolist()) == [1, 2]
    assert len(summary) == 2 * 3 * 2


def test_run_folders_alone_without_study_json(study):
    (study / "study.json").unlink()
    results = collect_results(study)
    assert (results["status"] == "completed").sum() == 15
    assert set(results["model"]) == {"resnet_mini", "vit_mini"}


def test_old_run_folders_map_onto_the_same_columns(tmp_path, study_factory):
    # Written before the three-way split: "val" was the test split, and chose the best epoch.
    study = study_factory(tmp_path / "old", legacy=True, seeds=[0, 1])
    raw = json.loads((study / "runs/vit_mini-f0.07-s1/results.json").read_text())
    assert "num_selection_images" not in raw and "budget" not in raw
    results = collect_results(study).set_index("cell")
    row = results.loc["vit_mini-f0.07-s1"]
    assert row["test_top1"] == raw["final_top1"]
    assert row["best_selection_top1"] == raw["best_val_acc"]
    assert row["test_macro_f1"] == raw["macro_f1"]
    assert row["num_test_images"] == raw["num_val_images"] == 300
    assert pd.isna(row["num_selection_images"]) and math.isnan(row["test_ece"])
    assert pd.isna(row["still_improving"]) and row["budget"] is None
    assert (results["selected_on"] == "test").all()
    curves = load_study_data(study).curves
    assert (curves["scored_on"] == "test").all() and curves["step"].isna().all()
    assert (curves["score_acc"] == curves["val_acc"]).all()


def test_budget_and_convergence_columns(tmp_path, study_factory):
    improving = {"vit_mini-f0.02-s0", "vit_mini-f0.02-s1"}
    study = study_factory(
        tmp_path / "es", budget="early_stopping", seeds=[0, 1], still_improving=improving
    )
    results = collect_results(study).set_index("cell")
    assert set(results.index[results["still_improving"].fillna(False)]) == improving
    assert results["stopped_early"].all() and (results["budget"] == "early_stopping").all()
    raw = json.loads((study / "runs/resnet_mini-f0.02-s0/results.json").read_text())
    assert results.loc["resnet_mini-f0.02-s0", "steps_planned"] == raw["budget"]["steps_planned"]
    data = load_study_data(study)
    assert data.convergence["vit_mini-f0.02-s0"]["advice"].startswith("train longer")
    assert data.convergence["vit_mini-f0.07-s0"]["status"] == "converged"
