"""Learning curves: test error against training-set size, per model, with a seed bootstrap.

The model is the saturating power law ``error(n) = a·n^(−b) + c`` (``b``: how fast more data
helps, the data-efficiency exponent; ``c``: the floor no amount of data removes), fitted by
scipy's ``curve_fit``. With fewer than four distinct sizes three parameters cannot be fitted
and checked, so the fit is a straight line in log n instead (``error = intercept + slope·ln n``).

Uncertainty comes from resampling seeds, not cells: the two models of one seed share its
training subset, so a resample draws seeds with replacement and keeps both models' cells of each
drawn seed. Nothing is extrapolated beyond :data:`MAX_EXTRAPOLATION` times the largest measured
size; asking for more raises ``ValueError``. Torch-free, and imports nothing of cnnvit.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, brentq, curve_fit

__all__ = [
    "MAX_EXTRAPOLATION",
    "Crossover",
    "CurveComparison",
    "CurveFit",
    "Match",
    "ModelCurve",
    "bootstrap_curves",
    "crossover",
    "fit_curve",
    "images_to_match",
]

MAX_EXTRAPOLATION = 10.0
MIN_POWER_LAW_SIZES = 4
GRID_POINTS = 48  # the band's sizes, log-spaced from the smallest measured size to the limit
ROOT_GRID = 64  # log-spaced points searched for a sign change before brentq refines it
BOOT_MAXFEV = 200  # a resample's refit starts at the full-data fit and needs few steps
# Bounds of the power law on n scaled by the largest size, (A, b, c) with a = A·n_max^b.
_LOWER = np.array([1e-12, 1e-6, 0.0])
_UPPER = np.array([np.inf, 2.0, 1.0])


@dataclass(frozen=True)
class CurveFit:
    """One model's learning curve.

    ``kind`` "power_law": ``error = a·n^(−b) + c`` (``intercept``, ``slope`` NaN).
    ``kind`` "log_linear": ``error = intercept + slope·ln n`` (``a``, ``b``, ``c`` NaN).
    ``sizes``: the smallest and largest measured n; ``note``: why this kind.
    """

    kind: Literal["power_law", "log_linear"]
    a: float
    b: float
    c: float
    intercept: float
    slope: float
    sizes: tuple[float, float]
    note: str

    @property
    def limit(self) -> float:
        """The largest n the curve may be read at: MAX_EXTRAPOLATION × the largest measured."""
        return MAX_EXTRAPOLATION * self.sizes[1]

    def predict(self, n: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """Fitted error at ``n`` (any shape, same shape out). Raises ``ValueError`` beyond
        :attr:`limit`; the log-linear curve is not clipped to [0, 1]."""
        x = np.asarray(n, dtype=float)
        _within(float(np.max(x)) if x.size else 0.0, self.sizes[1], "a prediction")
        if self.kind == "power_law":
            return self.a * x ** (-self.b) + self.c
        return self.intercept + self.slope * np.log(x)


def _within(n: float, largest: float, what: str) -> None:
    # A small relative slack: limits computed as 10 × n_max may differ in the last bit.
    if n > MAX_EXTRAPOLATION * largest * (1 + 1e-9):
        raise ValueError(
            f"{what} at n = {n:,.0f} is beyond {MAX_EXTRAPOLATION:g}× the largest measured "
            f"training-set size ({largest:,.0f}); curves are not extrapolated that far"
        )


def _power(x: np.ndarray, amp: float, b: float, c: float) -> np.ndarray:
    return amp * x ** (-b) + c


def _power_jac(x: np.ndarray, amp: float, b: float, c: float) -> np.ndarray:
    p = x ** (-b)
    return np.column_stack([p, -amp * p * np.log(x), np.ones_like(x)])


def _start(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Start values (A, b, c): for a few exponents b, (A, c) by linear least squares, the best
    kept. Glue: curve_fit needs a start near the optimum, and the model is linear given b."""
    best, best_sse = np.array([max(float(np.ptp(y)), 1e-3), 0.5, float(np.min(y)) / 2]), np.inf
    for b in np.linspace(0.1, 1.5, 15):
        design = np.column_stack([x ** (-b), np.ones_like(x)])
        (amp, c), *_ = np.linalg.lstsq(design, y, rcond=None)
        sse = float(np.sum((design @ np.array([amp, c]) - y) ** 2))
        if amp > 0 and sse < best_sse:
            best, best_sse = np.array([amp, b, c]), sse
    return np.clip(best, _LOWER, np.where(np.isinf(_UPPER), np.inf, _UPPER))


