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
    assert math.isnan(failed["final_val_top1"])


def test_numbers_come_from_results_json(study):
    results = collect_results(study).set_index("cell")
    raw = json.loads((study / "runs/resnet_mini-f0.25-s1/results.json").read_text())
    row = results.loc["resnet_mini-f0.25-s1"]
    assert row["final_val_top1"] == raw["final_top1"]
    assert row["best_val_top1"] == raw["best_val_acc"]
    assert row["top5"] == raw["final_top5"]
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
        for metric in ("final_val_top1", "best_val_top1", "macro_f1"):
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
    assert summary["final_val_top1_std"].isna().all()
    assert summary["final_val_top1_ci95_low"].isna().all()
    assert summary["final_val_top1_mean"].notna().all()


def test_curves_stack_completed_epoch_logs(study):
    data = load_study_data(study)
    completed = (data.results["status"] == "completed").sum()
    assert data.curves["cell"].nunique() == completed
    assert (data.curves.groupby("cell")["epoch"].max() == 3).all()
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
