"""Class subsets, the held-out splits and nested stratified training fractions.

Three disjoint splits (:func:`three_way`): the **test** split (the dataset's own, or a seeded
hold-out of its training files) is touched only for the final numbers; the **selection** split,
a fixed stratified hold-out of the training pool, decides everything chosen during training
(best epoch, early stopping, recipe tuning); the **training fractions** are nested subsets of
what remains. Both hold-outs follow ``holdout_seed``, not the cell's seed, so every cell of a
study shares them and only its training subset changes.

Nesting matters for a data-size study (seed 000: 25 %, 50 %, 100 %): the 25 % set must lie
inside the 50 % set, so that the curve measures "more data", not "different data". We get that
by giving every class one seeded permutation and taking a prefix of it: a larger fraction takes a
longer prefix of the same order. scikit-learn's stratified splitters draw each fraction
independently, so they cannot give nesting; hence this small hand-written routine.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from cnnvit.data.types import DataError, DatasetSplits, Source


def _class_orders(labels: np.ndarray, seed: int) -> dict[int, np.ndarray]:
    """For each class, its sample indices in one seeded random order."""
    rng = np.random.default_rng(seed)
    orders = {}
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        orders[int(cls)] = members[rng.permutation(len(members))]
    return orders


def nested_fraction_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified ``fraction`` of samples, nested across fractions.

    Each class keeps ``ceil(fraction * n_class)`` samples (at least one), so for the same seed
    ``indices(0.25) ⊆ indices(0.5) ⊆ indices(1.0)``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    keep = [
        order[: max(1, math.ceil(fraction * len(order)))]
        for order in _class_orders(labels, seed).values()
    ]
    return np.sort(np.concatenate(keep))


def stratified_holdout(
    labels: np.ndarray, val_fraction: float, seed: int, *, every_class: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, val), each class contributing ``val_fraction`` to val (with
    ``every_class``, at least one image of every class that has two)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train, val = [], []
    least = 1 if every_class else 0
    # A different stream from the fractions' seed, so the held-out set does not bias them.
    for order in _class_orders(labels, seed + 7919).values():
        n_val = max(least, round(val_fraction * len(order))) if len(order) > 1 else 0
        val.append(order[:n_val])
        train.append(order[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def select_classes(splits: DatasetSplits, names: list[str]) -> DatasetSplits:
    """Keep only the named classes, relabelled 0..k-1 in the order given."""
    unknown = [n for n in names if n not in splits.classes]
    if unknown:
        raise DataError(
            f"unknown class name(s) {unknown} for dataset {splits.name}; "
            f"its classes are: {', '.join(splits.classes)}"
        )
    if len(set(names)) != len(names):
        raise DataError(f"data.classes lists a class twice: {names}")
    if len(names) < 2:
        raise DataError(
            f"data.classes names {len(names)} class ({names}); a classifier needs at least 2"
        )
    old_to_new = np.full(len(splits.classes), -1, dtype=np.int64)
    for new, name in enumerate(names):
        old_to_new[splits.classes.index(name)] = new

    def keep(source: Source | None) -> Source | None:
        if source is None:
            return None
        idx = np.flatnonzero(old_to_new[source.labels] >= 0)
        sub = source.subset(idx)
        sub.labels = old_to_new[sub.labels]
        return sub

    return replace(
        splits,
        classes=list(names),
        train=keep(splits.train),
        val=keep(splits.val),
        selection=keep(splits.selection),
    )


def ensure_validation(splits: DatasetSplits, val_fraction: float, seed: int) -> DatasetSplits:
    """Give a dataset without a held-out (test) split a seeded, stratified one carved from
    train."""
    if splits.val is not None:
        return splits
    train_idx, val_idx = stratified_holdout(splits.train.labels, val_fraction, seed)
    return replace(splits, train=splits.train.subset(train_idx), val=splits.train.subset(val_idx))


# A different stream from the test hold-out's, so that the two hold-outs are not correlated.
_SELECTION_STREAM = 104_729


def carve_selection(splits: DatasetSplits, size: float, seed: int) -> DatasetSplits:
    """Hold a stratified selection split out of the training pool: ``size`` is a fraction
    (< 1) or a number of images (>= 1); every class keeps at least one training image."""
    pool = len(splits.train)
    fraction = size if size < 1 else size / pool
    if not 0 < fraction < 1:
        raise DataError(
            f"data.selection_size={size:g} leaves no training images out of {pool:,}; give a "
            "fraction below 1 or fewer images"
        )
    # Every class in the selection split, however small, so that no choice ignores one.
    train_idx, sel_idx = stratified_holdout(
        splits.train.labels, fraction, seed + _SELECTION_STREAM, every_class=True
    )
    if not len(sel_idx):
        raise DataError(
            f"data.selection_size={size:g} holds out no image of the {pool:,} training images; "
            "raise it"
        )
    return replace(
        splits, train=splits.train.subset(train_idx), selection=splits.train.subset(sel_idx)
    )