def _inside(params: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(params)) and np.all((params >= _LOWER) & (params <= _UPPER)))


def _no_floor(x: np.ndarray, amp: float, b: float) -> np.ndarray:
    return amp * x ** (-b)


def _no_floor_jac(x: np.ndarray, amp: float, b: float) -> np.ndarray:
    return _power_jac(x, amp, b, 0.0)[:, :2]


def _fit_power(
    x: np.ndarray, y: np.ndarray, p0: np.ndarray, maxfev: int | None
) -> np.ndarray | None:
    """(A, b, c) on scaled sizes ``x``, or None when curve_fit does not converge.

    Unbounded Levenberg–Marquardt first (MINPACK: several times faster than the bounded
    solver, which matters for a thousand resamples). If its floor c comes out below 0, the fit
    with c held at 0 is the bounded optimum when it keeps the other bounds and raising c would
    not lower the squared error (the sum of residuals fitted − measured is >= 0: the
    Karush–Kuhn–Tucker condition for c at its bound). Otherwise the bounded trust-region fit
    from the same start decides.
    """
    limit = {} if maxfev is None else {"maxfev": maxfev}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)  # the covariance is not used
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in a rejected trial step
        try:
            params, _ = curve_fit(_power, x, y, p0=p0, jac=_power_jac, method="lm", **limit)
            if _inside(params):
                return params
            if params[2] < 0:
                two, _ = curve_fit(
                    _no_floor, x, y, p0=p0[:2], jac=_no_floor_jac, method="lm", **limit
                )
                floorless = np.array([two[0], two[1], 0.0])
                if _inside(floorless) and np.sum(_no_floor(x, *two) - y) >= 0:
                    return floorless
        except (RuntimeError, ValueError):
            pass
        try:
            params, _ = curve_fit(
                _power, x, y, p0=p0, jac=_power_jac, bounds=(_LOWER, _UPPER), **limit
            )
        except (RuntimeError, ValueError):
            return None
    return params if np.all(np.isfinite(params)) else None


def _power_fit(params: np.ndarray, scale: float, sizes: tuple[float, float], note: str) -> CurveFit:
    amp, b, c = (float(v) for v in params)
    nan = math.nan
    return CurveFit("power_law", amp * scale**b, b, c, nan, nan, sizes, note)


def _log_linear(n: np.ndarray, y: np.ndarray, sizes: tuple[float, float], note: str) -> CurveFit:
    slope, intercept = np.polyfit(np.log(n), y, 1)
    nan = math.nan
    return CurveFit("log_linear", nan, nan, nan, float(intercept), float(slope), sizes, note)


def fit_curve(n: Sequence[float] | np.ndarray, error: Sequence[float] | np.ndarray) -> CurveFit:
    """Fit one model's learning curve to its cells: ``n`` training images and ``error``
    (1 − test accuracy) per cell, both shape (cells,); several seeds per size are fine.

    The power law when there are at least four distinct sizes, fitted on n / max(n) so that the
    parameters are of similar scale; a straight line in log n otherwise, or when the power law
    does not converge (``note`` says which and why).
    """
    x_all = np.asarray(n, dtype=float)
    y_all = np.asarray(error, dtype=float)
    if x_all.shape != y_all.shape:
        raise ValueError(f"n and error differ in shape: {x_all.shape} and {y_all.shape}")
    keep = np.isfinite(x_all) & np.isfinite(y_all) & (x_all > 0)
    x_all, y_all = x_all[keep], y_all[keep]
    distinct = len(np.unique(x_all))
    if distinct < 2:
        raise ValueError(f"a learning curve needs at least 2 distinct sizes, got {distinct}")
    sizes = (float(x_all.min()), float(x_all.max()))
    if distinct < MIN_POWER_LAW_SIZES:
        note = (
            f"only {distinct} distinct training-set sizes: the power law's three parameters need "
            f"at least {MIN_POWER_LAW_SIZES}, so a straight line in log n (no floor, no exponent)"
        )
        return _log_linear(x_all, y_all, sizes, note)
    scale = sizes[1]
    x = x_all / scale
    params = _fit_power(x, y_all, _start(x, y_all), maxfev=None)
    if params is None:
        note = "the power law did not converge, so a straight line in log n instead"
        return _log_linear(x_all, y_all, sizes, note)
    note = f"saturating power law a·n^(−b) + c fitted on {distinct} sizes"
    return _power_fit(params, scale, sizes, note)


