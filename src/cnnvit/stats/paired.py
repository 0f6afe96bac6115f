"""Two models trained with the same seeds, compared at one training-set size and across sizes.

Each seed fixes a training subset (and the initialisation), and both models of a seed see the
same subset: so the comparison is paired, seed by seed (the paired t-test over seeds), and image
by image on the shared test set (McNemar's test on the images only one model got right). Across
training-set sizes the p-values are Holm-adjusted, and :func:`decide` turns each size into one of
three outcomes under :data:`RULE`. All tests and power calculations are scipy's and statsmodels';
this module arranges them. Torch-free, and imports nothing of cnnvit.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.tools.sm_exceptions import ConvergenceWarning

__all__ = [
    "RULE",
    "McNemarResult",
    "Outcome",
    "PairedDifference",
    "SizeComparison",
    "SizeVerdict",
    "compare_at_size",
    "decide",
    "holm",
    "paired_difference",
    "pooled_mcnemar",
    "seeds_needed",
    "sentence",
]

Outcome = Literal["better", "indistinguishable", "too_few_seeds"]

POWER = 0.8

# The smallest gap in accuracy worth detecting (one point): "indistinguishable" means the
# seeds would have seen a gap this large.
MIN_GAP = 0.01

RULE = (
    "How a size is decided. At each training-set size the two models are compared by one test: "
    "McNemar's exact test on the test images only one of them got right, pooled over the seeds, "
    "when per-image predictions exist, otherwise the paired t-test of the seeds' accuracies. The "
    "p-values of all sizes are then Holm-adjusted, so that the chance of any false 'better' "
    "across the sizes stays below α. A model is called better when its adjusted p is below α "
    "and, if there are two or more seeds, the (1 − α) interval of the accuracy difference over "
    "the seeds lies entirely on its side of zero; a significant McNemar test alone does not "
    "suffice when the seeds disagree, because then the seed-to-seed spread is larger than the "
    "gap. The two are called indistinguishable when the adjusted p is at least α, there are at "
    "least three seeds, and either the gap is exactly zero or the seeds were enough to detect a "
    "gap of one point (or the observed gap, where larger) with 80 % power (two-sided paired "
    "t-test at α, given the observed seed-to-seed spread; a gap every seed shows equally counts "
    "as detectable). Every other case "
    "is 'too few seeds to tell', with the number of seeds that would detect a gap of the "
    "observed size."
)


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B over seeds (fractions in [0, 1]).

    ``mean``: mean difference; ``sd``: its standard deviation over seeds (ddof=1);
    ``low``/``high``: the Student-t ``confidence`` interval of the mean difference; ``p``: the
    two-sided paired t-test. ``sd``, ``low``, ``high`` and ``p`` are NaN with fewer than two seeds.
    """

    mean: float
    sd: float
    low: float
    high: float
    n: int
    p: float
    confidence: float = 0.95


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test pooled over seeds.

    ``only_a``/``only_b``: test images only A (only B) got right, summed over ``seeds``;
    ``statistic``: the chi-square without continuity correction, (b − c)² / (b + c), NaN when
    no image is discordant; ``p``: the exact two-sided p (1.0 when no image is discordant).
    """

    only_a: int
    only_b: int
    p: float
    statistic: float
    seeds: int


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> PairedDifference:
    """The paired comparison of per-seed accuracies ``a`` and ``b`` (shape (seeds,), seed i of
    A paired with seed i of B): scipy's ``ttest_rel`` and its confidence interval.

    When every difference is the same the t statistic is undefined (scipy returns NaN); the
    answer is then exact: no spread, the interval is the mean itself, and p is 0 for a nonzero
    difference and 1 for none.
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"a and b need one accuracy per seed each, got {x.shape} and {y.shape}")
    d = x - y
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, math.nan, n, math.nan, confidence)
    if np.allclose(d, d[0], rtol=0.0, atol=1e-12):  # equal up to float rounding of a - b
        return PairedDifference(mean, 0.0, mean, mean, n, 0.0 if mean != 0 else 1.0, confidence)
    sd = float(d.std(ddof=1))
    test = stats.ttest_rel(x, y)
    ci = test.confidence_interval(confidence)
    return PairedDifference(
        mean, sd, float(ci.low), float(ci.high), n, float(test.pvalue), confidence
    )


