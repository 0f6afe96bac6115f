"""The head-to-head pair's learning curves: test error against training images, fitted per model
with a seed bootstrap (:func:`cnnvit.stats.curves.bootstrap_curves`), and what the verdict and
the table ``tables/learning_curve_fit.csv`` say about them.

The curve is the saturating power law ``error = a·n^(−b) + c`` (a straight line in log n where
fewer than four sizes were measured); the crossover and the images the weaker model needs to
match the stronger are read off the fitted curves, never beyond 10× the largest measured size.
The bootstrap's seed is fixed, so a rebuild gives the same numbers and the same bytes.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from cnnvit.report.collect import StudyData
from cnnvit.stats.curves import MAX_EXTRAPOLATION, CurveComparison, ModelCurve

N_BOOT = 1000
BOOT_SEED = 0  # fixed: the report must rebuild to the same bytes
TABLE = "learning_curve_fit"
TABLE_COLUMNS = [
    "trainable_blocks",
    "model",
    "kind",
    "a",
    "b",
    "b_ci_low",
    "b_ci_high",
    "c",
    "intercept",
    "slope",
    "crossover",
    "crossover_ci_low",
    "crossover_ci_high",
    "crossover_where",
    "crossover_share",
    "images_to_match",
    "images_to_match_ci_low",
    "images_to_match_ci_high",
    "match_target",
    "match_at",
    "seeds",
    "resamples",
    "failed_resamples",
]
METHOD = (
    "Learning curves: each head-to-head model's test error (1 − test top-1) is fitted against "
    "the number of training images n as a·n^(−b) + c, the saturating power law (b, the "
    "data-efficiency exponent, says how fast the error falls as the training set grows; c is the "
    "floor no amount of data removes), or as a straight line in log n where fewer than four "
    "sizes were measured. Intervals are 95 % percentiles over "
    f"{N_BOOT:,} resamples of the seeds (both models of a drawn seed kept together, seed "
    f"{BOOT_SEED}); nothing is read off the curves beyond {MAX_EXTRAPOLATION:g}× the largest "
    "measured size."
)


def fit_pair(
    data: StudyData, a: str, b: str, blocks: int | None
) -> tuple[CurveComparison | None, str | None]:
    """Both models' curves over their completed cells at depth ``blocks``, or None and why not."""
    from cnnvit.stats.curves import bootstrap_curves  # scipy's optimisers: only when fitting

    done = data.results[data.results["status"] == "completed"]
    depth = done["trainable_blocks"]
    done = done[(depth.isna() if blocks is None else (depth == blocks).fillna(False)).to_numpy()]
    cells = pd.DataFrame(
        {
            "model": done["model"],
            "seed": done["seed"],
            "n": pd.to_numeric(done["num_train_images"], errors="coerce").astype("float64"),
            "error": 1.0 - done["test_top1"].astype("float64"),
        }
    )
    cells = cells[cells["model"].isin([a, b]) & (cells["n"] > 0) & cells["error"].notna()]
    for model in (a, b):
        sizes = cells.loc[cells["model"] == model, "n"].nunique()
        if sizes < 2:
            return None, (
                f"{model} has completed runs at {sizes} training size{'s' if sizes != 1 else ''}; "
                "a learning curve needs at least two, so none is fitted"
            )
    try:
        return bootstrap_curves(cells, (a, b), n_boot=N_BOOT, seed=BOOT_SEED), None
    except ValueError as err:
        return None, f"the learning curves could not be fitted: {err}"


# --- sentences -----------------------------------------------------------------------------------


def curve_sentences(c: CurveComparison) -> list[str]:
    """The verdict's lines on the fitted curves: the exponents, the crossover, the match."""
    return [_exponents(c), _crossover(c), _match(c)]


def _exponents(c: CurveComparison) -> str:
    (ca, cb) = c.curves
    if ca.fit.kind == "power_law" and cb.fit.kind == "power_law":
        return (
            "Data-efficiency exponent b (the test error falls as n^(−b) towards its floor c as "
            f"the training set grows; larger is faster): {_b(ca)}; {_b(cb)}."
        )
    tenfold = [f"{_signed(m.fit.slope * math.log(10))} for {m.model}" for m in (ca, cb)]
    note = ca.fit.note if ca.fit.kind == "log_linear" else cb.fit.note
    return (
        f"No data-efficiency exponent: {note}. On those lines each tenfold increase in training "
        f"images changes the test error by {tenfold[0]} and {tenfold[1]}."
    )


def _b(m: ModelCurve) -> str:
    interval = "" if math.isnan(m.b_low) else f" (95 % interval {m.b_low:.2f} to {m.b_high:.2f})"
    return f"{m.model} b = {m.fit.b:.2f}{interval}, floor c = {100 * m.fit.c:.1f} % error"