def _refit(full: CurveFit, n: np.ndarray, y: np.ndarray) -> CurveFit | None:
    """``full``'s kind refitted to a resample, warm-started at ``full``; None if it fails.
    The resample's curve keeps the study's measured range (its limit is the study's)."""
    if len(np.unique(n)) < 2:
        return None
    if full.kind == "log_linear":
        return _log_linear(n, y, full.sizes, full.note)
    scale = full.sizes[1]
    p0 = np.array([full.a * scale ** (-full.b), full.b, full.c])
    params = _fit_power(n / scale, y, p0, maxfev=BOOT_MAXFEV)
    return None if params is None else _power_fit(params, scale, full.sizes, full.note)


def _first_root(g: Callable[[np.ndarray], np.ndarray], lo: float, hi: float) -> float | None:
    """The smallest n in [lo, hi] where ``g`` changes sign (searched on log n), or None."""
    t = np.linspace(math.log(lo), math.log(hi), ROOT_GRID)
    v = g(np.exp(t))
    if v[0] == 0:
        return lo
    changes = np.nonzero(np.sign(v[:-1]) * np.sign(v[1:]) <= 0)[0]
    if len(changes) == 0:
        return None
    i = int(changes[0])
    if v[i + 1] == 0:
        return float(math.exp(t[i + 1]))
    root = brentq(lambda s: float(g(np.exp(s))), t[i], t[i + 1], xtol=1e-10)
    return float(math.exp(root))


def crossover(fit_a: CurveFit, fit_b: CurveFit, upto: float | None = None) -> float | None:
    """The smallest n where the two fitted curves cross, searched from the larger of the two
    smallest measured sizes up to ``upto`` (default and maximum: MAX_EXTRAPOLATION × the smaller
    of the two largest measured sizes); None when they do not cross there."""
    lo = max(fit_a.sizes[0], fit_b.sizes[0])
    largest = min(fit_a.sizes[1], fit_b.sizes[1])
    hi = MAX_EXTRAPOLATION * largest if upto is None else float(upto)
    _within(hi, largest, "a crossover")
    if hi <= lo:
        return None
    return _first_root(lambda n: fit_a.predict(n) - fit_b.predict(n), lo, hi)


def images_to_match(
    fit: CurveFit, error: float, *, start: float | None = None, upto: float | None = None
) -> float | None:
    """The smallest n in [``start``, ``upto``] at which ``fit`` reaches ``error`` (``start``
    itself when it already has); ``start`` defaults to the smallest measured size, ``upto`` (and
    its maximum) to MAX_EXTRAPOLATION × the largest. None when not reached there."""
    lo = fit.sizes[0] if start is None else float(start)
    hi = fit.limit if upto is None else float(upto)
    _within(max(lo, hi), fit.sizes[1], "a match")
    if float(fit.predict(lo)) <= error:
        return lo
    if hi <= lo:
        return None
    return _first_root(lambda n: fit.predict(n) - error, lo, hi)


@dataclass(frozen=True)
class ModelCurve:
    """One model in a comparison: the fit on all cells, the pointwise percentile band of the
    fitted error over :attr:`CurveComparison.grid` (``band_low``/``band_high``, one value per
    grid size), and the exponent b's percentile interval (NaN for a log-linear fit)."""

    model: str
    fit: CurveFit
    band_low: tuple[float, ...]
    band_high: tuple[float, ...]
    b_low: float
    b_high: float


@dataclass(frozen=True)
class Crossover:
    """Where the two fitted curves cross within ``window`` ([the smallest measured n,
    MAX_EXTRAPOLATION × the largest]).

    ``n``: on all cells (None when they do not cross in the window); ``low``/``high``: percentile
    interval over the resamples that cross in the window (None when none does);
    ``crossing_share``: the share of resamples that cross; ``where``: "inside" the measured
    range, "extrapolated" beyond it (up to the window's end), or "none" (not within 10×).
    """

    n: float | None
    low: float | None
    high: float | None
    crossing_share: float
    where: Literal["inside", "extrapolated", "none"]
    window: tuple[float, float]