def pooled_mcnemar(tables: Sequence[tuple[int, int]]) -> McNemarResult:
    """McNemar's exact test of A against B pooled over seeds.

    ``tables``: one ``(only_a, only_b)`` per seed, the numbers of test images only model A
    (only model B) classified correctly, on the same test images.

    Why summing is right: treat every (image, seed) pair of predictions as a stratum of its own,
    a 2x2 table of model (A, B) by outcome (right, wrong) with one observation per model. The
    Cochran–Mantel–Haenszel test over these strata is McNemar's test: concordant pairs (both
    right or both wrong) carry no information, and each discordant pair adds the same amount to
    the statistic, so the CMH statistic without continuity correction is (b − c)² / (b + c) on
    the summed discordant counts b and c. Its exact, conditional form: given b + c discordant
    pairs, b is Binomial(b + c, 1/2) when the models are equally accurate, so p is the two-sided
    binomial test (scipy's ``binomtest``). Seeds enter only through the sums, as further strata.
    """
    counts = np.asarray(tables, dtype=np.int64).reshape(-1, 2)
    if (counts < 0).any():
        raise ValueError("discordant counts cannot be negative")
    only_a, only_b = (int(v) for v in counts.sum(0))
    total = only_a + only_b
    if total == 0:
        return McNemarResult(0, 0, 1.0, math.nan, len(counts))
    p = float(stats.binomtest(only_a, total, 0.5).pvalue)
    statistic = (only_a - only_b) ** 2 / total
    return McNemarResult(only_a, only_b, p, float(statistic), len(counts))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels' ``multipletests(method="holm")``), in the order
    given; NaN entries stay NaN and do not count as tests."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = ~np.isnan(p)
    if valid.any():
        out[valid] = multipletests(p[valid], method="holm")[1]
    return [float(v) for v in out]


def _power(effect: float, n: int, alpha: float) -> float:
    """Two-sided paired t power (statsmodels). scipy's noncentral t returns NaN for the
    wrong-direction tail once it is vanishingly small (large effects; e.g. effect 10 at n = 3);
    the right-direction tail alone is then the power, to within that vanishing term."""
    power = float(TTestPower().power(effect, n, alpha, alternative="two-sided"))
    if math.isfinite(power):
        return power
    return float(TTestPower().power(effect, n, alpha / 2, alternative="larger"))


MAX_SEARCH = 1000  # seeds searched one by one when statsmodels' solver gives up (large effects)


def seeds_needed(
    mean_diff: float, sd: float, alpha: float = 0.05, power: float = POWER
) -> int | None:
    """Seeds a two-sided paired t-test at ``alpha`` needs to detect a mean difference of
    ``mean_diff`` with seed-to-seed spread ``sd`` with probability ``power`` (statsmodels'
    ``TTestPower``), at least 2. None without a spread (NaN or 0), without a gap, or when the
    solver does not converge.
    """
    if not (math.isfinite(mean_diff) and math.isfinite(sd)) or sd <= 0 or mean_diff == 0:
        return None
    effect = abs(mean_diff) / sd
    # Two seeds have power 1 long before 1000 spreads (already at 100), and far beyond it scipy's
    # noncentral t is NaN in both tails.
    if effect > 1e3 or _power(effect, 2, alpha) >= power:
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a failure is handled below
        try:
            solved = TTestPower().solve_power(
                effect_size=effect, nobs=None, alpha=alpha, power=power, alternative="two-sided"
            )
            solved = float(np.asarray(solved).reshape(-1)[0])
        except (ValueError, RuntimeError, ArithmeticError):
            solved = math.nan
    # Glue: the solver's tolerance can leave ceil() a seed off either way, and where it gives up
    # (the NaN above, only for large effects, so few seeds) a search from 3 finds the answer.
    n = max(2, math.ceil(solved)) if math.isfinite(solved) and solved > 0 else 3
    for _ in range(MAX_SEARCH):
        if _power(effect, n, alpha) >= power:
            break
        n += 1
    else:
        return None
    while n > 2 and _power(effect, n - 1, alpha) >= power:
        n -= 1
    return n


@dataclass(frozen=True)
class SizeComparison:
    """Models ``a`` and ``b`` at one training-set size: the paired difference over seeds
    (``difference``, at confidence 1 − ``alpha``), McNemar pooled over seeds (``mcnemar``; None
    without per-image predictions), and ``p``, the raw p-value the decision uses: McNemar's when
    there is one, else the paired t-test's (``test`` says which)."""

    a: str
    b: str
    difference: PairedDifference
    mcnemar: McNemarResult | None
    p: float
    test: Literal["mcnemar", "paired_t"]
    alpha: float = 0.05


def compare_at_size(
    a: str,
    b: str,
    acc_a: Sequence[float],
    acc_b: Sequence[float],
    discordant: Sequence[tuple[int, int]] | None,
    *,
    alpha: float = 0.05,
) -> SizeComparison:
    """Compare ``a`` and ``b`` at one size from per-seed accuracies (shape (seeds,), paired by
    seed) and, when per-image predictions exist, per-seed discordant counts ``(only_a,
    only_b)``."""
    difference = paired_difference(acc_a, acc_b, confidence=1.0 - alpha)
    if discordant is not None and len(discordant) > 0:
        mc = pooled_mcnemar(discordant)
        return SizeComparison(a, b, difference, mc, mc.p, "mcnemar", alpha)
    return SizeComparison(a, b, difference, None, difference.p, "paired_t", alpha)


@dataclass(frozen=True)
class SizeVerdict:
    """One size's outcome under :data:`RULE`. ``p_adjusted``: Holm-adjusted over ``tests``
    sizes (NaN when the size has no p-value); ``winner``: the better model's name (only when
    ``outcome`` is "better"); ``seeds_needed``: seeds that would detect a gap of the observed
    size with 80 % power (for "too_few_seeds"; None when it cannot be told)."""

    comparison: SizeComparison
    p_adjusted: float
    outcome: Outcome
    winner: str | None
    seeds_needed: int | None
    tests: int
    alpha: float


