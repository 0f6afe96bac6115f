"""kNN embedding quality: exact search and votes against scikit-learn and brute-force NumPy,
pre-logits features against the classifier's own input, and the analysis on real models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier
from tests.analyze.conftest import accuracy, pattern_images

from cnnvit.analyze.knn import embed, knn_scores, run_knn
from cnnvit.report.knn_section import render_knn


def test_separable_classes_give_perfect_one_nn():
    rng = np.random.default_rng(0)
    centres = np.eye(16)[:4] * 5.0  # four orthogonal directions
    index_labels, query_labels = rng.integers(0, 4, 200), rng.integers(0, 4, 50)
    index = centres[index_labels] + 0.3 * rng.normal(size=(200, 16))
    queries = centres[query_labels] + 0.3 * rng.normal(size=(50, 16))
    scores = knn_scores(index, index_labels, queries, query_labels, ks=(1, 5))
    assert scores["accuracy"] == {1: 1.0, 5: 1.0}
    assert scores["recall"] == {1: 1.0, 5: 1.0}


def mixed_features(seed: int = 1):
    """Weakly clustered float32 features whose labels are noisy, so votes often tie; labels are
    non-contiguous (3, 7, 11, 20) to check the vote maps back to the label values."""
    rng = np.random.default_rng(seed)
    values = np.array([3, 7, 11, 20])
    index_labels, query_labels = values[rng.integers(0, 4, 300)], values[rng.integers(0, 4, 120)]
    centres = {v: rng.normal(size=8) for v in values}
    index = np.stack([centres[v] for v in index_labels]) * 0.6 + rng.normal(size=(300, 8))
    queries = np.stack([centres[v] for v in query_labels]) * 0.6 + rng.normal(size=(120, 8))
    return index.astype(np.float32), index_labels, queries.astype(np.float32), query_labels


def test_predictions_match_scikit_learn_with_ties():
    index, index_labels, queries, query_labels = mixed_features()
    ks = (1, 5, 20)
    # chunk=16: many blocks of queries and of index vectors, merged into the running top-k.
    scores = knn_scores(index, index_labels, queries, query_labels, ks=ks, chunk=16)
    tied = 0
    for k in ks:
        sk = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
        sk.fit(index, index_labels)
        np.testing.assert_array_equal(scores["predictions"][k], sk.predict(queries))
        assert scores["accuracy"][k] == pytest.approx(sk.score(queries, query_labels))
        neighbours = sk.kneighbors(queries, return_distance=False)  # (Q, k)
        for row in index_labels[neighbours]:
            counts = np.unique(row, return_counts=True)[1]
            tied += int((counts == counts.max()).sum() > 1)
    assert tied > 20  # the tie rule was exercised, not just the clear majorities


def test_neighbours_and_recall_match_brute_force_numpy():
    index, index_labels, queries, query_labels = mixed_features(seed=2)
    scores = knn_scores(index, index_labels, queries, query_labels, ks=(1, 5, 20), chunk=7)
    a = index / np.linalg.norm(index, axis=1, keepdims=True)
    b = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    order = np.argsort(-(b.astype(np.float64) @ a.T.astype(np.float64)), axis=1)  # (Q, N)
    np.testing.assert_array_equal(scores["neighbors"], order[:, :20])
    for k in (1, 5, 20):
        hit = (index_labels[order[:, :k]] == query_labels[:, None]).any(1)
        assert scores["recall"][k] == pytest.approx(hit.mean())
    assert scores["recall"][1] == scores["accuracy"][1]  # 1-NN: the same event
    assert scores["recall"][1] < scores["recall"][5] < scores["recall"][20]


def test_faiss_search_when_installed_gives_the_exact_neighbours(monkeypatch):
    pytest.importorskip("faiss")  # optional: not a dependency of cnnvit
    import cnnvit.analyze.knn as knn

    index, index_labels, queries, query_labels = mixed_features(seed=3)
    exact = knn_scores(index, index_labels, queries, query_labels, ks=(1, 5))
    monkeypatch.setattr(knn, "FAISS_MIN_INDEX", 0)
    found = knn_scores(index, index_labels, queries, query_labels, ks=(1, 5))
    assert found["search"] == "faiss IndexFlatIP" and exact["search"] == "exact matmul"
    np.testing.assert_array_equal(found["neighbors"], exact["neighbors"])


def test_bad_inputs_are_named():
    index, index_labels, queries, query_labels = mixed_features()
    with pytest.raises(ValueError, match="between 1 and the index size"):
        knn_scores(index[:10], index_labels[:10], queries, query_labels, ks=(1, 20))
    with pytest.raises(ValueError, match="differ in width"):
        knn_scores(index[:, :4], index_labels, queries, query_labels)


def classifier_input(subject, images) -> np.ndarray:
    """What the final linear layer receives in a plain forward pass (a pre-hook on it)."""
    seen = []
    head = subject.model.get_classifier()
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            subject.model(subject.prepare(images.images))
    finally:
        handle.remove()
    return torch.cat(seen).numpy()


def test_embed_is_the_classifier_input(trained_cnn, trained_vit):
    images = pattern_images(20, seed=5)
    for subject in (trained_cnn, trained_vit):
        feats = embed(subject, images, batch_size=8, progress=False)
        assert feats.dtype == np.float32 and feats.shape == (20, subject.model.num_features)
        np.testing.assert_allclose(feats, classifier_input(subject, images), atol=1e-5)


def test_run_knn_on_real_models(trained_cnn, trained_vit, tmp_path):
    index, queries = pattern_images(96, seed=6), pattern_images(40, seed=7)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = [s.model(x) for s in (trained_cnn, trained_vit)]
    result = run_knn(
        [trained_cnn, trained_vit], index, queries, tmp_path, batch_size=32, progress=False
    )
    with torch.no_grad():
        after = [s.model(x) for s in (trained_cnn, trained_vit)]
    assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert all(not m._forward_hooks for s in (trained_cnn, trained_vit) for m in s.model.modules())

    assert json.loads((tmp_path / "knn.json").read_text()) == result
    for model, subject in zip(result["models"], (trained_cnn, trained_vit), strict=True):
        assert model["head_top1"] == pytest.approx(accuracy(subject, queries))
        assert model["knn_accuracy"]["1"] > 0.8  # the trained features separate the patterns
    table = pd.read_csv(tmp_path / "knn.csv")
    assert list(table.columns) == [
        "model", "k", "knn_accuracy", "recall_at_k", "head_top1", "dims", "index_size",
        "query_size",
    ]  # fmt: skip
    assert len(table) == 6 and set(table["index_size"]) == {96}
    assert (tmp_path / "knn.png").read_bytes()[:4] == b"\x89PNG"

    html = render_knn(tmp_path)
    assert "<img" in html and "resnet_mini" in html and "recall@20" in html
    assert "knn.json is missing" in render_knn(tmp_path / "nowhere")
