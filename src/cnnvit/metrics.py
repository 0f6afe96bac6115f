"""Predictions -> metrics (metrics.json) and the per-image table (predictions.parquet). The
arithmetic is scikit-learn's; this module only arranges it, except the calibration bins, which
scikit-learn does not have for multiclass top-1 confidence and which follow torchmetrics'
``MulticlassCalibrationError`` exactly (tests/test_metrics.py checks them against it). Torch-free:
probabilities come in as numpy arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from cnnvit.folders import RunFolder, json_ready

TOP_K = 5
CALIBRATION_BINS = 15


def predictions_frame(
    labels: np.ndarray, probs: np.ndarray, indices: np.ndarray | None = None
) -> pd.DataFrame:
    """One row per image: index, label, prediction, confidence, top-5 classes and their probs.

    ``probs`` is (N, num_classes) softmax output; ``index`` is the image's position in the
    evaluated split (``indices``; default 0..N-1), so an analysis can find the image again
    without the model.
    """
    k = min(TOP_K, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (N, k)
    top_probs = np.take_along_axis(probs, top, axis=1)  # (N, k)
    return pd.DataFrame(
        {
            "index": (np.arange(len(labels)) if indices is None else indices).astype(np.int64),
            "label": labels.astype(np.int64),
            "prediction": top[:, 0].astype(np.int64),
            "confidence": top_probs[:, 0].astype(np.float32),
            "top5": list(top.astype(np.int64)),
            "top5_probs": list(top_probs.astype(np.float32)),
        }
    )


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Top-1/top-5, macro and weighted P/R/F1, per-class accuracy and the confusion matrix."""
    n = len(classes)
    all_labels = np.arange(n)
    preds = probs.argmax(1)
    out: dict = {"num_images": len(labels), "num_classes": n, "top1": accuracy_score(labels, preds)}
    if n > TOP_K:
        out["top5"] = top_k_accuracy_score(labels, probs, k=TOP_K, labels=all_labels)
    else:
        out["top5"] = 1.0  # with five classes or fewer every label is among the top 5
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            labels, preds, labels=all_labels, average=average, zero_division=0
        )
        out[average] = {"precision": p, "recall": r, "f1": f}
    cm = confusion_matrix(labels, preds, labels=all_labels)  # (n, n), rows = true class
    support = cm.sum(1)
    per_class = np.divide(np.diag(cm), support, out=np.full(n, np.nan), where=support > 0)
    out["per_class"] = [
        {"class": name, "accuracy": _num(acc), "support": int(s)}
        for name, acc, s in zip(classes, per_class, support, strict=True)
    ]
    out["confusion_matrix"] = cm.tolist()
    out["classes"] = list(classes)
    out["ece"] = expected_calibration_error(probs, labels, CALIBRATION_BINS)
    out["reliability"] = reliability_bins(probs, labels, CALIBRATION_BINS)
    return json_ready(out)


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _torch_edges(bins: int) -> np.ndarray:
    """The bin edges of ``torch.linspace(0, 1, bins + 1)`` in float32, bit for bit, shape
    (bins + 1,).

    torchmetrics bins float32 confidences against these; NumPy's linspace rounds some edges
    differently (for 15 bins, 0.2 is 0.20000002 in torch), which moves a confidence lying on an
    edge into the neighbouring bin. torch computes the first half as ``start + step * i`` and the
    second as ``end - step * (steps - 1 - i)``, each rounded once to float32 from a float32
    ``step`` (fused multiply-add); float64 arithmetic rounded once reproduces that exactly.
    """
    steps = bins + 1
    step = float(np.float32(1.0) / np.float32(bins))
    i = np.arange(steps, dtype=np.float64)
    edges = np.where(i < steps // 2, step * i, 1.0 - step * (steps - 1 - i))
    return edges.astype(np.float32)


def _calibration_counts(
    probs: np.ndarray, labels: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: the number of images, their summed top-1 confidence and their number correct,
    each shape (bins + 1,).

    Top-1 confidence in float32 against torch's float32 edges, bin k holding
    ``edges[k] <= conf < edges[k + 1]`` (``torch.bucketize(right=True) - 1``, which
    ``np.searchsorted(side="right") - 1`` is); a confidence of exactly 1.0 lies past the last edge
    and gets a bin of its own, the last, as in torchmetrics.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, not {bins}")
    probs = np.asarray(probs)
    conf = probs.max(1).astype(np.float32)  # (N,)
    correct = (probs.argmax(1) == np.asarray(labels)).astype(np.float64)  # (N,)
    which = np.searchsorted(_torch_edges(bins), conf, side="right") - 1  # (N,) in 0..bins
    size = bins + 1
    count = np.bincount(which, minlength=size)
    conf_sum = np.bincount(which, weights=conf.astype(np.float64), minlength=size)
    correct_sum = np.bincount(which, weights=correct, minlength=size)
    return count, conf_sum, correct_sum


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS
) -> float:
    """Expected calibration error of the top-1 confidence: sum over equal-width bins of the
    share of images in the bin times |accuracy - mean confidence| there.

    ``probs`` (N, C) softmax output, ``labels`` (N,). The same number as torchmetrics'
    ``MulticlassCalibrationError(num_classes=C, n_bins=bins, norm="l1")``; NaN without images.
    """
    count, conf_sum, correct_sum = _calibration_counts(probs, labels, bins)
    total = count.sum()
    if total == 0:
        return float("nan")
    # Per bin |acc - conf| * count / total, summed: the counts cancel the per-bin means.
    return float(np.abs(correct_sum - conf_sum).sum() / total)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """The reliability diagram's numbers, as JSON-ready lists.

    ``edges``: the ``bins + 1`` nominal edges ``k / bins``. ``confidence``, ``accuracy``,
    ``count``: ``bins + 1`` entries each, one per bin ``[edges[k], edges[k + 1])`` and a last one
    for confidences of exactly 1.0 (torchmetrics counts them apart); an empty bin's confidence and
    accuracy are ``None``. ``sum(count * |accuracy - confidence|) / sum(count)`` is
    :func:`expected_calibration_error`.
    """
    count, conf_sum, correct_sum = _calibration_counts(probs, labels, bins)
    filled = count > 0
    conf = np.divide(conf_sum, count, out=np.full(count.shape, np.nan), where=filled)
    acc = np.divide(correct_sum, count, out=np.full(count.shape, np.nan), where=filled)
    return {
        "edges": np.linspace(0.0, 1.0, bins + 1).tolist(),
        "confidence": [_num(x) for x in conf],
        "accuracy": [_num(x) for x in acc],
        "count": count.astype(int).tolist(),
    }


def write_evaluation(
    out_dir: Path,
    probs: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    indices: np.ndarray | None = None,
) -> dict:
    """Softmax probabilities (N, C) and labels (N,) -> ``out_dir``'s metrics.json and
    predictions.parquet (``indices``: each row's position in the evaluated split, when files were
    skipped); returns the metrics."""
    probs = np.asarray(probs, dtype=np.float32)
    metrics = classification_metrics(labels, probs, classes)
    RunFolder(out_dir).write_evaluation(metrics, predictions_frame(labels, probs, indices))
    return metrics