def _direction(c: SizeComparison) -> int:
    """+1 when the decision's test favours A, -1 when it favours B, 0 when neither."""
    if c.mcnemar is not None:
        return int(np.sign(c.mcnemar.only_a - c.mcnemar.only_b))
    return int(np.sign(c.difference.mean)) if math.isfinite(c.difference.mean) else 0


def _seeds_agree(d: PairedDifference, direction: int) -> bool:
    """Whether the interval over seeds lies on the winner's side of zero (trivially true with
    one seed, which has no interval)."""
    if d.n < 2:
        return True
    return d.low > 0 if direction > 0 else d.high < 0


def _outcome(c: SizeComparison, p_adjusted: float, alpha: float) -> tuple[Outcome, str | None]:
    d = c.difference
    direction = _direction(c)
    if p_adjusted < alpha and direction != 0 and _seeds_agree(d, direction):
        return "better", (c.a if direction > 0 else c.b)
    if p_adjusted < alpha or d.n < 3:  # significant but the seeds disagree, or too few seeds
        return "too_few_seeds", None
    if d.mean == 0 or d.sd == 0:  # no gap, or a gap without spread that any two seeds show
        return "indistinguishable", None
    # Power against the observed gap is below one half whenever its test is not significant,
    # so it would almost never allow "indistinguishable"; the question a reader asks is whether
    # a gap worth having would have been seen. MIN_GAP is that gap.
    needed = seeds_needed(max(abs(d.mean), MIN_GAP), d.sd, alpha)
    if needed is not None and needed <= d.n:
        return "indistinguishable", None
    return "too_few_seeds", None


def decide(comparisons: list[SizeComparison], alpha: float = 0.05) -> list[SizeVerdict]:
    """Holm-adjust the sizes' p-values together and decide each size under :data:`RULE`; one
    verdict per comparison, in the order given."""
    adjusted = holm([c.p for c in comparisons])
    tests = sum(math.isfinite(p) for p in adjusted)
    verdicts = []
    for c, p in zip(comparisons, adjusted, strict=True):
        outcome, winner = _outcome(c, p, alpha)
        d = c.difference
        needed = seeds_needed(d.mean, d.sd, alpha) if outcome == "too_few_seeds" else None
        verdicts.append(SizeVerdict(c, p, outcome, winner, needed, tests, alpha))
    return verdicts


def _points(x: float) -> str:
    """A difference of fractions as signed accuracy points: 0.041 -> '+4.1'."""
    return f"{100 * x:+.1f}".replace("-", "−")


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return f"{p:.0e}" if p < 1e-3 else f"{p:.2g}"


def _interval(d: PairedDifference, sign: int = 1) -> str:
    """'95 % interval over 3 seeds +2.0 to +6.2' (``sign`` −1: of B − A)."""
    if d.n < 2:
        return "one seed, so no interval over seeds"
    low, high = (d.low, d.high) if sign > 0 else (-d.high, -d.low)
    level = f"{100 * d.confidence:.0f} %"
    return f"{level} interval over {d.n} seeds {_points(low)} to {_points(high)}"


def _test(v: SizeVerdict) -> str:
    """'McNemar p = 3e-05 pooled over seeds' and how it was adjusted, in brackets."""
    c = v.comparison
    if not math.isfinite(v.p_adjusted):
        return "no test: one seed and no per-image predictions"
    name = "McNemar p" if c.test == "mcnemar" else "paired t-test p"
    where = "pooled over seeds" if c.test == "mcnemar" else "over seeds"
    plural = "" if v.tests == 1 else "s"
    return f"{name} = {_p(v.p_adjusted)} {where} (Holm-adjusted over {v.tests} size{plural})"


def sentence(v: SizeVerdict, images: str) -> str:
    """The verdict in words, for the report. ``images``: the training-set size as the report
    writes it ("600", "12,000"). Accuracy differences are printed in points (100 × the
    difference of fractions); the p-value is the Holm-adjusted one."""
    c = v.comparison
    d = c.difference
    head = f"At {images} training images, "
    if v.outcome == "better":
        sign = 1 if v.winner == c.a else -1
        loser = c.b if sign > 0 else c.a
        gap = f"{_points(sign * d.mean)} points ({_interval(d, sign)})"
        return f"{head}{v.winner} is better than {loser}: {gap}, {_test(v)}."
    gap = f"{c.a} − {c.b} is {_points(d.mean)} points ({_interval(d)}), {_test(v)}"
    if v.outcome == "indistinguishable":
        return (
            f"{head}{c.a} and {c.b} are indistinguishable at α = {v.alpha:g}: the difference {gap}."
        )
    if v.seeds_needed is not None:
        more = f"about {v.seeds_needed} seeds would detect a gap of this size"
    elif d.n < 2:
        more = "a second seed is needed to see how much the seeds vary"
    else:
        more = "the seeds show no gap to size a study by"
    return f"{head}{c.a} and {c.b}: too few seeds to tell: the difference {gap}; {more}."
