"""Predictions -> metrics (metrics.json) and the per-image table (predictions.parquet). The
arithmetic is scikit-learn's; this module only arranges it. Torch-free: probabilities come in as
numpy arrays."""

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
    return json_ready(out)


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


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
