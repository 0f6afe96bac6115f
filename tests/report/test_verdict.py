"""The verdict is decided by tests: the two models paired by seed at every size, McNemar's test
pooled over seeds and Holm-adjusted over sizes, and says what the result allows."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower

from cnnvit.report.collect import load_study_data
from cnnvit.report.verdict import compare_pair, head_to_head, verdict

MODELS = [("cnn_a", "resnet_mini"), ("vit_b", "vit_mini")]
FRACTIONS = [0.02, 0.07, 0.25]
SIZES = {0.02: "960", 0.07: "3,360", 0.25: "12,000"}


def _study(tmp_path, study_factory, accuracy, *, seeds=(0, 1, 2), models=MODELS, **kw):
    root = study_factory(tmp_path / "s", models=models, accuracy=accuracy, seeds=list(seeds), **kw)
    return root, load_study_data(root)


def _at(lines: list[str], fraction: float) -> str:
    return next(s for s in lines if s.startswith(f"At {SIZES[fraction]} training images"))


def _discordant(root, a: str, b: str, fraction: float, seeds) -> list[tuple[int, int]]:
    """(only A right, only B right) per seed, read straight from the two predictions files."""
    out = []
    for seed in seeds:
        pa = pd.read_parquet(root / "runs" / f"{a}-f{fraction:g}-s{seed}" / "predictions.parquet")
        pb = pd.read_parquet(root / "runs" / f"{b}-f{fraction:g}-s{seed}" / "predictions.parquet")
        right_a = (pa["prediction"] == pa["label"]).to_numpy()
        right_b = (pb["prediction"] == pb["label"]).to_numpy()
        out.append((int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())))
    return out


def _accuracies(root, model: str, fraction: float, seeds) -> np.ndarray:
    """Test top-1 per seed, read straight from the runs' results.json."""
    runs = root / "runs"
    return np.array(
        [
            json.loads((runs / f"{model}-f{fraction:g}-s{s}" / "results.json").read_text())[
                "test_top1"
            ]
            for s in seeds
        ]
    )


