"""Minibatch CKA: the HSIC_1 arithmetic against one-pair-at-a-time NumPy, CKA's invariances, the
minibatch estimate against a full-batch reference, and the analysis on real models."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from tests.analyze.conftest import make_subject, pattern_images
from torch import nn

from cnnvit.analyze.analyses.cka import render_cka
from cnnvit.analyze.cka import (
    gram_linear,
    hsic1_all_pairs,
    linear_cka,
    minibatch_cka,
)
from cnnvit.analyze.images import ImageSet
from cnnvit.analyze.run import analyse
from cnnvit.analyze.subject import Subject
from cnnvit.folders import AnalysisFolder

# --- references written here, in NumPy -------------------------------------------------------


def numpy_hsic1(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. (2012), eq. 5, for one pair of n x n kernels."""
    n = len(k)
    k, l = k.copy(), l.copy()  # noqa: E741
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    one = np.ones(n)
    value = (
        np.trace(k @ l)
        + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ k @ l @ one)
    )
    return float(value / (n * (n - 3)))


def numpy_gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Biased full-batch linear CKA through centred Grams: HSIC_0 = tr(K H L H) (small n)."""
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h  # noqa: E741
    return float(np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l)))


def numpy_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The same in feature space (Kornblith et al. 2019, eq. 5), for many examples."""
    x = x.reshape(len(x), -1) - x.reshape(len(x), -1).mean(0)
    y = y.reshape(len(y), -1) - y.reshape(len(y), -1).mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def cka_from_hsic(feats_a: list[np.ndarray], feats_b: list[np.ndarray]) -> np.ndarray:
    """One-batch CKA matrix through the module's all-pairs HSIC_1."""
    ga = torch.stack([gram_linear(torch.from_numpy(f)) for f in feats_a])
    gb = torch.stack([gram_linear(torch.from_numpy(f)) for f in feats_b])
    cross = hsic1_all_pairs(ga, gb).numpy()
    self_a = np.diag(hsic1_all_pairs(ga, ga).numpy())
    self_b = np.diag(hsic1_all_pairs(gb, gb).numpy())
    return cross / np.sqrt(np.outer(self_a, self_b))


# --- the estimator ----------------------------------------------------------------------------


def test_all_pairs_equals_pairs_one_at_a_time():
    rng = np.random.default_rng(0)
    n = 12
    feats_a = [rng.normal(size=(n, d)) for d in (3, 7, 20)]
    feats_b = [rng.normal(size=(n, d)) + feats_a[0][:, :1] for d in (5, 9)]
    ga = torch.stack([gram_linear(torch.from_numpy(f)) for f in feats_a])  # (3, n, n)
    gb = torch.stack([gram_linear(torch.from_numpy(f)) for f in feats_b])  # (2, n, n)
    got = hsic1_all_pairs(ga, gb).numpy()
    want = np.array([[numpy_hsic1(a @ a.T, b @ b.T) for b in feats_b] for a in feats_a])
    assert got.shape == (3, 2) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_cka_of_features_with_themselves_is_one():
    rng = np.random.default_rng(1)
    feats = [rng.normal(size=(32, d)) ** 2 for d in (4, 50)]  # non-negative, like ReLU outputs
    matrix = cka_from_hsic(feats, feats)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-12)
    assert matrix[0, 1] < 0.9  # two unrelated feature sets are not "the same"


def test_cka_ignores_rotation_isotropic_scale_and_offset():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 20))
    z = np.tanh(x[:, :8] @ rng.normal(size=(8, 15))) + 0.5 * rng.normal(size=(64, 15))
    q, _ = np.linalg.qr(rng.normal(size=(20, 20)))  # orthogonal
    moved = 3.7 * x @ q + 5.0  # rotated, scaled, shifted: HSIC_1 is shift-invariant too
    base = cka_from_hsic([x], [z])[0, 0]
    assert 0.1 < base < 0.9
    np.testing.assert_allclose(cka_from_hsic([moved], [z])[0, 0], base, rtol=1e-9)
    np.testing.assert_allclose(cka_from_hsic([moved], [x])[0, 0], 1.0, rtol=1e-9)
    # The full-batch reference has the same invariances.
    assert linear_cka(3.7 * x @ q, z) == pytest.approx(linear_cka(x, z), rel=1e-9)
    assert linear_cka(x, z) == pytest.approx(numpy_gram_cka(x, z), rel=1e-9)
    assert numpy_linear_cka(x, z) == pytest.approx(numpy_gram_cka(x, z), rel=1e-9)
    # A non-isotropic scaling is not ignored: CKA is not invariant to any linear map.
    stretched = x * np.linspace(0.1, 10, 20)
    assert abs(cka_from_hsic([stretched], [z])[0, 0] - base) > 0.01


def test_hsic_needs_more_than_three_examples():
    grams = torch.stack([gram_linear(torch.randn(3, 5))])
    with pytest.raises(ValueError, match="n > 3"):
        hsic1_all_pairs(grams, grams)


# --- minibatch CKA on models whose features are known -----------------------------------------


