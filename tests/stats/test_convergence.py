"""Was a run still improving? Constructed logs: a steady rise is flagged, a plateau is not, and
three points cannot tell."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cnnvit.stats.convergence import NOISE_FLOOR, RULE, still_improving


def test_a_log_that_still_rises_is_flagged():
    rng = np.random.default_rng(0)
    k = np.arange(10)
    steps = 500.0 * (k + 1)
    acc = 0.5 + 0.04 * k + rng.normal(0, 0.003, k.size)
    got = still_improving(steps, acc)
    assert got.status == "still_improving" and got.still_improving is True
    # the last quarter (steps 3,750 to 5,000) starts at the score of step 3,500: 4 scores
    line = stats.linregress(steps[-4:], acc[-4:])
    assert got.gain == pytest.approx(line.slope * 5000.0 / 4)
    assert got.gain == pytest.approx(0.04 / 500 * 1250, rel=0.2)  # about 0.1
    assert got.noise >= NOISE_FLOOR and got.gain > 2 * got.noise
    assert got.advice.startswith("train longer: raise train.budget.steps")


def test_a_plateau_is_not_flagged():
    rng = np.random.default_rng(1)
    k = np.arange(20)
    steps = 100.0 * (k + 1)
    rise = 0.6 + 0.3 * (1 - np.exp(-k / 2.0))  # flat to 1e-4 after the first half
    acc = rise + rng.normal(0, 0.003, k.size)
    got = still_improving(steps, acc)
    assert got.status == "converged" and got.still_improving is False
    # the last quarter (steps 1,500 to 2,000) from the score at step 1,500: 6 scores
    residual_sd = np.std(
        acc[-6:] - np.polyval(np.polyfit(steps[-6:], acc[-6:], 1), steps[-6:]), ddof=2
    )
    assert got.noise == pytest.approx(max(residual_sd, NOISE_FLOOR))
    assert abs(got.gain) < 2 * got.noise
    assert got.advice.startswith("no need to train longer")


def test_a_small_steady_gain_below_half_a_point_is_not_flagged():
    steps = np.arange(1, 9) * 1000.0
    acc = 0.9 + 0.0004 * np.arange(8)  # noiseless, but the last quarter adds 0.1 of a point
    got = still_improving(steps, acc)
    assert got.gain == pytest.approx(0.0004 / 1000 * 2000)
    assert got.noise == NOISE_FLOOR and got.status == "converged"


def test_the_selection_splits_sampling_error_floors_the_noise():
    steps = np.arange(1, 9) * 100.0
    acc = 0.8 + 0.004 * np.arange(8)  # noiseless: 0.8 points over the last quarter
    assert still_improving(steps, acc).status == "still_improving"
    # measured on 400 images, an accuracy of 0.82 is uncertain to ±2 points: not a rise
    got = still_improving(steps, acc, images=400)
    assert got.noise == pytest.approx(math.sqrt(0.82 * 0.18 / 400), rel=0.03)
    assert got.status == "converged"


def test_three_points_cannot_tell():
    got = still_improving([100, 200, 300], [0.5, 0.6, 0.7])
    assert got.status == "unknown" and got.still_improving is None
    assert math.isnan(got.gain) and math.isnan(got.noise)
    assert "four or more" in got.advice
    # A missing score leaves too few points as well.
    assert still_improving([1, 2, 3, 4], [0.5, math.nan, 0.6, 0.7]).status == "unknown"
    with pytest.raises(ValueError):
        still_improving([1, 2, 3], [0.5, 0.6])


def test_rule_is_one_paragraph():
    assert "\n" not in RULE and "0.002" in RULE and "0.005" in RULE and "quarter" in RULE
