"""How alike two models' layers represent the same images: linear CKA between every pair of
layers, as minibatch CKA with the unbiased HSIC estimator.

Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same things?": for each
batch of n images, every recorded layer's output (any shape, flattened per example) becomes its
n x n linear Gram matrix K = X X^T, and

    CKA(i, j) = sum_b HSIC_1(K_i, L_j) / sqrt(sum_b HSIC_1(K_i, K_i) * sum_b HSIC_1(L_j, L_j))

with HSIC_1 the unbiased estimator of Song et al. (2012). Summing over batches keeps memory
independent of the dataset, and unlike the biased full-batch estimator the result does not
depend on the batch size (the bias of the biased estimator grows with the feature width and
shrinks only with the number of images).

Each model runs one forward pass per batch; a :class:`~cnnvit.analyze.hooks.LayerRecorder` turns
each layer's output into its Gram matrix inside the hook, so activations are never kept, and all
layer pairs are accumulated at once from the stacked Grams (no forward pass per pair).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch

from cnnvit.analyze.hooks import LayerRecorder, preserved
from cnnvit.analyze.images import ImageSet
from cnnvit.analyze.layers import resolve_layers
from cnnvit.analyze.subject import Subject
from cnnvit.ui import progress_bar

__all__ = [
    "MIN_BATCH",
    "AllPairs",
    "CKAResult",
    "all_pairs_cka",
    "gram_linear",
    "hsic1_all_pairs",
    "linear_cka",
    "minibatch_cka",
]

# HSIC_1 divides by n (n - 3) and (n - 1)(n - 2): it is defined for n > 3 only.
MIN_BATCH = 4
Layers = str | Sequence[str]


@dataclass
class CKAResult:
    """CKA between every layer of model A (rows) and every layer of model B (columns)."""

    matrix: np.ndarray  # (La, Lb); NaN where a layer is constant over the images
    layers_a: list[str]
    layers_b: list[str]
    labels: tuple[str, str]
    num_images: int  # images that entered the estimate
    batch_size: int
    dropped: int  # images of a final batch too short for the estimator (n < 4)


# --- the estimator --------------------------------------------------------------------------


def gram_linear(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) features -> (n, n) float64 linear Gram matrix of the per-example flattened
    features. Float64 because HSIC subtracts terms of similar size (ReLU features all share a
    large mean), and it keeps TF32 matmuls on CUDA out of the estimate."""
    flat = x.detach().reshape(x.shape[0], -1).to(torch.float64)  # (n, D)
    return flat @ flat.T  # (n, n)


