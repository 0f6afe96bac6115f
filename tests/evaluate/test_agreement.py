"""Agreement between two models: counts, kappas, McNemar's test, bootstrap, run folders."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

from cnnvit.data.readers import read_dataset
from cnnvit.evaluate.agreement import (
    AGREEMENT_JSON,
    DISAGREEMENTS_PNG,
    PER_CLASS_CSV,
    AgreementError,
    compare_predictions,
    disagreement_figure,
    paired_bootstrap_ci,
)
from cnnvit.evaluate.run_agreement import agree_runs, validation_images
from cnnvit.metrics import predictions_frame

K = 5
CLASSES = [f"c{i}" for i in range(K)]
SYNTH = "synthetic:num_classes=5,train_size=20,val_size=400,image_size=12"


def _frame(labels: np.ndarray, accuracy: float, seed: int) -> pd.DataFrame:
    """A predictions.parquet frame that is right on about ``accuracy`` of the images."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    logits = rng.normal(size=(n, K))
    right = rng.random(n) < accuracy
    logits[right, labels[right]] += 10.0
    wrong = ~right
    logits[wrong, (labels[wrong] + 1 + rng.integers(0, K - 1, wrong.sum())) % K] += 10.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return predictions_frame(labels, probs)


def _pair(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    labels = np.random.default_rng(seed).integers(0, K, n)
    return _frame(labels, 0.8, seed + 1), _frame(labels, 0.7, seed + 2)


def _discordant(only_a: int, only_b: int, both_right: int = 100, both_wrong: int = 20):
    """Two frames with exactly the given counts (two classes; a wrong answer is the other)."""
    n = only_a + only_b + both_right + both_wrong
    labels = np.arange(n) % 2
    right_a = np.r_[np.ones(only_a), np.zeros(only_b), np.ones(both_right), np.zeros(both_wrong)]
    right_b = np.r_[np.zeros(only_a), np.ones(only_b), np.ones(both_right), np.zeros(both_wrong)]

    def frame(right: np.ndarray) -> pd.DataFrame:
        pred = np.where(right.astype(bool), labels, 1 - labels)
        return pd.DataFrame(
            {"index": np.arange(n), "label": labels, "prediction": pred, "confidence": 0.9}
        )

    return frame(right_a), frame(right_b)


# --- the statistics --------------------------------------------------------------------------


def test_counts_equal_an_independent_recomputation_from_parquet_files(tmp_path: Path):
    a, b = _pair()
    a.to_parquet(tmp_path / "a.parquet", index=False)
    # B's file lists the images in another order: the comparison aligns on `index`.
    b.sample(frac=1.0, random_state=3).to_parquet(tmp_path / "b.parquet", index=False)
    ra, rb = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    got = compare_predictions(ra, rb, CLASSES)

    rows_b = {int(r.index): (int(r.label), int(r.prediction)) for r in rb.itertuples()}
    counts = dict.fromkeys(["both_right", "only_a", "only_b", "both_wrong", "same"], 0)
    for r in ra.itertuples():
        label_b, pred_b = rows_b[int(r.index)]
        assert label_b == r.label
        ok_a, ok_b = r.prediction == r.label, pred_b == r.label
        key = {(1, 1): "both_right", (1, 0): "only_a", (0, 1): "only_b", (0, 0): "both_wrong"}
        counts[key[(int(ok_a), int(ok_b))]] += 1
        counts["same"] += int(r.prediction == pred_b)
    assert (got.both_right, got.only_a, got.only_b, got.both_wrong) == (
        counts["both_right"],
        counts["only_a"],
        counts["only_b"],
        counts["both_wrong"],
    )
    assert got.same_prediction == counts["same"]
    assert got.both_right + got.only_a + got.only_b + got.both_wrong == got.n == 400
    assert got.accuracy_a == pytest.approx((ra.prediction == ra.label).mean())
    assert got.accuracy_b == pytest.approx((rb.prediction == rb.label).mean())
    assert got.rates()["only_a"] == pytest.approx(counts["only_a"] / 400)
    assert len(got.disagreements) == 400 - counts["same"]


def test_mcnemar_p_is_scipys_exact_binomial_test():
    a, b = _pair()
    got = compare_predictions(a, b, CLASSES)
    discordant = got.only_a + got.only_b
    assert discordant > 0
    assert got.mcnemar_p == binomtest(got.only_a, discordant, 0.5).pvalue
    same = compare_predictions(a, a, CLASSES)
    assert same.only_a == same.only_b == 0 and same.mcnemar_p == 1.0


def test_kappas_are_sklearns_and_error_consistency_is_geirhos():
    a, b = _pair()
    a_sorted, b_sorted = a.sort_values("index"), b.sort_values("index")
    got = compare_predictions(a, b, CLASSES)
    assert got.kappa == pytest.approx(
        cohen_kappa_score(a_sorted.prediction, b_sorted.prediction), abs=1e-12
    )
    right_a = (a_sorted.prediction == a_sorted.label).to_numpy()
    right_b = (b_sorted.prediction == b_sorted.label).to_numpy()
    # Geirhos et al. 2020, written out: observed against expected error overlap.
    p_a, p_b = right_a.mean(), right_b.mean()
    c_obs = (right_a == right_b).mean()
    c_exp = p_a * p_b + (1 - p_a) * (1 - p_b)
    assert got.error_consistency == pytest.approx((c_obs - c_exp) / (1 - c_exp), abs=1e-12)
    assert got.error_consistency == pytest.approx(cohen_kappa_score(right_a, right_b), abs=1e-12)


def test_undefined_kappa_is_nan_and_json_null():
    a, _ = _pair()
    perfect = a.assign(prediction=a["label"])
    got = compare_predictions(perfect, perfect, CLASSES)
    assert math.isnan(got.error_consistency)  # both right everywhere: chance agreement is 1
    assert got.kappa == pytest.approx(1.0)
    data = json.loads(json.dumps(got.to_dict(), allow_nan=False))
    assert data["error_consistency"] is None


def test_bootstrap_interval_contains_the_difference_and_shrinks_with_more_images():
    small = compare_predictions(*_discordant(30, 15, 130, 25), ["x", "y"])
    big = compare_predictions(*_discordant(300, 150, 1300, 250), ["x", "y"])
    assert small.difference == pytest.approx(big.difference)
    for got in (small, big):
        low, high = got.difference_ci
        assert low < got.difference < high
    width = [g.difference_ci[1] - g.difference_ci[0] for g in (small, big)]
    assert width[1] < 0.5 * width[0]  # ten times the images: about a third of the width
    again = compare_predictions(*_discordant(30, 15, 130, 25), ["x", "y"])
    assert again.difference_ci == small.difference_ci  # seeded


def test_the_bootstrap_draws_as_resampling_the_images_would():
    rng = np.random.default_rng(5)
    right_a, right_b = rng.random(300) < 0.8, rng.random(300) < 0.7
    low, high = paired_bootstrap_ci(right_a, right_b, n_boot=20_000, seed=0, alpha=0.05)
    # The literal paired bootstrap: resample image indices, recompute the difference.
    idx = np.random.default_rng(1).integers(0, 300, size=(20_000, 300))
    diffs = right_a[idx].mean(1) - right_b[idx].mean(1)
    ref_low, ref_high = np.quantile(diffs, [0.025, 0.975])
    assert low == pytest.approx(ref_low, abs=0.006)
    assert high == pytest.approx(ref_high, abs=0.006)


def test_misaligned_frames_are_refused_with_the_reason():
    a, b = _pair()
    with pytest.raises(AgreementError, match="do not hold the same images: 1 image"):
        compare_predictions(a, b[b["index"] != 7], CLASSES)
    with pytest.raises(AgreementError, match=r"do not hold the same images.*indices 400"):
        compare_predictions(a, pd.concat([b, b.tail(1).assign(index=400)]), CLASSES)
    relabelled = b.assign(label=np.where(b["index"] == 3, (b["label"] + 1) % K, b["label"]))
    with pytest.raises(AgreementError, match=r"labels differ for 1 of 400 images \(indices 3\)"):
        compare_predictions(a, relabelled, CLASSES)
    with pytest.raises(AgreementError, match="more than once"):
        compare_predictions(a, pd.concat([b, b.head(1)]), CLASSES)
    with pytest.raises(AgreementError, match="outside the 3 classes"):
        compare_predictions(a, b, CLASSES[:3])
    with pytest.raises(AgreementError, match="lack the column"):
        compare_predictions(a, b.drop(columns="label"), CLASSES)


def test_verdict_comes_from_the_test_alone():
    clear = compare_predictions(*_discordant(200, 0), ["x", "y"], names=("A", "B"))
    assert clear.mcnemar_p < 1e-50 and clear.verdict == "A better at α=0.05"
    reverse = compare_predictions(*_discordant(0, 200), ["x", "y"], names=("cnn", "vit"))
    assert reverse.verdict == "vit better at α=0.05"
    balanced = compare_predictions(*_discordant(100, 100), ["x", "y"])
    assert balanced.mcnemar_p == 1.0 and balanced.verdict == "indistinguishable at α=0.05"
    # A 3.5-point gap on 200 images, 10 against 3 discordant: p = 0.09, not a win.
    gap = compare_predictions(*_discordant(10, 3, 167, 20), ["x", "y"])
    assert gap.difference == pytest.approx(7 / 200)
    assert gap.mcnemar_p == pytest.approx(binomtest(10, 13).pvalue)
    assert gap.verdict == "indistinguishable at α=0.05"
    assert compare_predictions(*_discordant(10, 3, 167, 20), ["x", "y"], alpha=0.1).verdict == (
        "A better at α=0.1"
    )


def test_per_class_differences():
    a, b = _pair()
    got = compare_predictions(a, b, CLASSES)
    table = got.per_class
    assert list(table["class"]) == CLASSES
    assert table["support"].sum() == 400
    for row in table.itertuples():
        mine_a = a[a.label == row.Index]
        mine_b = b[b.label == row.Index]
        assert row.support == len(mine_a)
        assert row.accuracy_a == pytest.approx((mine_a.prediction == mine_a.label).mean())
        assert row.accuracy_b == pytest.approx((mine_b.prediction == mine_b.label).mean())
        assert row.difference == pytest.approx(row.accuracy_a - row.accuracy_b)
    assert table["only_a"].sum() == got.only_a and table["only_b"].sum() == got.only_b


def test_shown_disagreements_take_every_kind_in_turn():
    got = compare_predictions(*_discordant(5, 5, 10, 0), ["x", "y"])
    shown = got.shown_disagreements(4)
    assert list(shown["outcome"]) == ["only_a", "only_b", "only_a", "only_b"]
    assert len(got.shown_disagreements(100)) == 10


# --- run folders -----------------------------------------------------------------------------


def _run(root: Path, name: str, frame: pd.DataFrame, data: dict, model: str = "resnet_mini"):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": data, "model": {"name": model}}))
    (run / "metrics.json").write_text(json.dumps({"classes": CLASSES}))
    frame.to_parquet(run / "predictions.parquet", index=False)
    return run


def test_agree_runs_writes_the_files(tmp_path: Path):
    labels = read_dataset(SYNTH).val.labels
    a = _run(tmp_path, "a", _frame(labels, 0.8, 1), {"spec": SYNTH})
    b = _run(tmp_path, "b", _frame(labels, 0.6, 2), {"spec": SYNTH, "split_seed": 3}, "vit_mini")
    got = agree_runs(a, b, tmp_path / "out")
    assert got.names == ("resnet_mini", "vit_mini")
    data = json.loads((tmp_path / "out" / AGREEMENT_JSON).read_text())
    assert data["counts"]["only_a"] == got.only_a and data["verdict"] == got.verdict
    assert data["mcnemar"]["p_value"] == got.mcnemar_p
    per_class = pd.read_csv(tmp_path / "out" / PER_CLASS_CSV)
    assert list(per_class["class"]) == CLASSES and per_class["support"].sum() == len(labels)
    png = (tmp_path / "out" / DISAGREEMENTS_PNG).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert any(line.startswith("verdict: ") for line in got.summary())
    # Two runs of one model are told apart by their folders.
    c = _run(tmp_path, "c", _frame(labels, 0.7, 3), {"spec": SYNTH})
    assert agree_runs(a, c).names == ("a", "c")


def test_agree_runs_refuses_runs_on_different_images(tmp_path: Path):
    labels = read_dataset(SYNTH).val.labels
    frame = _frame(labels, 0.8, 1)
    a = _run(tmp_path, "a", frame, {"spec": SYNTH})
    other = _run(tmp_path, "b", frame, {"spec": SYNTH.replace("val_size=400", "val_size=401")})
    with pytest.raises(AgreementError, match=r"were not tested on the same images: data\.spec"):
        agree_runs(a, other)
    subset = _run(tmp_path, "c", frame, {"spec": SYNTH, "max_test_images": 100})
    with pytest.raises(AgreementError, match=r"data\.max_test_images"):
        agree_runs(a, subset)
    (tmp_path / "c" / "predictions.parquet").unlink()
    (tmp_path / "c" / "config.yaml").write_text(yaml.safe_dump({"data": {"spec": SYNTH}}))
    with pytest.raises(AgreementError, match=r"no predictions\.parquet"):
        agree_runs(a, tmp_path / "c")


def _image_folder(root: Path, n_per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for c in CLASSES[:2]:
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


def test_a_holdout_split_needs_the_same_holdout_seed(tmp_path: Path):
    folder = _image_folder(tmp_path / "images")
    spec = f"folder:{folder}"
    frame = pd.DataFrame({"index": [0, 1], "label": [0, 1], "prediction": [0, 0]})
    a = _run(tmp_path, "a", frame, {"spec": spec, "holdout_seed": 0, "test_fraction": 0.2})
    b = _run(tmp_path, "b", frame, {"spec": spec, "holdout_seed": 1, "test_fraction": 0.2})
    with pytest.raises(AgreementError, match=r"data\.holdout_seed is 0 against 1.*no test split"):
        agree_runs(a, b)


def test_validation_images_are_the_runs_own(tmp_path: Path):
    run = _run(tmp_path, "a", _frame(read_dataset(SYNTH).val.labels, 0.8, 1), {"spec": SYNTH})
    want = read_dataset(SYNTH).val.images[[5, 0, 399]]
    np.testing.assert_array_equal(validation_images(run, [5, 0, 399]), want)
    with pytest.raises(ValueError, match="outside its test split of 400 images"):
        validation_images(run, [400])


def test_validation_images_of_files_skip_what_the_run_skipped(tmp_path: Path):
    from cnnvit.config import DataConfig
    from cnnvit.data.pipeline import load_splits

    folder = _image_folder(tmp_path / "images")
    data = {"spec": f"folder:{folder}", "val_fraction": 0.5, "image_size": 12}
    frame = pd.DataFrame({"index": [0], "label": [0], "prediction": [0]})
    run = _run(tmp_path, "a", frame, data)
    val = load_splits(DataConfig(**data)).val
    first = str(val.paths[0])
    (run / "skipped.csv").write_text(f"path,reason\n{first},truncated file\n")
    got = validation_images(run, [0, 1])  # position 0 is now the split's second file
    want = [np.asarray(Image.open(p).convert("RGB")) for p in val.paths[1:3]]
    np.testing.assert_array_equal(got, np.stack(want))


# --- the grid --------------------------------------------------------------------------------


def test_disagreement_figure_takes_nhwc_or_nchw_numpy_or_torch():
    a, b = _pair(60)
    got = compare_predictions(a, b, CLASSES, names=("cnn $x$", "vit"))
    images = np.random.default_rng(0).integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    shown = min(16, len(got.disagreements))
    for pixels in (images, torch.from_numpy(images).permute(0, 3, 1, 2)):
        fig = disagreement_figure(pixels, got, CLASSES, max_images=16)
        drawn = [ax for ax in fig.axes if ax.images]
        assert len(drawn) == shown
        first = got.shown_disagreements(1)["index"].iloc[0]
        np.testing.assert_array_equal(drawn[0].images[0].get_array(), images[first])
        fig.savefig(io.BytesIO(), format="png")  # a '$' in a name must not break the drawing
    index = got.shown_disagreements(3)["index"].to_numpy()
    grey = images[index, :, :, :1]
    fig = disagreement_figure(grey, got, max_images=3, indices=index)
    assert len([ax for ax in fig.axes if ax.images]) == 3
    with pytest.raises(ValueError, match="3 images but 2 indices"):
        disagreement_figure(grey, got, max_images=3, indices=index[:2])
