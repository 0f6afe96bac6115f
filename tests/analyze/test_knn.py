"""kNN embedding quality: exact search and votes against scikit-learn and brute-force NumPy,
pre-logits features against the classifier's own input, the analysis on real models, and its
headline numbers and verdict sentence."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier
from tests.analyze.conftest import accuracy, pattern_images

from cnnvit.analyze.analyses.knn import knn_headline, knn_verdict, render_knn
from cnnvit.analyze.knn import embed, knn_scores
from cnnvit.analyze.run import analyse
from cnnvit.folders import AnalysisFolder


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


def test_knn_analysis_on_real_models(trained_cnn, trained_vit, tmp_path):
    index, queries = pattern_images(96, seed=6), pattern_images(40, seed=7)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = [s.model(x) for s in (trained_cnn, trained_vit)]
    result = analyse(
        "knn",
        [trained_cnn, trained_vit],
        tmp_path,
        val=queries,
        train=index,
        progress=False,
        batch_size=32,
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

    html = render_knn(AnalysisFolder(tmp_path, "knn"))
    assert "<img" in html and "resnet_mini" in html and "recall@20" in html
    assert "knn.json is missing" in render_knn(AnalysisFolder(tmp_path / "nowhere", "knn"))


def test_index_and_query_counts_and_k_kept_within_the_index(trained_cnn, tmp_path, capsys):
    train, val = pattern_images(40, seed=8), pattern_images(20, seed=9)
    options = {"val": val, "train": train, "progress": False, "batch_size": 16}
    result = analyse("knn", [trained_cnn], tmp_path / "a", ks=[1, 5, 20], max_index=8, **options)
    settings = result["settings"]
    assert (settings["index_size"], settings["query_size"]) == (8, 20)
    assert settings["ks"] == [1, 5] and result["models"][0]["ks"] == [1, 5]
    assert "kNN: 8 training images, so k = [1, 5]" in capsys.readouterr().err

    # No k fits: the whole index is the one neighbourhood.
    result = analyse("knn", [trained_cnn], tmp_path / "b", ks=[20, 30], max_index=8, **options)
    assert result["settings"]["ks"] == [8]
    assert "kNN: 8 training images, so k = [8]" in capsys.readouterr().err
    result = analyse("knn", [trained_cnn], tmp_path / "c", ks=[3], max_queries=6, **options)
    assert (result["settings"]["index_size"], result["settings"]["query_size"]) == (40, 6)
    assert "training images, so k" not in capsys.readouterr().err


def test_headline_and_verdict_from_knn_json():
    data = {
        "models": [
            {"label": "cnn", "head_top1": 0.9, "knn_accuracy": {"1": 0.8, "5": 0.85}},
            {"label": "<vit>", "head_top1": 0.7, "knn_accuracy": {"1": 0.6, "5": 0.65}},
        ]
    }
    assert knn_headline(data) == {
        "cnn": {"knn_top1": 0.8, "head_top1": 0.9},
        "<vit>": {"knn_top1": 0.6, "head_top1": 0.7},
    }
    assert knn_verdict(data) == (
        "Nearest-neighbour retrieval on penultimate features (1-NN top-1): cnn 80.0 % (its "
        "classifier head 90.0 %); <vit> 60.0 % (its classifier head 70.0 %)."
    )

    # 1-NN only when the smallest k is 1; what is not a number is NaN; one 1-NN figure is no
    # comparison.
    odd = {
        "models": [
            {"label": "a", "head_top1": "0.9", "knn_accuracy": {"5": 0.7, "3": 0.6}},
            {"label": "b", "head_top1": True, "knn_accuracy": {"20": 0.5, "1": 0.4}},
            "not a model",
        ]
    }
    rows = knn_headline(odd)
    assert list(rows) == ["a", "b"] and rows["b"]["knn_top1"] == 0.4
    assert all(
        math.isnan(v) for v in (rows["a"]["knn_top1"], *(r["head_top1"] for r in rows.values()))
    )
    assert knn_verdict(odd) is None
    assert knn_headline({}) == {} and knn_verdict({"models": None}) is None