def _holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment, written out: sorted p times the tests left, running max."""
    order = np.argsort(p)
    adjusted = np.empty(len(p))
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def _points(x: float) -> str:
    return f"{100 * x:+.1f}".replace("-", "−")


def test_a_better_at_every_size_by_a_known_margin(tmp_path, study_factory):
    # cnn_a leads by 8, 9 and 10 points with seeds 0, 1 and 2, at every size.
    def accuracy(model, fraction, seed):
        base = 0.70 + 0.05 * FRACTIONS.index(fraction)
        return base + 0.08 + 0.01 * seed if model == "cnn_a" else base

    root, data = _study(tmp_path, study_factory, accuracy)
    lines = verdict(data)
    pair = compare_pair(data, "cnn_a", "vit_b", None)
    raw = []
    for fraction in FRACTIONS:
        counts = _discordant(root, "cnn_a", "vit_b", fraction, [0, 1, 2])
        only_a, only_b = np.sum(counts, axis=0)
        raw.append(stats.binomtest(int(only_a), int(only_a + only_b), 0.5).pvalue)
    adjusted = _holm(raw)
    for i, fraction in enumerate(FRACTIONS):
        acc_a, acc_b = (_accuracies(root, m, fraction, [0, 1, 2]) for m in ("cnn_a", "vit_b"))
        assert acc_a - acc_b == pytest.approx([0.08, 0.09, 0.10])
        interval = stats.ttest_rel(acc_a, acc_b).confidence_interval(0.95)
        line = _at(lines, fraction)
        assert line.startswith(
            f"At {SIZES[fraction]} training images, cnn_a is better than vit_b: +9.0 points "
            f"(95 % interval over 3 seeds {_points(interval.low)} to {_points(interval.high)}), "
            "McNemar p = "
        )
        assert "(Holm-adjusted over 3 sizes)" in line
        v = pair.verdicts[i]
        assert (v.outcome, v.winner) == ("better", "cnn_a")
        assert v.p_adjusted == pytest.approx(adjusted[i])
        assert v.comparison.mcnemar.only_a + v.comparison.mcnemar.only_b == sum(
            sum(c) for c in _discordant(root, "cnn_a", "vit_b", fraction, [0, 1, 2])
        )
        assert f"cnn_a {100 * acc_a.mean():.1f} %, vit_b {100 * acc_b.mean():.1f} %" in line
    assert not any("statistically identical" in s for s in lines)


def test_noisy_two_seeds_are_too_few_to_tell(tmp_path, study_factory):
    # Seed 0: A ahead by 3 points; seed 1: B ahead by 1. A mean gap of 1 point, spread 2.8.
    def accuracy(model, fraction, seed):
        return 0.80 + (0.03 if seed == 0 else -0.01) if model == "cnn_a" else 0.80

    _, data = _study(tmp_path, study_factory, accuracy, seeds=(0, 1))
    lines = verdict(data)
    effect = 0.01 / np.std([0.03, -0.01], ddof=1)
    solved = TTestPower().solve_power(effect_size=effect, alpha=0.05, power=0.8)
    needed = math.ceil(solved)
    for fraction in FRACTIONS:
        line = _at(lines, fraction)
        assert (
            "cnn_a and vit_b: too few seeds to tell: the difference cnn_a − vit_b is +1.0" in line
        )
        assert f"about {needed} seeds would detect a gap of this size" in line
        assert "better" not in line and "indistinguishable" not in line


def test_equal_models_are_indistinguishable(tmp_path, study_factory):
    _, data = _study(tmp_path, study_factory, lambda m, f, s: 0.8 + 0.01 * s)
    lines = verdict(data)
    for fraction in FRACTIONS:
        line = _at(lines, fraction)
        assert "cnn_a and vit_b are indistinguishable at α = 0.05" in line
        assert "McNemar p = 1 pooled over seeds" in line


def test_without_predictions_the_paired_t_test_decides(tmp_path, study_factory):
    def accuracy(model, fraction, seed):
        return 0.85 + 0.01 * seed if model == "cnn_a" else 0.80 + 0.005 * seed

    root, _ = _study(tmp_path, study_factory, accuracy)
    (root / "runs" / "vit_b-f0.25-s1" / "predictions.parquet").unlink()
    data = load_study_data(root)
    line = _at(verdict(data), 0.25)
    assert "paired t-test p = " in line
    assert "No per-image comparison (seed 1: " in line
    assert line.endswith("the paired t-test over seeds decided this size.")
    v = compare_pair(data, "cnn_a", "vit_b", None).verdicts[2]
    want = stats.ttest_rel([0.85, 0.86, 0.87], [0.80, 0.805, 0.81]).pvalue
    assert v.comparison.test == "paired_t" and v.comparison.p == pytest.approx(want)


def test_a_comparison_on_runs_still_improving_says_so(tmp_path, study_factory):
    def accuracy(model, fraction, seed):
        return 0.85 + 0.01 * seed if model == "cnn_a" else 0.80

    _, data = _study(
        tmp_path, study_factory, accuracy, still_improving={"vit_b-f0.02-s1"}, epochs=6
    )
    assert data.convergence["vit_b-f0.02-s1"]["still_improving"] is True
    lines = verdict(data)
    caution = lines[lines.index(_at(lines, 0.02)) + 1]
    assert caution.startswith(
        "Not converged: at 960 training images, 1 of 3 vit_b runs was still improving when "
        "training stopped, so this comparison rests on runs that had not converged"
    )
    assert caution.endswith(
        "to settle it, train longer: raise train.budget.steps (or train.epochs) until the last "
        "quarter gains less than its noise."
    )
    assert sum(s.startswith("Not converged") for s in lines) == 1  # the other sizes had levelled
    assert any(
        s.startswith("The curves include runs that were still improving (at 960") for s in lines
    )


def test_old_runs_say_their_best_epochs_were_chosen_on_the_test_split(tmp_path, study_factory):
    _, data = _study(tmp_path, study_factory, lambda m, f, s: 0.8, legacy=True)
    lines = verdict(data)
    assert lines[0].startswith(
        "All 18 completed runs were written before the three-way split: they had no selection "
        "split, so their best epochs were chosen on the test split itself"
    )


def test_three_models_compare_best_cnn_with_best_vit(tmp_path, study_factory):
    means = {"cnn_a": 0.86, "vit_b": 0.84, "cnn_c": 0.72}
    models = [*MODELS, ("cnn_c", "resnet18_cifar")]
    _, data = _study(tmp_path, study_factory, lambda m, f, s: means[m] + 0.01 * s, models=models)
    labels = ["cnn_a", "vit_b", "cnn_c"]
    families = {"cnn_a": "cnn", "vit_b": "vit", "cnn_c": "cnn"}
    assert head_to_head(data.summary, labels, families) == ("cnn_a", "vit_b")
    lines = verdict(data, families)
    assert any(
        s.startswith("Ranking at 960 training images (test top-1, mean over seeds): cnn_a")
        for s in lines
    )
    assert "Head to head, cnn_a against vit_b:" in lines


def test_only_one_model_and_nothing_completed(tmp_path, study_factory):
    failed = {f"vit_b-f{f:g}-s{s}": "failed" for f in FRACTIONS for s in (0, 1, 2)}
    _, data = _study(tmp_path, study_factory, lambda m, f, s: 0.8, statuses=failed)
    lines = verdict(data)
    assert lines[0] == "No completed runs for vit_b."
    assert lines[1].startswith("Only cnn_a has completed runs (test top-1 80.0 % at 960")
    data.summary = data.summary.iloc[0:0]
    assert verdict(data) == ["No cell completed, so there is nothing to compare yet."]


def test_a_size_only_one_model_finished(tmp_path, study_factory):
    failed = {f"vit_b-f0.25-s{s}": "failed" for s in (0, 1, 2)}
    _, data = _study(tmp_path, study_factory, lambda m, f, s: 0.8, statuses=failed)
    lines = verdict(data)
    assert (
        "At 12,000 training images only cnn_a has completed runs (test top-1 80.0 %); no "
        "comparison there."
    ) in lines
    assert "(Holm-adjusted over 2 sizes)" in _at(lines, 0.02)
