"""The head-to-head pair's fitted learning curves: the exponents, where the curves cross and the
images the weaker model needs to match the stronger, in the verdict and in
tables/learning_curve_fit.csv."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import curve_fit

from cnnvit.report import write_report
from cnnvit.report.collect import load_study_data
from cnnvit.report.verdict import verdict

MODELS = [("cnn_a", "resnet_mini"), ("vit_b", "vit_mini")]
FOUR = [0.01, 0.02, 0.07, 0.25]  # 480, 960, 3,360 and 12,000 training images


def _laws(**laws: tuple[float, float, float]):
    """An accuracy function from a power law error = a·n^(−b) + c per model, plus seed noise."""

    def accuracy(model: str, fraction: float, seed: int) -> float:
        a, b, c = laws[model]
        n = round(48_000 * fraction)
        noise = 0.01 * (seed - 1) * (1 if model == "cnn_a" else -0.5)
        return round(1 - (a * n ** (-b) + c) + noise, 2)

    return accuracy


def _study(tmp_path, study_factory, accuracy, fractions=FOUR):
    root = study_factory(tmp_path / "s", models=MODELS, fractions=fractions, accuracy=accuracy)
    return root, load_study_data(root)


def _line(lines: list[str], start: str) -> str:
    return next(s for s in lines if s.startswith(start))


def _table(root) -> pd.DataFrame:
    write_report(root)
    return pd.read_csv(root / "tables" / "learning_curve_fit.csv").set_index("model")


def _error(row: pd.Series, n: float) -> float:
    return row["a"] * n ** (-row["b"]) + row["c"]


def test_curves_crossing_inside_the_measured_range(tmp_path, study_factory):
    # cnn_a ahead at 480 and 960 images, vit_b at 3,360 and 12,000.
    accuracy = _laws(cnn_a=(2.0, 0.3, 0.05), vit_b=(20.0, 0.6, 0.0))
    root, data = _study(tmp_path, study_factory, accuracy)
    lines = verdict(data)
    table = _table(root)
    # An independent fit of the same law to the same cells gives the same exponents.
    cells = data.results
    for model in ("cnn_a", "vit_b"):
        mine = cells[cells["model"] == model]
        n = mine["num_train_images"].to_numpy(float)
        (_, b, _), _ = curve_fit(
            lambda x, a, b, c: a * x ** (-b) + c, n, 1 - mine["test_top1"].to_numpy(float),
            p0=(5.0, 0.4, 0.01), maxfev=20_000,
        )  # fmt: skip
        assert table.loc[model, "kind"] == "power_law"
        assert table.loc[model, "b"] == pytest.approx(b, abs=2e-3)
    exponents = _line(lines, "Data-efficiency exponent b")
    for model in ("cnn_a", "vit_b"):
        assert f"{model} b = {table.loc[model, 'b']:.2f} (95 % interval " in exponents
    # At the crossover both fitted curves give the same error, and it lies between the sizes
    # where the lead changes hands.
    x = table.loc["cnn_a", "crossover"]
    assert 960 < x < 3360 and table.loc["vit_b", "crossover"] == x
    assert _error(table.loc["cnn_a"], x) == pytest.approx(_error(table.loc["vit_b"], x), rel=1e-6)
    assert table.loc["cnn_a", "crossover_ci_low"] <= x <= table.loc["cnn_a", "crossover_ci_high"]
    crossing = _line(lines, "The fitted curves cross")
    assert f"at about {round(x, -1):,.0f} training images (95 % interval " in crossing
    assert crossing.endswith("inside the measured range: cnn_a is ahead below, vit_b above.")


def test_curves_crossing_beyond_the_data_and_the_images_to_match(tmp_path, study_factory):
    # cnn_a ahead at every measured size, vit_b steeper: they cross past 12,000 images.
    accuracy = _laws(cnn_a=(1.0, 0.3, 0.02), vit_b=(10.0, 0.5, 0.0))
    root, data = _study(tmp_path, study_factory, accuracy)
    lines = verdict(data)
    table = _table(root)
    x = table.loc["cnn_a", "crossover"]
    assert 12_000 < x <= 120_000 and table.loc["cnn_a", "crossover_where"] == "extrapolated"
    crossing = _line(lines, "The fitted curves cross")
    assert (
        "extrapolated beyond the data (up to 10×, the largest measured size is 12,000)" in crossing
    )
    # vit_b, the weaker at 12,000, reaches cnn_a's fitted error there at images_to_match.
    weaker = table.loc["vit_b"]
    assert weaker["match_target"] == "cnn_a" and pd.isna(table.loc["cnn_a", "images_to_match"])
    n = weaker["images_to_match"]
    assert 12_000 < n < x
    assert _error(weaker, n) == pytest.approx(_error(table.loc["cnn_a"], 12_000), rel=1e-6)
    match = _line(lines, "vit_b would need about")
    assert match.startswith(f"vit_b would need about {round(n, -2):,.0f} training images (95 %")
    assert match.endswith(f"to match cnn_a's fitted test accuracy at 12,000 images "
                          f"({100 * (1 - _error(table.loc['cnn_a'], 12_000)):.1f} %).")  # fmt: skip


def test_curves_that_do_not_cross_within_ten_times(tmp_path, study_factory):
    accuracy = _laws(cnn_a=(1.0, 0.3, 0.02), vit_b=(1.5, 0.25, 0.05))
    root, data = _study(tmp_path, study_factory, accuracy)
    lines = verdict(data)
    assert _line(lines, "The fitted curves do not cross").startswith(
        "The fitted curves do not cross within 10× of the largest size (120,000 training "
        "images): cnn_a stays ahead from 480 on"
    )
    assert _line(lines, "vit_b would not reach").startswith(
        "vit_b would not reach cnn_a's fitted test accuracy at 12,000 images"
    )
    table = _table(root)
    assert table["crossover"].isna().all() and (table["crossover_where"] == "none").all()


def test_three_sizes_fit_straight_lines_in_log_n(tmp_path, study_factory):
    def accuracy(model, fraction, seed):
        slope = 0.02 if model == "cnn_a" else 0.035
        return 0.80 + slope * math.log2(fraction * 64) + 0.004 * seed

    root, data = _study(tmp_path, study_factory, accuracy, fractions=[0.02, 0.07, 0.25])
    line = _line(verdict(data), "No data-efficiency exponent: only 3 distinct")
    cells = data.results
    for model in ("cnn_a", "vit_b"):
        mine = cells[cells["model"] == model]
        slope, _ = np.polyfit(
            np.log(mine["num_train_images"].to_numpy(float)), 1 - mine["test_top1"].to_numpy(), 1
        )
        tenfold = f"{100 * slope * math.log(10):+.1f}".replace("-", "−")
        assert f"{tenfold} points for {model}" in line
    table = _table(root)
    assert (table["kind"] == "log_linear").all() and table["b"].isna().all()


def test_one_size_has_no_curve(tmp_path, study_factory):
    _, data = _study(tmp_path, study_factory, lambda m, f, s: 0.8, fractions=[0.25])
    assert (
        "No learning curves: cnn_a has completed runs at 1 training size; a learning curve needs "
        "at least two, so none is fitted."
    ) in verdict(data)
