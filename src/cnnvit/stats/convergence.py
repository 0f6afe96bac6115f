"""Was a cell still improving when its training stopped?

A model compared at a fixed budget may simply not have finished learning; a comparison of an
unfinished model says more about the budget than the model. This reads a cell's selection-split
accuracy, logged at several points of training, and asks whether the end of training was still
gaining more than the measurements jitter. The line fit is scipy's ``linregress``. Torch-free,
and imports nothing of cnnvit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

__all__ = ["MIN_GAIN", "NOISE_FLOOR", "RULE", "Convergence", "still_improving"]

MIN_POINTS = 4
NOISE_FLOOR = 0.002  # a fifth of a point: below this, scores are steadier than any split is large
MIN_GAIN = 0.005  # half a point of accuracy

RULE = (
    "Was a run still improving? From the selection-split accuracy logged during training, fit a "
    "straight line (least squares) against the optimiser step to the scores of the last quarter "
    "of the run (from the last score at or before its start; three scores at least). The "
    "projected gain is the line's slope times a quarter of the run's steps: what the last "
    "quarter added at its own pace. The noise is the larger of the scores' spread around that "
    "line (residual standard deviation), the sampling error of an accuracy on the selection "
    "split (√(p(1−p)/n) for n images) and 0.002. The run was still improving when the projected "
    "gain exceeds twice the noise and half a point (0.005); with fewer than four scores it "
    "cannot be told."
)


ADVICE = {
    "still_improving": (
        "train longer: raise train.budget.steps (or train.epochs) until the last quarter gains "
        "less than its noise"
    ),
    "converged": "no need to train longer: the last quarter gained less than its noise",
    "unknown": "log the selection accuracy at four or more points of training to tell",
}


@dataclass(frozen=True)
class Convergence:
    """The verdict of :data:`RULE` on one cell. ``gain``: projected accuracy gain over the last
    quarter (fraction); ``noise``: residual standard deviation of the line, floored; both NaN
    when ``status`` is "unknown", as is ``still_improving`` (None)."""

    still_improving: bool | None
    gain: float
    noise: float
    status: Literal["converged", "still_improving", "unknown"]
    advice: str


def _sampling_error(accuracy: float, images: int | None) -> float:
    """The standard error of an accuracy measured on ``images`` images (0 when unknown)."""
    if not images:
        return 0.0
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / images)


def still_improving(
    steps: Sequence[float], accuracy: Sequence[float], images: int | None = None
) -> Convergence:
    """Apply :data:`RULE` to one cell's log: ``steps`` (cumulative optimiser steps at each log
    point) and ``accuracy`` (selection-split accuracy there, a fraction), both shape (points,);
    ``images``: the size of the selection split, whose sampling error floors the noise. Log
    points with a missing value are left out."""
    x = np.asarray(steps, dtype=float)
    y = np.asarray(accuracy, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"one accuracy per log point: steps {x.shape}, accuracy {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if len(x) < MIN_POINTS or len(np.unique(x)) < MIN_POINTS:
        return Convergence(None, math.nan, math.nan, "unknown", ADVICE["unknown"])
    # The last quarter of training, from the last score at or before its start; three at least.
    start = int(np.searchsorted(x, 0.75 * x[-1], side="right")) - 1
    last = max(3, len(x) - max(start, 0))
    xs, ys = x[-last:], y[-last:]
    line = stats.linregress(xs, ys)
    residuals = ys - (line.intercept + line.slope * xs)
    # The spread around the line, with the line's two parameters taken off the degrees of freedom.
    spread = float(np.sqrt(np.sum(residuals**2) / (last - 2)))
    noise = max(spread, _sampling_error(float(ys.mean()), images), NOISE_FLOOR)
    gain = float(line.slope) * x[-1] / 4
    improving = bool(gain > 2 * noise and gain > MIN_GAIN)
    status: Literal["converged", "still_improving"] = (
        "still_improving" if improving else "converged"
    )
    return Convergence(improving, gain, noise, status, ADVICE[status])
