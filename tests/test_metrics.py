import numpy as np
import pytest

from cnnvit.metrics import classification_metrics, predictions_frame


def _probs(n: int = 300, c: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), labels] += 1.0  # better than chance, not perfect
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs


def test_metrics_match_an_independent_computation():
    labels, probs = _probs()
    m = classification_metrics(labels, probs, [f"c{i}" for i in range(7)])
    preds = probs.argmax(1)
    assert m["top1"] == pytest.approx((preds == labels).mean())
    top5 = np.argsort(-probs, 1)[:, :5]
    assert m["top5"] == pytest.approx(np.mean([labels[i] in top5[i] for i in range(len(labels))]))
    precision, recall, f1, support = [], [], [], []
    for c in range(7):
        tp = np.sum((preds == c) & (labels == c))
        p = tp / max(np.sum(preds == c), 1)
        r = tp / np.sum(labels == c)
        precision.append(p)
        recall.append(r)
        f1.append(0 if p + r == 0 else 2 * p * r / (p + r))
        support.append(np.sum(labels == c))
    assert m["macro"]["precision"] == pytest.approx(np.mean(precision))
    assert m["macro"]["f1"] == pytest.approx(np.mean(f1))
    assert m["weighted"]["recall"] == pytest.approx(np.average(recall, weights=support))
    assert [pc["accuracy"] for pc in m["per_class"]] == pytest.approx(recall)
    cm = np.array(m["confusion_matrix"])
    assert cm.sum() == len(labels) and cm[2, 3] == np.sum((labels == 2) & (preds == 3))


def test_absent_class_has_no_accuracy_and_few_classes_have_trivial_top5():
    labels = np.array([0, 0, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    m = classification_metrics(labels, probs, ["a", "b", "c"])
    assert m["per_class"][2] == {"class": "c", "accuracy": None, "support": 0}
    assert m["top5"] == 1.0 and m["top1"] == pytest.approx(2 / 3)


def test_predictions_frame_rows():
    labels, probs = _probs(n=20)
    df = predictions_frame(labels, probs)
    assert list(df.columns) == ["index", "label", "prediction", "confidence", "top5", "top5_probs"]
    assert np.array_equal(df.prediction, probs.argmax(1))
    assert np.allclose(df.confidence, probs.max(1))
    assert all(row.top5[0] == row.prediction and len(row.top5) == 5 for row in df.itertuples())
