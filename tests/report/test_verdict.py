"""The verdict names the right winner per size, judges the seed spread, finds the crossing."""

from __future__ import annotations

import math

import pytest

from cnnvit.report import collect_results, summarize
from cnnvit.report.verdict import find_crossings, head_to_head, verdict

# A (a CNN) wins at 960 and 3,360 images, B (a ViT) at 12,000.
MEANS = {
    "cnn_a": {0.02: 0.80, 0.07: 0.84, 0.25: 0.86},
    "vit_b": {0.02: 0.72, 0.07: 0.80, 0.25: 0.90},
}
MODELS = [("cnn_a", "resnet_mini"), ("vit_b", "vit_mini")]


def _summary(tmp_path, study_factory, means, *, seeds=(0, 1, 2), noise=0.004, models=MODELS):
    def accuracy(label, fraction, seed):
        return means[label][fraction] + noise * (seed - 1)

    study = study_factory(tmp_path / "s", models=models, accuracy=accuracy, seeds=list(seeds))
    return summarize(collect_results(study))


def test_winner_per_size_spread_and_crossing(tmp_path, study_factory):
    summary = _summary(tmp_path, study_factory, MEANS)
    lines = verdict(summary, ["cnn_a", "vit_b"])
    at = {
        size: next(s for s in lines if s.startswith(f"At {size} training"))
        for size in ("960", "3,360", "12,000")
    }
    assert "cnn_a is more accurate than vit_b" in at["960"]
    assert "cnn_a is more accurate than vit_b" in at["3,360"]
    assert "vit_b is more accurate than cnn_a" in at["12,000"]
    assert all("exceeds the spread over seeds" in s for s in at.values())
    crossing = next(s for s in lines if "curves cross" in s)
    assert "between 3,360 and 12,000 training images" in crossing
    assert "cnn_a is ahead below, vit_b above" in crossing
    # Equal and opposite gaps: the crossing is at the geometric mean of the two sizes.
    [c] = find_crossings(summary, "cnn_a", "vit_b")
    assert c.images == pytest.approx(math.sqrt(3360 * 12000))
    assert f"about {round(c.images):,}" in crossing
    cost = next(s for s in lines if "cheaper to train" in s)
    assert cost.startswith("cnn_a is cheaper to train")


def test_gap_within_the_spread_is_said_so(tmp_path, study_factory):
    means = {
        "cnn_a": {0.02: 0.80, 0.07: 0.80, 0.25: 0.80},
        "vit_b": dict.fromkeys(MEANS["vit_b"], 0.805),
    }
    summary = _summary(tmp_path, study_factory, means, noise=0.02)
    lines = verdict(summary, ["cnn_a", "vit_b"])
    first = next(s for s in lines if s.startswith("At 960"))
    assert "vit_b is more accurate" in first
    assert "within the spread over seeds" in first
    assert any("do not cross" in s and "vit_b is ahead at every measured size" in s for s in lines)


def test_one_seed_cannot_tell(tmp_path, study_factory):
    summary = _summary(tmp_path, study_factory, MEANS, seeds=(0,))
    lines = verdict(summary, ["cnn_a", "vit_b"])
    assert all("cannot be told" in s for s in lines if s.startswith("At "))


def test_three_models_compare_best_cnn_with_best_vit(tmp_path, study_factory):
    means = {**MEANS, "cnn_c": {0.02: 0.70, 0.07: 0.71, 0.25: 0.72}}
    models = [*MODELS, ("cnn_c", "resnet18_cifar")]
    summary = _summary(tmp_path, study_factory, means, models=models)
    families = {"cnn_a": "cnn", "vit_b": "vit", "cnn_c": "cnn"}
    labels = ["cnn_a", "vit_b", "cnn_c"]
    assert head_to_head(summary, labels, families) == ("cnn_a", "vit_b")
    lines = verdict(summary, labels, families)
    assert any(s.startswith("Ranking at 960 training images: cnn_a") for s in lines)
    assert "Head to head, cnn_a against vit_b:" in lines


def test_only_one_model_and_nothing_completed(tmp_path, study_factory):
    summary = _summary(tmp_path, study_factory, MEANS)
    only_a = summary[summary["model"] == "cnn_a"]
    lines = verdict(only_a, ["cnn_a", "vit_b"])
    assert lines[0] == "No completed runs for vit_b."
    assert "Only cnn_a has completed runs" in lines[1]
    assert verdict(summary.iloc[0:0], ["cnn_a", "vit_b"]) == [
        "No cell completed, so there is nothing to compare yet."
    ]


def test_level_size_between_opposite_leads_is_the_crossing(tmp_path, study_factory):
    means = {
        "cnn_a": {0.02: 0.80, 0.07: 0.82, 0.25: 0.84},
        "vit_b": {0.02: 0.75, 0.07: 0.82, 0.25: 0.88},
    }
    summary = _summary(tmp_path, study_factory, means)
    [c] = find_crossings(summary, "cnn_a", "vit_b")
    assert c.images == c.low == c.high == 3360
    assert (c.below, c.above, c.clear) == ("cnn_a", "vit_b", True)
    lines = verdict(summary, ["cnn_a", "vit_b"])
    assert any("cross at 3,360 training images, where they are level" in s for s in lines)


def test_crossing_within_the_spread_is_uncertain(tmp_path, study_factory):
    means = {
        "cnn_a": dict.fromkeys(MEANS["cnn_a"], 0.80),
        "vit_b": {0.02: 0.79, 0.07: 0.80, 0.25: 0.81},
    }
    means["vit_b"][0.07] = 0.801
    summary = _summary(tmp_path, study_factory, means, noise=0.02)
    [c] = find_crossings(summary, "cnn_a", "vit_b")
    assert not c.clear
    assert 960 < c.images < 3360
    assert any("the crossing is uncertain" in s for s in verdict(summary, ["cnn_a", "vit_b"]))