def _crossover(c: CurveComparison) -> str:
    x = c.crossover
    lo, end = x.window
    largest = end / MAX_EXTRAPOLATION
    below = leader_at(c, lo)
    above = c.models[1] if below == c.models[0] else c.models[0]
    share = f"{100 * x.crossing_share:.0f} % of resamples cross within {MAX_EXTRAPOLATION:g}×"
    if x.n is None:
        return (
            f"The fitted curves do not cross within {MAX_EXTRAPOLATION:g}× of the largest size "
            f"({_exact(end)} training images): {below} stays ahead from {_exact(lo)} on "
            f"({share})."
        )
    interval = (
        "no resample crosses, so no interval"
        if x.low is None or x.high is None
        else f"95 % interval {_count(x.low)} to {_count(x.high)}"
    )
    where = (
        "inside the measured range"
        if crossover_where(c) == "inside"
        else f"extrapolated beyond the data (up to {MAX_EXTRAPOLATION:g}×, the largest measured "
        f"size is {_exact(largest)})"
    )
    return (
        f"The fitted curves cross at about {_count(x.n)} training images ({interval}; {share}), "
        f"{where}: {below} is ahead below, {above} above."
    )


def _match(c: CurveComparison) -> str:
    m = c.images_to_match
    target = f"{m.stronger}'s fitted test accuracy at {_exact(m.at)} images ({_pct(1 - m.error)})"
    if m.n is not None and m.n <= m.at:
        return f"{m.weaker} and {m.stronger} have the same fitted test accuracy at {_exact(m.at)}."
    if m.n is None:
        return (
            f"{m.weaker} would not reach {target} within {MAX_EXTRAPOLATION:g}× "
            f"({_exact(MAX_EXTRAPOLATION * m.at)} images); "
            f"{100 * m.reached_share:.0f} % of resamples do."
        )
    high = f"beyond {MAX_EXTRAPOLATION:g}×" if m.high is None else _count(m.high)
    interval = "" if m.low is None else f" (95 % interval {_count(m.low)} to {high})"
    return f"{m.weaker} would need about {_count(m.n)} training images{interval} to match {target}."


def crossover_where(c: CurveComparison) -> str:
    """Where the curves cross ("inside", "extrapolated", "none") as the comparison says, but a
    crossover at the largest measured size (to a millionth: a solver's root) counts as inside."""
    x = c.crossover
    largest = x.window[1] / MAX_EXTRAPOLATION
    if x.where == "extrapolated" and x.n is not None and x.n <= largest * (1 + 1e-6):
        return "inside"
    return x.where


def leader_at(c: CurveComparison, n: float) -> str:
    """The model with the lower fitted error at ``n`` (the first on a tie)."""
    (ca, cb) = c.curves
    return cb.model if float(cb.fit.predict(n)) < float(ca.fit.predict(n)) else ca.model


# --- the table -----------------------------------------------------------------------------------


def curve_table(fits: dict[object, CurveComparison | None]) -> pd.DataFrame:
    """One row per model and depth: the fit, its exponent's interval, the crossover and (for
    the weaker model) the images it needs to match the stronger; plain numbers."""
    rows = []
    for blocks, c in fits.items():
        if c is None:
            continue
        for curve in c.curves:
            rows.append(_row(blocks, c, curve))
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    frame["trainable_blocks"] = frame["trainable_blocks"].astype("Int64")
    return frame


def _row(blocks: object, c: CurveComparison, curve: ModelCurve) -> dict[str, Any]:
    f, x, m = curve.fit, c.crossover, c.images_to_match
    weaker = curve.model == m.weaker
    return {
        "trainable_blocks": blocks,
        "model": curve.model,
        "kind": f.kind,
        "a": f.a,
        "b": f.b,
        "b_ci_low": curve.b_low,
        "b_ci_high": curve.b_high,
        "c": f.c,
        "intercept": f.intercept,
        "slope": f.slope,
        "crossover": _nan(x.n),
        "crossover_ci_low": _nan(x.low),
        "crossover_ci_high": _nan(x.high),
        "crossover_where": crossover_where(c),
        "crossover_share": x.crossing_share,
        "images_to_match": _nan(m.n) if weaker else math.nan,
        "images_to_match_ci_low": _nan(m.low) if weaker else math.nan,
        "images_to_match_ci_high": _nan(m.high) if weaker else math.nan,
        "match_target": m.stronger if weaker else None,
        "match_at": m.at if weaker else math.nan,
        "seeds": c.seeds,
        "resamples": c.n_boot,
        "failed_resamples": c.failed,
    }


# --- formatting ----------------------------------------------------------------------------------


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _exact(n: float) -> str:
    """A measured size (or a multiple of one) as it is: 1,386, 13,860."""
    return f"{round(n):,}"


def _count(n: float) -> str:
    """Image counts read off a fitted curve, to three significant figures: 5,430, 41,200."""
    n = float(n)
    if n >= 1000:
        n = round(n, 3 - len(str(int(n))))
    return f"{round(n):,}"


def _signed(x: float) -> str:
    return f"{100 * x:+.1f} points".replace("-", "−")


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"
