"""Paired comparisons over seeds and images, checked against scipy and statsmodels computing the
same thing another way (the per-image CMH strata, McNemar's exact test, t intervals from the
differences) and against textbook numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import StratifiedTable, mcnemar
from statsmodels.stats.power import TTestPower

from cnnvit.stats.paired import (
    MIN_GAP,
    RULE,
    compare_at_size,
    decide,
    holm,
    paired_difference,
    pooled_mcnemar,
    seeds_needed,
    sentence,
)

# --- paired t over seeds ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [2, 3, 8])
def test_paired_difference_is_the_t_interval_of_the_differences(seed: int, n: int):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.7, 0.9, n)
    b = a - rng.normal(0.01, 0.02, n)
    got = paired_difference(a, b, confidence=0.9)
    d = a - b
    half = stats.t.ppf(0.95, n - 1) * d.std(ddof=1) / math.sqrt(n)  # textbook t interval
    assert got.mean == pytest.approx(d.mean())
    assert got.sd == pytest.approx(d.std(ddof=1))
    assert (got.low, got.high) == pytest.approx((d.mean() - half, d.mean() + half))
    ci = stats.ttest_rel(a, b).confidence_interval(0.9)
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high))
    assert got.p == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
    assert got.n == n and got.confidence == 0.9


def test_paired_difference_edge_cases():
    one = paired_difference([0.8], [0.7])
    assert one.mean == pytest.approx(0.1) and one.n == 1
    assert all(math.isnan(v) for v in (one.sd, one.low, one.high, one.p))
    same = paired_difference([0.5, 0.75, 0.25], [0.25, 0.5, 0.0])  # every difference 0.25
    assert (same.sd, same.low, same.high, same.p) == (0.0, 0.25, 0.25, 0.0)
    none = paired_difference([0.5, 0.7], [0.5, 0.7])
    assert (none.mean, none.sd, none.p) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        paired_difference([0.1, 0.2], [0.1])


# --- McNemar pooled over seeds ------------------------------------------------------------------

TABLES = [
    [(12, 5), (9, 4), (15, 7)],
    [(3, 0)],
    [(40, 44), (38, 51)],
    [(0, 6), (1, 2)],
]


def _strata(tables: list[tuple[int, int]], concordant: int = 5) -> list[np.ndarray]:
    """Every (image, seed) pair as its own 2x2 stratum: rows model A/B, columns right/wrong; a
    few concordant pairs per seed too, which must add nothing."""
    only_a = np.array([[1, 0], [0, 1]])
    only_b = np.array([[0, 1], [1, 0]])
    both_right = np.array([[1, 0], [1, 0]])
    both_wrong = np.array([[0, 1], [0, 1]])
    strata = []
    for b, c in tables:
        strata += [only_a] * b + [only_b] * c + [both_right, both_wrong] * concordant
    return strata


@pytest.mark.parametrize("tables", TABLES)
def test_pooled_mcnemar_is_the_binomial_test_and_the_per_image_cmh(tables):
    got = pooled_mcnemar(tables)
    b = sum(t[0] for t in tables)
    c = sum(t[1] for t in tables)
    assert (got.only_a, got.only_b, got.seeds) == (b, c, len(tables))
    assert got.p == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)
    cmh = StratifiedTable(_strata(tables)).test_null_odds(correction=False)
    assert got.statistic == pytest.approx(cmh.statistic, rel=1e-9)
    assert got.statistic == pytest.approx((b - c) ** 2 / (b + c))


@pytest.mark.parametrize("b, c", [(12, 5), (3, 0), (40, 44), (7, 21)])
def test_one_seed_is_mcnemars_exact_test(b: int, c: int):
    table = [[900, b], [c, 60]]  # both right, only A right / only B right, both wrong
    assert pooled_mcnemar([(b, c)]).p == pytest.approx(mcnemar(table, exact=True).pvalue)


def test_no_discordant_images():
    got = pooled_mcnemar([(0, 0), (0, 0)])
    assert got.p == 1.0 and math.isnan(got.statistic) and got.seeds == 2


# --- Holm and power ------------------------------------------------------------------------------


def test_holm_matches_the_textbook_example():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = holm([0.01, math.nan, 0.04, 0.03, 0.005])  # NaN is not a test: same numbers
    assert math.isnan(got[1])
    assert [got[i] for i in (0, 2, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.3, 0.9]) == pytest.approx([0.6, 0.9])  # capped, never above 1


@pytest.mark.parametrize(
    "mean, sd, alpha, power",
    [
        (0.01, 0.01, 0.05, 0.8),
        (0.004, 0.01, 0.05, 0.8),
        (0.02, 0.015, 0.01, 0.9),
        (0.05, 0.01, 0.05, 0.8),
    ],
)
def test_seeds_needed_is_the_smallest_n_with_the_power(mean, sd, alpha, power):
    n = seeds_needed(mean, sd, alpha, power)
    assert n is not None and n >= 2
    effect = abs(mean) / sd
    assert TTestPower().power(effect, n, alpha, alternative="two-sided") >= power
    if n > 2:
        assert TTestPower().power(effect, n - 1, alpha, alternative="two-sided") < power
    assert seeds_needed(-mean, sd, alpha, power) == n  # two-sided: the sign does not matter


@pytest.mark.parametrize("effect, want", [(10.0, 3), (5.0, 3), (12.0, 2), (1e9, 2)])
def test_seeds_needed_for_large_effects_where_scipy_gives_nan(effect: float, want: int):
    """statsmodels' two-sided power is NaN at e.g. effect 10 with 3 seeds (scipy's noncentral t
    fails in the far wrong-direction tail); the right-direction tail, computed here directly
    with scipy, is the power there."""

    def upper_tail(n: int) -> float:
        return stats.nct.sf(stats.t.isf(0.025, n - 1), n - 1, effect * math.sqrt(n))

    assert seeds_needed(effect * 0.01, 0.01) == want
    assert upper_tail(want) >= 0.8
    if want > 2:
        assert upper_tail(want - 1) < 0.8


def test_seeds_needed_without_a_spread_or_a_gap():
    assert seeds_needed(0.01, math.nan) is None
    assert seeds_needed(0.01, 0.0) is None
    assert seeds_needed(0.0, 0.01) is None


# --- the decision and its wording --------------------------------------------------------------

A, B = "resnet_mini", "vit_mini"


def _better_case():
    return compare_at_size(
        A, B, [0.80, 0.82, 0.81], [0.76, 0.78, 0.775], [(120, 60), (110, 50), (130, 70)]
    )


def _noisy_two_seeds():
    return compare_at_size(A, B, [0.80, 0.78], [0.77, 0.80], None)


def test_better_with_mcnemar_and_seeds_agreeing():
    rest = [compare_at_size(A, B, [0.6, 0.61, 0.62], [0.6, 0.6, 0.63], [(50, 49)])] * 3
    verdicts = decide([_better_case(), *rest])
    v = verdicts[0]
    raw = [_better_case().p] + [c.p for c in rest]
    assert v.p_adjusted == pytest.approx(holm(raw)[0])
    assert (v.outcome, v.winner, v.tests, v.seeds_needed) == ("better", A, 4, None)
    text = sentence(v, "600")
    assert v.comparison.difference.mean == pytest.approx((0.04 + 0.04 + 0.035) / 3)
    assert text.startswith(f"At 600 training images, {A} is better than {B}: +3.8 points (")
    assert "95 % interval over 3 seeds +" in text
    assert f"McNemar p = {v.p_adjusted:.0e} pooled over seeds (Holm-adjusted over 4 sizes)." in text
    assert "statistically identical" not in text


def test_b_better_reads_from_the_winners_side():
    c = compare_at_size(A, B, [0.70, 0.71, 0.69], [0.75, 0.77, 0.75], [(20, 80), (25, 90)])
    (v,) = decide([c])
    assert (v.outcome, v.winner) == ("better", B)
    d = c.difference
    low, high = -d.high, -d.low
    text = sentence(v, "1,200")
    assert f"{B} is better than {A}: +{100 * -d.mean:.1f} points" in text
    assert f"+{100 * low:.1f} to +{100 * high:.1f}" in text
    assert "Holm-adjusted over 1 size)" in text


def test_two_noisy_seeds_are_too_few():
    (v,) = decide([_noisy_two_seeds()])
    d = v.comparison.difference
    assert v.comparison.test == "paired_t" and v.outcome == "too_few_seeds" and v.winner is None
    assert v.seeds_needed == seeds_needed(d.mean, d.sd) and v.seeds_needed > 2
    text = sentence(v, "600")
    assert f"{A} and {B}: too few seeds to tell" in text
    assert f"the difference {A} − {B} is +0.5 points (95 % interval over 2 seeds −" in text
    assert text.endswith(f"about {v.seeds_needed} seeds would detect a gap of this size.")


def test_significant_images_but_disagreeing_seeds_are_not_better():
    # McNemar is far below α, but one seed goes the other way: the interval over seeds has zero.
    c = compare_at_size(
        A, B, [0.85, 0.78, 0.83], [0.80, 0.80, 0.80], [(200, 100), (90, 110), (150, 120)]
    )
    assert c.mcnemar is not None and c.mcnemar.p < 1e-4
    assert c.difference.low < 0 < c.difference.high
    (v,) = decide([c])
    assert v.outcome == "too_few_seeds" and v.winner is None
    assert v.seeds_needed == seeds_needed(c.difference.mean, c.difference.sd)


def test_indistinguishable_with_many_consistent_seeds_and_a_tiny_gap():
    # Ten seeds, a tenth of a point apart each time, the images balanced: the study could see a
    # gap this size (few seeds needed) and McNemar finds none.
    rng = np.random.default_rng(3)
    acc_b = rng.uniform(0.80, 0.82, 10)
    acc_a = acc_b + 0.001 + rng.normal(0, 0.0003, 10)
    c = compare_at_size(A, B, acc_a, acc_b, [(60 + k % 3, 60) for k in range(10)])
    (v,) = decide([c])
    assert c.p > 0.5
    assert seeds_needed(c.difference.mean, c.difference.sd) <= 10
    assert v.outcome == "indistinguishable"
    text = sentence(v, "12,000")
    assert text.startswith(
        f"At 12,000 training images, {A} and {B} are indistinguishable at α = 0.05"
    )
    assert "95 % interval over 10 seeds" in text and "McNemar p = " in text
    assert "statistically identical" not in text


def test_no_gap_or_no_spread_with_three_seeds_is_indistinguishable():
    same = compare_at_size(A, B, [0.5, 0.75, 0.25], [0.5, 0.75, 0.25], None)
    assert decide([same])[0].outcome == "indistinguishable"
    # Every seed 0.1 points apart (sd 0 up to rounding), the images undecided: any two seeds
    # would show a gap without spread, so the study could see it.
    steady = compare_at_size(A, B, [0.801, 0.811, 0.791], [0.8, 0.81, 0.79], [(40, 41)] * 3)
    assert steady.difference.sd == 0.0 and steady.difference.p == 0.0
    assert decide([steady])[0].outcome == "indistinguishable"
    two = compare_at_size(A, B, [0.5, 0.75], [0.5, 0.75], None)
    assert decide([two])[0].outcome == "too_few_seeds"  # three seeds at least


def test_a_nonsignificant_gap_is_indistinguishable_only_where_a_point_would_have_shown():
    """Power against the observed gap is below one half whenever that gap is not significant, so
    the rule asks instead whether the seeds had 80 % power to see a one-point gap (or the
    observed one, where larger): checked against statsmodels' own power on 200 random cases."""
    rng = np.random.default_rng(7)
    undecided = []
    for _ in range(200):
        n = int(rng.integers(3, 12))
        a = rng.normal(0.8, 0.01, n)
        b = a + rng.normal(0.0, rng.choice([0.002, 0.01]), n)
        c = compare_at_size(A, B, a, b, None)
        if c.p >= 0.05:
            undecided.append(c)
    assert len(undecided) > 150
    # Decided together (one Holm family: statsmodels' Holm runs gc.collect(), slow in a loop);
    # a raw p >= α stays >= α after adjustment, so each size meets the same branch of RULE.
    verdicts = decide(undecided)
    for v in verdicts:
        d = v.comparison.difference
        gap = max(abs(d.mean), MIN_GAP)
        power = TTestPower().power(effect_size=gap / d.sd, nobs=d.n, alpha=0.05)
        if math.isnan(power):  # scipy's noncentral t fails far in its tail: the upper tail alone
            critical = stats.t.ppf(0.975, d.n - 1)
            power = stats.nct.sf(critical, d.n - 1, gap / d.sd * math.sqrt(d.n))
        expected = "indistinguishable" if power >= 0.8 else "too_few_seeds"
        assert v.outcome == expected, (d, power)
    assert {v.outcome for v in verdicts} == {"indistinguishable", "too_few_seeds"}


def test_holm_can_turn_a_size_from_better_to_undecided():
    # Alone, p = 0.03 < 0.05 decides; among four sizes, Holm lifts it to 0.12.
    c = compare_at_size(A, B, [0.80, 0.82, 0.81], [0.79, 0.81, 0.80], [(75, 50)])
    assert 0.0125 < c.p < 0.05
    assert decide([c])[0].outcome == "better"
    others = [compare_at_size(A, B, [0.6] * 3, [0.6] * 3, [(50, 50)])] * 3
    assert decide([c, *others])[0].outcome != "better"


def test_one_seed_without_images_is_too_few_and_says_why():
    c = compare_at_size(A, B, [0.8], [0.7], None)
    (v,) = decide([c])
    assert math.isnan(v.p_adjusted) and v.tests == 0 and v.outcome == "too_few_seeds"
    text = sentence(v, "600")
    assert "one seed, so no interval over seeds), no test: one seed and no per-image" in text
    assert text.endswith("a second seed is needed to see how much the seeds vary.")


def test_rule_is_one_paragraph():
    assert "\n" not in RULE and "Holm" in RULE and "80 %" in RULE
    assert "statistically identical" not in RULE
