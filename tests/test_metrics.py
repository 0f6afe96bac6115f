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


def _torchmetrics_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.classification")
    metric = tm.MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=bins, norm="l1")
    return float(metric(torch.from_numpy(probs), torch.from_numpy(labels)))


def _on_edges(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose top-1 confidence lies exactly on a bin edge (torch's float32 k/15, NumPy's
    k/15 where the two differ, and 1.0), the rest shared equally by the other classes, so the
    top-1 is unique (it is above 1/c)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    torch_edges = torch.linspace(0, 1, 16, dtype=torch.float32).numpy().astype(np.float64)
    candidates = np.concatenate([torch_edges, np.arange(16) / 15])
    candidates = candidates[candidates > 1.0 / c + 1e-3]
    top = rng.choice(candidates, n)  # (n,)
    where = rng.integers(0, c, n)  # (n,) the top-1 class
    probs = np.repeat(((1.0 - top) / (c - 1))[:, None], c, axis=1)  # (n, c)
    probs[np.arange(n), where] = top
    labels = np.where(rng.random(n) < top, where, rng.integers(0, c, n))
    return probs.astype(np.float32), labels


@pytest.mark.parametrize("c", [2, 3, 10, 100])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_equals_torchmetrics(c: int, seed: int):
    from cnnvit.metrics import expected_calibration_error, reliability_bins

    labels, probs = _probs(n=500, c=c, seed=seed)
    edge_probs, edge_labels = _on_edges(300, c, seed)
    assert (edge_probs.max(1)[:, None] > np.sort(edge_probs, 1)[:, -2:-1]).all()  # unique top-1
    mixed = np.concatenate([probs.astype(np.float32), edge_probs])
    mixed_labels = np.concatenate([labels, edge_labels])
    for p, y in (
        (probs.astype(np.float32), labels),
        (edge_probs, edge_labels),
        (mixed, mixed_labels),
    ):
        ece = expected_calibration_error(p, y)
        assert ece == pytest.approx(_torchmetrics_ece(p, y), abs=1e-6)
        rb = reliability_bins(p, y)
        count = np.array(rb["count"])
        acc = np.array([np.nan if a is None else a for a in rb["accuracy"]])
        conf = np.array([np.nan if a is None else a for a in rb["confidence"]])
        gap = np.nansum(count * np.abs(acc - conf)) / count.sum()
        assert gap == pytest.approx(ece, abs=1e-12)
        assert count.sum() == len(y) and len(rb["edges"]) == 16 and len(count) == 16


def test_edge_values_fall_in_torchs_bins():
    """A confidence on an edge goes to the bin above it, with torch's float32 edges, and 1.0 to
    a bin of its own; the reliability counts say where each went."""
    from cnnvit.metrics import reliability_bins

    torch = pytest.importorskip("torch")
    edges = torch.linspace(0, 1, 16, dtype=torch.float32)
    conf = np.array([edges[3].item(), 0.2, edges[12].item(), 1.0], dtype=np.float32)
    probs = np.concatenate([conf[:, None], np.repeat((1 - conf[:, None]) / 5, 5, axis=1)], 1)
    assert (probs.argmax(1) == 0).all() and (probs[:, 0] == conf).all()
    count = reliability_bins(probs, np.zeros(4, dtype=int))["count"]
    # 0.2 is below torch's float32 edge 0.20000002, so bin 2; the edges themselves bins 3 and 12.
    want = np.bincount(torch.bucketize(torch.from_numpy(conf), edges, right=True) - 1, minlength=16)
    assert count == want.tolist()
    assert count[2] == 1 and count[3] == 1 and count[12] == 1 and count[15] == 1


def test_metrics_json_has_calibration():
    from cnnvit.metrics import expected_calibration_error

    labels, probs = _probs()
    m = classification_metrics(labels, probs, [f"c{i}" for i in range(7)])
    assert m["ece"] == pytest.approx(expected_calibration_error(probs, labels))
    assert m["ece"] == pytest.approx(_torchmetrics_ece(probs.astype(np.float32), labels), abs=1e-6)
    assert sum(m["reliability"]["count"]) == len(labels)
    assert {"top1", "top5", "macro", "weighted", "per_class", "confusion_matrix"} <= m.keys()