def _zero_diagonal(grams: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """(L, n, n) -> float64 with zero diagonals (HSIC_1's K~); a copy unless ``inplace`` (for
    Grams this module made and owns)."""
    out = grams.to(torch.float64)  # (L, n, n)
    if not inplace and out is grams:
        out = out.clone()
    out.diagonal(dim1=-2, dim2=-1).zero_()
    return out


def _check_grams(grams: torch.Tensor, name: str) -> int:
    if grams.ndim != 3 or grams.shape[1] != grams.shape[2]:
        raise ValueError(
            f"{name} must be stacked Gram matrices (L, n, n), got {tuple(grams.shape)}"
        )
    n = int(grams.shape[-1])
    if n < MIN_BATCH:
        raise ValueError(
            f"the unbiased HSIC estimator needs n > 3 examples per batch, got n = {n}; "
            "use a batch size of at least 4"
        )
    return n


def _hsic1_terms(tilde_a: torch.Tensor, tilde_b: torch.Tensor, n: int) -> torch.Tensor:
    """HSIC_1 (La, Lb) of every pair from zero-diagonal Grams (La, n, n) and (Lb, n, n)."""
    la, lb = tilde_a.shape[0], tilde_b.shape[0]
    # tr(K~ L~) = sum_ij K~_ij L~_ji: one matrix product over the flattened Grams.
    trace = tilde_a.reshape(la, -1) @ tilde_b.transpose(1, 2).reshape(lb, -1).T  # (La, Lb)
    cols_a, rows_b = tilde_a.sum(1), tilde_b.sum(2)  # (La, n) = 1^T K~, (Lb, n) = L~ 1
    totals_a, totals_b = cols_a.sum(1), rows_b.sum(1)  # (La,), (Lb,): 1^T K~ 1, 1^T L~ 1
    cross = cols_a @ rows_b.T  # (La, Lb): 1^T K~ L~ 1
    hsic = trace + torch.outer(totals_a, totals_b) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross
    return hsic / (n * (n - 3))


def _hsic1_self(tilde: torch.Tensor, n: int) -> torch.Tensor:
    """HSIC_1(K_i, K_i) (L,) for each zero-diagonal Gram (L, n, n): the diagonal of the all-pairs
    matrix without computing the rest."""
    trace = (tilde * tilde.transpose(1, 2)).sum((1, 2))  # (L,)
    rows = tilde.sum(2)  # (L, n)
    totals = rows.sum(1)  # (L,)
    cross = (tilde.sum(1) * rows).sum(1)  # (L,): 1^T K~ K~ 1
    hsic = trace + totals**2 / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross
    return hsic / (n * (n - 3))


def hsic1_all_pairs(grams_a: torch.Tensor, grams_b: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC_1 (Song et al. 2012) between every Gram of ``grams_a`` (La, n, n) and every
    Gram of ``grams_b`` (Lb, n, n), from the same n examples: a float64 (La, Lb) tensor.

    HSIC_1(K, L) = [tr(K~L~) + 1^T K~ 1 * 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1]
    / (n (n-3)), K~ and L~ being K and L with zero diagonals. Raises ValueError for n < 4.
    """
    n = _check_grams(grams_a, "grams_a")
    if _check_grams(grams_b, "grams_b") != n:
        raise ValueError(
            f"grams_a and grams_b must come from the same examples: n = {n} and {grams_b.shape[-1]}"
        )
    return _hsic1_terms(_zero_diagonal(grams_a), _zero_diagonal(grams_b.to(grams_a.device)), n)


def linear_cka(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """Full-batch linear CKA (Kornblith et al. 2019, the biased HSIC estimator) between two
    feature sets of the same n examples, each (n, ...) and flattened per example:
    ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred X, Y. A reference for small
    sets; for a dataset use :func:`minibatch_cka`, whose estimate does not depend on n."""
    fx = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    fy = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if fx.shape[0] != fy.shape[0]:
        raise ValueError(f"x and y must hold the same examples: {fx.shape[0]} and {fy.shape[0]}")
    fx = fx.reshape(fx.shape[0], -1).to(torch.float64)  # (n, Dx)
    fy = fy.reshape(fy.shape[0], -1).to(torch.float64)  # (n, Dy)
    fx, fy = fx - fx.mean(0), fy - fy.mean(0)
    cross = torch.linalg.matrix_norm(fy.T @ fx) ** 2
    norm = torch.linalg.matrix_norm(fx.T @ fx) * torch.linalg.matrix_norm(fy.T @ fy)
    return float(cross / norm) if norm > 0 else math.nan


# --- accumulation over batches, every pair of layers at once ----------------------------------


class _PairSums:
    """Running sums over batches: HSIC_1 of each requested (model i, model j) pair of layer
    lists, and HSIC_1(K, K) of every layer of every model (the denominators)."""

    def __init__(self, pairs: Sequence[tuple[int, int]]) -> None:
        self.pairs = list(pairs)
        self.cross: dict[tuple[int, int], torch.Tensor] = {}
        self.self_terms: dict[int, torch.Tensor] = {}

    def add(self, grams: Sequence[torch.Tensor]) -> None:
        """One batch: ``grams[i]`` is model i's stacked Grams (L_i, n, n), which this
        consumes (their diagonals are zeroed in place)."""
        n = _check_grams(grams[0], "grams")
        tilde = [_zero_diagonal(g, inplace=True) for g in grams]  # each (L_i, n, n)
        for i, t in enumerate(tilde):
            term = _hsic1_self(t, n)  # (L_i,)
            self.self_terms[i] = self.self_terms.get(i, 0) + term
        for i, j in self.pairs:
            term = _hsic1_terms(tilde[i], tilde[j], n)  # (L_i, L_j)
            self.cross[(i, j)] = self.cross.get((i, j), 0) + term

    def cka(self, i: int, j: int) -> np.ndarray:
        """(L_i, L_j) CKA; NaN where a layer's HSIC_1 with itself is not positive (a constant
        layer, or too few images for the estimate)."""
        denom = torch.outer(self.self_terms[i], self.self_terms[j])  # (L_i, L_j)
        ok = denom > 0
        out = torch.full_like(denom, math.nan)
        out[ok] = self.cross[(i, j)][ok] / denom[ok].sqrt()
        return out.cpu().numpy()


def _hsic_device(subject: Subject) -> torch.device:
    # Float64 on CUDA is fine for these small products; MPS has no float64, so the CPU.
    return subject.device if subject.device.type == "cuda" else torch.device("cpu")


@dataclass
class _Pass:
    sums: _PairSums
    num_images: int
    dropped: int
    seconds: float


def _accumulate(
    subjects: Sequence[Subject],
    layer_lists: Sequence[list[str]],
    images: ImageSet,
    pairs: Sequence[tuple[int, int]],
    batch_size: int,
    progress: bool,
) -> _Pass:
    """One forward pass per batch per model; every requested pair accumulated from it."""
    _check_batch_size(batch_size)
    sums, used, dropped = _PairSums(pairs), 0, 0
    device = _hsic_device(subjects[0])
    start = time.perf_counter()
    with ExitStack() as stack, progress_bar(progress) as bar:
        recorders = []
        for subject, names in zip(subjects, layer_lists, strict=True):
            stack.enter_context(preserved(subject.model)).eval()
            rec = LayerRecorder(subject.model, names, transform=gram_linear)
            recorders.append(stack.enter_context(rec))
        task = bar.add_task("CKA", total=math.ceil(len(images) / batch_size), rate="") if bar else 0
        for batch, _labels in images.batches(batch_size):
            n = len(batch)
            if n < MIN_BATCH:
                dropped += n  # the last, short batch: the estimator is undefined for n < 4
            else:
                sums.add(_batch_grams(subjects, recorders, batch, device))
                used += n
            if bar is not None:
                rate = used / max(time.perf_counter() - start, 1e-9)
                bar.update(task, advance=1, rate=f"{rate:,.0f} img/s")
    return _Pass(sums, used, dropped, time.perf_counter() - start)


def _batch_grams(
    subjects: Sequence[Subject],
    recorders: Sequence[LayerRecorder],
    batch: torch.Tensor,
    device: torch.device,
) -> list[torch.Tensor]:
    """Each model's stacked Grams (L_i, n, n) for one uint8 batch (n, C, H, W)."""
    grams = []
    for subject, rec in zip(subjects, recorders, strict=True):
        rec.clear()
        with torch.inference_mode():
            subject.model(subject.prepare(batch))
        grams.append(torch.stack(rec.ordered()).to(device))  # (L_i, n, n)
        rec.clear()  # the Grams now live in the stack only
    return grams


def _check_batch_size(batch_size: int) -> None:
    if batch_size < MIN_BATCH:
        raise ValueError(
            f"CKA batch size {batch_size} is too small: the unbiased HSIC estimator needs "
            f"n > 3 images per batch; use a batch size of at least {MIN_BATCH} (64 is the default)"
        )


def minibatch_cka(
    subject_a: Subject,
    subject_b: Subject | None,
    images: ImageSet,
    *,
    layers_a: Layers = "blocks",
    layers_b: Layers = "blocks",
    batch_size: int = 64,
    progress: bool = True,
) -> CKAResult:
    """Linear CKA between every layer of ``subject_a`` and every layer of ``subject_b`` (None:
    A against itself, from the same forward pass), over ``images``, each model fed through its
    own ``prepare``.

    Memory: the batch's (La + Lb) n^2 float64 Grams and at most as much again in temporaries
    while the pairs are summed, plus one forward pass's activations with one layer's output
    at a time copied to float64 (it becomes its Gram in the hook and is dropped), plus the
    (La, Lb) sums; nothing grows with the number of images. A final batch of fewer than
    4 images is dropped (``dropped``); a batch size below 4 raises ValueError.
    """
    _check_batch_size(batch_size)
    names_a = resolve_layers(subject_a.model, layers_a)
    if subject_b is None:
        run = _accumulate([subject_a], [names_a], images, [(0, 0)], batch_size, progress)
        matrix, names_b, label_b = run.sums.cka(0, 0), names_a, subject_a.label
    else:
        names_b = resolve_layers(subject_b.model, layers_b)
        subjects, lists = [subject_a, subject_b], [names_a, names_b]
        run = _accumulate(subjects, lists, images, [(0, 1)], batch_size, progress)
        matrix, label_b = run.sums.cka(0, 1), subject_b.label
    return CKAResult(
        matrix=matrix,
        layers_a=names_a,
        layers_b=list(names_b),
        labels=(subject_a.label, label_b),
        num_images=run.num_images,
        batch_size=batch_size,
        dropped=run.dropped,
    )


# --- every pair of models ----------------------------------------------------------------------


@dataclass
class AllPairs:
    """CKA of every pair of models (i < j) and of each model with itself."""

    layers: list[list[str]]  # per model, its layers in order
    matrices: dict[tuple[int, int], np.ndarray]  # (i, j) -> (L_i, L_j); NaN where undefined
    num_images: int
    dropped: int
    seconds: float


def all_pairs_cka(
    subjects: Sequence[Subject],
    images: ImageSet,
    *,
    layers: Layers = "blocks",
    batch_size: int = 64,
    progress: bool = True,
) -> AllPairs:
    """CKA of every pair of models (i < j) and each model with itself, from one forward pass
    per batch per model. ``layers``: "blocks", "all", "stages", or module names (the same
    names in every model)."""
    _check_batch_size(batch_size)
    lists = [resolve_layers(s.model, layers) for s in subjects]
    count = len(subjects)
    pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
    pairs += [(i, i) for i in range(count)]
    run = _accumulate(subjects, lists, images, pairs, batch_size, progress)
    return AllPairs(
        layers=lists,
        matrices={(i, j): run.sums.cka(i, j) for i, j in pairs},
        num_images=run.num_images,
        dropped=run.dropped,
        seconds=run.seconds,
    )
