"""The calibration section: ECE per model and size from the runs, reliability bins pooled over
seeds, checked against an ECE computed here from the predictions themselves."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cnnvit.report import write_report
from cnnvit.report.calibration import pooled_reliability
from cnnvit.report.collect import load_study_data

EXPLAIN = (
    "ECE: the average gap between confidence and accuracy over 15 confidence bins; 0 is "
    "perfectly calibrated."
)


def _ece(frames: list[pd.DataFrame], bins: int = 15) -> float:
    """Expected calibration error of predictions.parquet frames taken together: equal-width
    bins of top-1 confidence, |accuracy − mean confidence| weighted by the bin's share."""
    conf = np.concatenate([f["confidence"].to_numpy(np.float64) for f in frames])
    right = np.concatenate([(f["prediction"] == f["label"]).to_numpy() for f in frames])
    which = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for k in range(bins):
        mine = which == k
        if mine.any():
            total += mine.sum() * abs(right[mine].mean() - conf[mine].mean())
    return total / len(conf)


def _predictions(root, cell: str) -> pd.DataFrame:
    return pd.read_parquet(root / "runs" / cell / "predictions.parquet")


@pytest.fixture(scope="module")
def study(tmp_path_factory, study_factory):
    root = tmp_path_factory.mktemp("calibration") / "s"
    study_factory(root)
    return root, write_report(root).read_text()


def test_ece_per_model_and_size_is_the_mean_over_seeds(study):
    root, page = study
    table = pd.read_csv(root / "tables" / "calibration.csv")
    assert len(table) == 6
    for row in table.itertuples():
        cells = [f"{row.model}-f{row.fraction:g}-s{s}" for s in (0, 1, 2)]
        recorded = [
            json.loads((root / "runs" / c / "results.json").read_text())["test_ece"] for c in cells
        ]
        assert row.test_ece_mean == pytest.approx(np.mean(recorded))
        assert row.test_ece_std == pytest.approx(np.std(recorded, ddof=1))
        # ... and each run's ECE is its predictions' own.
        for cell, ece in zip(cells, recorded, strict=True):
            assert ece == pytest.approx(_ece([_predictions(root, cell)]), abs=1e-6)
    section = page[page.index('<section id="calibration">') :].split("</section>")[0]
    assert EXPLAIN in section
    assert "reliability diagrams" in section
    first = table.iloc[0]
    shown = f"{100 * first.test_ece_mean:.2f} ± {100 * first.test_ece_std:.2f} % (n=3)"
    assert shown in section
    assert (root / "figures" / "reliability.png").stat().st_size > 1000


def test_reliability_bins_are_pooled_over_seeds(study):
    root, _ = study
    panels = pooled_reliability(load_study_data(root))
    assert [(p.model, p.num_train_images, p.seeds) for p in panels] == [
        ("resnet_mini", 12_000, 3),
        ("vit_mini", 12_000, 3),
    ]
    for panel in panels:
        frames = [_predictions(root, f"{panel.model}-f0.25-s{s}") for s in (0, 1, 2)]
        assert panel.count.sum() == sum(len(f) for f in frames)
        assert panel.ece == pytest.approx(_ece(frames), abs=1e-6)
        bin_of = np.minimum(
            (np.concatenate([f["confidence"].to_numpy(np.float64) for f in frames]) * 15).astype(
                int
            ),
            14,
        )
        assert panel.count[:15].tolist() == np.bincount(bin_of, minlength=15).tolist()


def test_runs_without_calibration_leave_the_section_a_note(tmp_path, study_factory):
    root = study_factory(tmp_path / "old", legacy=True, seeds=[0])
    page = write_report(root).read_text()
    section = page[page.index('<section id="calibration">') :].split("</section>")[0]
    assert "No completed run recorded a calibration error" in section
    assert not (root / "figures" / "reliability.png").exists()