class FixedMaps(nn.Module):
    """Fixed random maps of a 3 x 4 x 4 image: ``lin`` (linear, 6 dims), ``act`` (ReLU of a
    linear map of ``lin``, 10 dims), ``out`` (tanh, 4 dims)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.flat = nn.Flatten()
        self.lin = nn.Linear(48, 6)
        self.mix = nn.Linear(6, 10)
        self.act = nn.ReLU()
        self.last = nn.Linear(10, 4)
        self.out = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.last(self.act(self.mix(self.lin(self.flat(x))))))

    def numpy_features(self, x: np.ndarray) -> list[np.ndarray]:
        """The three recorded layers computed from the weights, in NumPy float64."""
        w = {k: v.double().numpy() for k, v in self.state_dict().items()}
        lin = x.reshape(len(x), -1) @ w["lin.weight"].T + w["lin.bias"]
        act = np.maximum(lin @ w["mix.weight"].T + w["mix.bias"], 0.0)
        out = np.tanh(act @ w["last.weight"].T + w["last.bias"])
        return [lin, act, out]


def fixed_subject(seed: int, label: str, share_first: FixedMaps | None = None) -> Subject:
    model = FixedMaps(seed).eval()
    if share_first is not None:
        model.lin.load_state_dict(share_first.lin.state_dict())  # the same first layer
    return Subject(
        label=label,
        model=model,
        family="cnn",
        classes=["a", "b"],
        image_size=4,
        channels=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        device=torch.device("cpu"),
    )


LAYERS = ["lin", "act", "out"]


def random_images(n: int, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, size=(n, 3, 4, 4), dtype=np.uint8))
    return ImageSet(images, torch.zeros(n, dtype=torch.int64), ["a", "b"], "noise")


def test_minibatch_estimate_converges_to_full_batch_cka():
    a = fixed_subject(0, "a")
    b = fixed_subject(1, "b", share_first=a.model)
    images = random_images(8192)
    result = minibatch_cka(
        a, b, images, layers_a=LAYERS, layers_b=LAYERS, batch_size=256, progress=False
    )
    x = a.prepare(images.images).double().numpy()  # (N, 3, 4, 4)
    feats_a, feats_b = a.model.numpy_features(x), b.model.numpy_features(x)
    want = np.array([[numpy_linear_cka(fa, fb) for fb in feats_b] for fa in feats_a])
    assert result.matrix.shape == (3, 3) and result.num_images == 8192 and result.dropped == 0
    assert want.min() < 0.5 < want.max()  # a spread of values, not all ~0 or ~1
    np.testing.assert_allclose(result.matrix, want, atol=1e-2)


def test_short_last_batch_is_dropped_and_tiny_batches_rejected():
    a = fixed_subject(0, "a")
    result = minibatch_cka(
        a, None, random_images(10), layers_a=LAYERS, batch_size=4, progress=False
    )
    assert (result.num_images, result.dropped, result.batch_size) == (8, 2, 4)
    np.testing.assert_allclose(np.diag(result.matrix), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match=r"needs n > 3 images per batch.*at least 4"):
        minibatch_cka(a, None, random_images(10), layers_a=LAYERS, batch_size=3)


# --- real models --------------------------------------------------------------------------------


def test_cka_analysis_on_real_models(trained_cnn, trained_vit, tmp_path):
    cnn = dataclasses.replace(trained_cnn, label="res/net <1>")  # same model, awkward label
    images = pattern_images(48, seed=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = [s.model(x) for s in (cnn, trained_vit)]
    result = analyse("cka", [cnn, trained_vit], tmp_path, val=images, batch_size=16, progress=False)

    with torch.no_grad():
        after = [s.model(x) for s in (cnn, trained_vit)]
    assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert all(not m._forward_hooks for s in (cnn, trained_vit) for m in s.model.modules())
    assert not cnn.model.training and not trained_vit.model.training

    stems = ["cka_res_net_1__vit_mini", "cka_res_net_1__res_net_1", "cka_vit_mini__vit_mini"]
    assert [p["csv"].removesuffix(".csv") for p in result["pairs"]] == stems
    assert json.loads((tmp_path / "cka.json").read_text()) == result
    cross = result["pairs"][0]
    matrix = np.array(cross["matrix"], dtype=float)  # (5 resnet blocks, 4 vit blocks)
    assert matrix.shape == (5, 4) and np.isfinite(matrix).all()
    table = pd.read_csv(tmp_path / f"{stems[0]}.csv", index_col="layer")
    assert list(table.index) == cross["layers_a"] and list(table.columns) == cross["layers_b"]
    np.testing.assert_allclose(table.to_numpy(), matrix, atol=1e-6)
    for pair in result["pairs"][1:]:
        np.testing.assert_allclose(np.diag(np.array(pair["matrix"], float)), 1.0, atol=1e-6)
    for stem in stems:
        assert (tmp_path / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    best = cross["best_match_a"][0]
    assert best["cka"] == pytest.approx(matrix[0].max(), abs=1e-6)

    # Every pair at once equals each pair of layers computed on its own.
    for i, la in enumerate(cross["layers_a"][::2]):
        for j, lb in enumerate(cross["layers_b"][::3]):
            one = minibatch_cka(
                cnn,
                trained_vit,
                images,
                layers_a=[la],
                layers_b=[lb],
                batch_size=16,
                progress=False,
            )
            assert one.matrix[0, 0] == pytest.approx(matrix[2 * i, 3 * j], abs=1e-6)

    html = render_cka(AnalysisFolder(tmp_path, "cka"))
    assert html.count("<img") == 3 and "res/net &lt;1&gt;" in html and "<1>" not in html


def test_analysis_runs_in_eval_mode_and_puts_train_mode_back():
    subject = make_subject("resnet_mini")
    images = pattern_images(16, seed=4)
    evaluated = minibatch_cka(subject, None, images, batch_size=8, progress=False).matrix
    subject.model.train()
    again = minibatch_cka(subject, None, images, batch_size=8, progress=False).matrix
    assert subject.model.training  # as it was given
    np.testing.assert_array_equal(evaluated, again)  # batch norm ran on its running stats


def test_render_cka_names_what_is_missing(tmp_path):
    folder = AnalysisFolder(tmp_path, "cka")
    assert "cka.json is missing" in render_cka(folder)
    (tmp_path / "cka.json").write_text("{not json")
    assert "damaged" in render_cka(folder)
