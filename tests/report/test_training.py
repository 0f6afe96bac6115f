"""The report names the split of every number, states the budget and marks the runs that were
still improving; a study written before the three-way split still builds and says so."""

from __future__ import annotations

import html
import json
import re

import pandas as pd
import pytest

from cnnvit.report import write_report
from cnnvit.stats.convergence import RULE


def _section(page: str, name: str) -> str:
    start = page.index(f'<section id="{name}">')
    return page[start : page.index("</section>", start)]


def _header(page: str) -> dict[str, str]:
    header = page[page.index("<header>") : page.index("</header>")]
    return {
        dt: html.unescape(re.sub("<[^>]+>", "", dd))
        for dt, dd in re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", header)
    }


@pytest.fixture(scope="module")
def improving(tmp_path_factory, study_factory):
    """A study where one vit_mini run at 960 images was still improving when it stopped."""
    root = tmp_path_factory.mktemp("improving") / "s"
    study_factory(root, still_improving={"vit_mini-f0.02-s1"})
    return root, write_report(root).read_text()


def test_header_names_the_three_splits_and_the_budget(improving):
    _, page = improving
    header = _header(page)
    assert header["Train split"].startswith("0.02 (960 images), 0.07 (3,360 images), 0.25")
    assert header["Selection split"] == (
        "2,000 images, held out of the training pool and scored during training"
    )
    assert header["Test split"].startswith("300 images, the same for every run")
    assert header["Chosen on"].startswith(
        "Everything chosen during training (the best epoch, early stopping, tuning) used the "
        "selection split only"
    )
    assert header["Budget"] == (
        "steps: 1,500 optimiser steps planned per run at every training size, the selection "
        "split scored 5 times"
    )
    assert "validation" not in page.lower()


def test_learning_curves_are_selection_accuracy_against_steps(improving):
    _, page = improving
    section = _section(page, "learning-curves")
    assert "Selection accuracy (the selection split, scored during training)" in section
    assert "against optimiser steps" in section


def test_budget_table_against_the_run_files(improving):
    root, page = improving
    table = pd.read_csv(root / "tables" / "budget.csv")
    for row in table.itertuples():
        runs = [
            json.loads(p.read_text())
            for p in (root / "runs").glob(f"{row.model}-f{row.fraction:g}-s*/results.json")
        ]
        assert row.n == len(runs) == 3
        assert row.steps_completed_mean == pytest.approx(
            sum(r["steps_completed"] for r in runs) / 3
        )
        assert row.epochs_completed_mean == pytest.approx(
            sum(r["epochs_completed"] for r in runs) / 3
        )
        assert row.steps_planned == 1500
        flagged = sum(r["convergence"]["still_improving"] for r in runs)
        assert row.still_improving == flagged == (row.model == "vit_mini" and row.fraction == 0.02)
    section = _section(page, "budget")
    assert "▲ still improving (1 of 3)" in section
    assert html.escape(RULE, quote=True) in section
    assert "train longer: raise train.budget.steps" in section
    # 960 images under 1,500 steps of 64 images: 100 epochs; 12,000 images: 8.
    assert '<td class="num">100.0</td>' in section and '<td class="num">8.0</td>' in section


def test_the_still_improving_cell_is_marked(improving):
    root, page = improving
    cells = _section(page, "cells")
    row = next(r for r in cells.split("<tr>") if "runs/vit_mini-f0.02-s1<" in r)
    assert "▲ still improving" in row
    assert sum("▲ still improving" in r for r in cells.split("<tr>")) == 1
    assert "1 still improving when training stopped" in cells
    table = pd.read_csv(root / "tables" / "cells.csv").set_index("cell")
    assert table["still_improving"].sum() == 1 and table.loc["vit_mini-f0.02-s1", "still_improving"]
    accuracy = _section(page, "accuracy")
    assert accuracy.count(" ▲</td>") == 1  # vit_mini at 960 images in the accuracy table


def test_an_old_study_builds_and_says_where_its_best_epochs_were_chosen(tmp_path, study_factory):
    root = study_factory(tmp_path / "old", legacy=True, seeds=[0, 1])
    page = write_report(root).read_text()
    header = _header(page)
    assert header["Selection split"] == "none (runs written before the three-way split)"
    assert header["Chosen on"].startswith(
        "All 12 runs were written before the three-way split: they had no selection split, so "
        "their best epochs were chosen on the test split itself"
    )
    assert header["Budget"].startswith("not recorded")
    verdict = _section(page, "verdict")
    assert "their best epochs were chosen on the test split itself" in verdict
    assert "better than" in verdict or "too few seeds" in verdict
    curves = _section(page, "learning-curves")
    assert "scored the test split during training" in curves and "against epochs" in curves
    assert "recorded a calibration error" in _section(page, "calibration")
    assert "cannot be told" in _section(page, "budget")
    results = pd.read_csv(root / "results.csv")
    assert (results["selected_on"] == "test").all() and results["test_top1"].notna().all()


def test_a_study_with_some_old_runs_says_how_many(tmp_path, study_factory):
    old = {f"vit_mini-f{f:g}-s0" for f in (0.02, 0.07, 0.25)}
    root = study_factory(tmp_path / "mixed", seeds=[0, 1], legacy=old)
    page = write_report(root).read_text()
    assert _header(page)["Chosen on"].endswith(
        "But 3 of 12 runs were written before the three-way split: they had no selection split, "
        "so their best epochs were chosen on the test split itself, and their test numbers are "
        "slightly optimistic."
    )
    assert _header(page)["Selection split"].endswith("; none in 3 older runs")
    assert "3 of 12 completed runs were written before the three-way split" in page


def test_early_stopping_budget(tmp_path, study_factory):
    root = study_factory(tmp_path / "es", budget="early_stopping", seeds=[0, 1])
    page = write_report(root).read_text()
    assert _header(page)["Budget"].startswith(
        "early stopping: a run stops after 2 scores of the selection split without a new best "
        "(at most 150 to 1,880 optimiser steps, scored up to 10 times)"
    )  # the fabricated cap: twice 5 epochs of ceil(960 / 64) = 15 and ceil(12,000 / 64) = 188
    table = pd.read_csv(root / "tables" / "budget.csv")
    assert (table["stopped_early"] == 2).all() and (table["budget"] == "early_stopping").all()
    assert "2 of 2" in _section(page, "budget")