@dataclass(frozen=True)
class Match:
    """How many images the ``weaker`` model (higher fitted error at the largest measured size
    ``at``) needs to reach the ``stronger`` one's fitted ``error`` there.

    ``n``: on all cells, None when not reached within MAX_EXTRAPOLATION × ``at``;
    ``low``/``high``: percentile interval over resamples (no interpolation: a resample that does
    not reach it counts as beyond the limit), ``high`` None when beyond 10×;
    ``reached_share``: the share of resamples that reach it; ``note``: "beyond 10×" or "".
    """

    weaker: str
    stronger: str
    error: float
    at: float
    n: float | None
    low: float | None
    high: float | None
    reached_share: float
    note: str


@dataclass(frozen=True)
class CurveComparison:
    """Two models' learning curves with a seed bootstrap (:func:`bootstrap_curves`).

    ``grid``: the sizes the bands are given at; ``n_boot``: resamples drawn, ``failed``: those
    where a refit did not converge (left out of every interval); ``seeds``: distinct seeds.
    """

    models: tuple[str, str]
    curves: tuple[ModelCurve, ModelCurve]
    grid: tuple[float, ...]
    crossover: Crossover
    images_to_match: Match
    n_boot: int
    failed: int
    seeds: int
    confidence: float


def _cells_by_seed(
    cells: pd.DataFrame, model: str, seeds: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per seed (in ``seeds``' order): this model's (n, error) arrays."""
    mine = cells[cells["model"] == model]
    if mine.empty:
        raise ValueError(f"no cells for model {model!r}")
    groups = {s: g for s, g in mine.groupby("seed", sort=True)}
    empty = (np.empty(0), np.empty(0))
    return [
        (groups[s]["n"].to_numpy(float), groups[s]["error"].to_numpy(float))
        if s in groups
        else empty
        for s in seeds
    ]


def _where(n: float | None, largest: float) -> Literal["inside", "extrapolated", "none"]:
    if n is None:
        return "none"
    return "inside" if n <= largest else "extrapolated"


def _percentiles(values: list[float], confidence: float) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    q = 100 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
    low, high = np.percentile(values, q)
    return float(low), float(high)


def _censored(values: list[float], confidence: float) -> tuple[float | None, float | None]:
    """Percentiles without interpolation, inf (not reached within the limit) read as None."""
    if not values:
        return None, None
    q = [(1 - confidence) / 2, (1 + confidence) / 2]
    low, high = np.quantile(np.asarray(values), q, method="inverted_cdf")
    return (float(low) if np.isfinite(low) else None), (float(high) if np.isfinite(high) else None)


@dataclass(frozen=True)
class _Resample:
    """One resample's refits: exponents, curves over the grid (each (grid,)), the crossover
    (None: none in the window) and the images to match (inf: not within the limit)."""

    b: tuple[float, float]
    bands: tuple[np.ndarray, np.ndarray]
    crossing: float | None
    match: float


@dataclass
class _Draws:
    """What the resamples collect (mutable scratch; the result is frozen)."""

    b: tuple[list[float], list[float]]
    bands: tuple[list[np.ndarray], list[np.ndarray]]
    crossings: list[float]
    matches: list[float]
    failed: int = 0

    def add(self, r: _Resample | None) -> None:
        if r is None:
            self.failed += 1
            return
        for i in range(2):
            self.b[i].append(r.b[i])
            self.bands[i].append(r.bands[i])
        if r.crossing is not None:
            self.crossings.append(r.crossing)
        self.matches.append(r.match)


def _resample(
    fits: tuple[CurveFit, CurveFit],
    per_seed: list[list[tuple[np.ndarray, np.ndarray]]],
    drawn: np.ndarray,
    grid: np.ndarray,
    weaker: int,
) -> _Resample | None:
    """Refit both models on the ``drawn`` seeds' cells; None if a refit fails."""
    refits = [_refit(f, *_stack(rows, drawn)) for f, rows in zip(fits, per_seed, strict=True)]
    if refits[0] is None or refits[1] is None:
        return None
    largest = min(f.sizes[1] for f in fits)
    goal = float(refits[1 - weaker].predict(largest))
    reached = images_to_match(refits[weaker], goal, start=largest)
    return _Resample(
        (refits[0].b, refits[1].b),
        (refits[0].predict(grid), refits[1].predict(grid)),
        crossover(refits[0], refits[1]),
        np.inf if reached is None else reached,
    )


def bootstrap_curves(
    cells: pd.DataFrame,
    models: tuple[str, str],
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> CurveComparison:
    """Fit both models' learning curves and bootstrap them over seeds.

    ``cells``: one row per trained cell with columns ``model``, ``seed``, ``n`` (training
    images) and ``error`` (1 − test accuracy). Each of ``n_boot`` resamples draws the seeds with
    replacement (the same draw for both models, which share each seed's training subset),
    refits both curves, and records the exponents, the curves over the grid, the crossover and
    the images the weaker model needs to match the stronger. A fixed NumPy generator (``seed``)
    makes the same cells give the same result, bit for bit.
    """
    cells = cells.sort_values(["model", "seed", "n"], kind="stable")
    seeds = np.unique(cells[cells["model"].isin(models)]["seed"].to_numpy())
    per_seed = [_cells_by_seed(cells, m, seeds) for m in models]
    fits = tuple(fit_curve(*_stack(rows, range(len(seeds)))) for rows in per_seed)
    lo = max(f.sizes[0] for f in fits)
    largest = min(f.sizes[1] for f in fits)
    grid = np.geomspace(lo, MAX_EXTRAPOLATION * largest, GRID_POINTS)
    cross = crossover(*fits)
    weaker = 0 if float(fits[0].predict(largest)) > float(fits[1].predict(largest)) else 1
    target = float(fits[1 - weaker].predict(largest))
    match = images_to_match(fits[weaker], target, start=largest)

    draws = _Draws(([], []), ([], []), [], [])
    # The refits depend only on which seeds were drawn how often (the cells are stacked in seed
    # order), so equal draws share one computation: with 3 seeds there are only 10 distinct ones.
    seen: dict[bytes, _Resample | None] = {}
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        drawn = np.sort(rng.integers(0, len(seeds), len(seeds)))
        key = drawn.tobytes()
        if key not in seen:
            seen[key] = _resample(fits, per_seed, drawn, grid, weaker)
        draws.add(seen[key])

    curves = tuple(
        _model_curve(models[i], fits[i], draws.b[i], draws.bands[i], grid, confidence)
        for i in range(2)
    )
    done = n_boot - draws.failed
    low, high = _percentiles(draws.crossings, confidence)
    window = (lo, MAX_EXTRAPOLATION * largest)
    share = len(draws.crossings) / done if done else math.nan
    crossing = Crossover(cross, low, high, share, _where(cross, largest), window)
    m_low, m_high = _censored(draws.matches, confidence)
    reached = float(np.mean(np.isfinite(draws.matches))) if draws.matches else math.nan
    note = "" if match is not None else f"beyond {MAX_EXTRAPOLATION:g}×"
    matched = Match(
        models[weaker], models[1 - weaker], target, largest, match, m_low, m_high, reached, note
    )
    return CurveComparison(
        models, curves, tuple(grid.tolist()), crossing, matched, n_boot, draws.failed,
        len(seeds), confidence,
    )  # fmt: skip


def _stack(
    rows: list[tuple[np.ndarray, np.ndarray]], drawn: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The drawn seeds' cells of one model, concatenated: (n, error), each shape (cells,)."""
    picked = [rows[i] for i in drawn]
    return np.concatenate([p[0] for p in picked]), np.concatenate([p[1] for p in picked])


def _model_curve(
    model: str,
    fit: CurveFit,
    b: list[float],
    bands: list[np.ndarray],
    grid: np.ndarray,
    confidence: float,
) -> ModelCurve:
    if bands:
        q = 100 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
        band_low, band_high = np.percentile(np.stack(bands), q, axis=0)  # each (grid,)
    else:
        band_low = band_high = np.full(len(grid), np.nan)
    b_low, b_high = _percentiles(b, confidence) if fit.kind == "power_law" else (None, None)
    return ModelCurve(
        model,
        fit,
        tuple(band_low.tolist()),
        tuple(band_high.tolist()),
        math.nan if b_low is None else b_low,
        math.nan if b_high is None else b_high,
    )
