import numpy as np
import pytest

from cnnvit.data.splits import (
    ensure_validation,
    nested_fraction_indices,
    select_classes,
    stratified_holdout,
)
from cnnvit.data.types import ArraySource, DataError, DatasetSplits


def _labels() -> np.ndarray:
    # Imbalanced on purpose: 400, 200 and 100 samples.
    return np.repeat(np.arange(3), [400, 200, 100])


def test_fractions_are_nested_and_stratified():
    labels = _labels()
    sets = {f: set(nested_fraction_indices(labels, f, seed=3)) for f in (0.25, 0.5, 1.0)}
    assert sets[0.25] < sets[0.5] < sets[1.0]
    assert len(sets[1.0]) == len(labels)
    counts = np.bincount(labels[sorted(sets[0.25])])
    assert counts.tolist() == [100, 50, 25]


def test_same_seed_same_subset_other_seed_other_subset():
    labels = _labels()
    a = nested_fraction_indices(labels, 0.3, seed=1)
    assert np.array_equal(a, nested_fraction_indices(labels, 0.3, seed=1))
    assert not np.array_equal(a, nested_fraction_indices(labels, 0.3, seed=2))


def test_holdout_is_disjoint_stratified_and_seeded():
    labels = _labels()
    train, val = stratified_holdout(labels, 0.1, seed=0)
    assert not set(train) & set(val)
    assert len(train) + len(val) == len(labels)
    assert np.bincount(labels[val]).tolist() == [40, 20, 10]
    assert np.array_equal(val, stratified_holdout(labels, 0.1, seed=0)[1])


def _splits() -> DatasetSplits:
    labels = np.repeat(np.arange(3), 10)
    images = labels.astype(np.uint8).reshape(-1, 1, 1, 1).repeat(4, 1).repeat(4, 2)
    return DatasetSplits("toy", ["cat", "dog", "frog"], ArraySource(images, labels))


def test_select_classes_relabels_in_the_given_order():
    sub = select_classes(_splits(), ["frog", "cat"])
    assert sub.classes == ["frog", "cat"]
    # pixel value == original label, so the relabelling can be checked against the pixels
    original = sub.train.images[:, 0, 0, 0]
    assert set(zip(original.tolist(), sub.train.labels.tolist(), strict=True)) == {(2, 0), (0, 1)}


def test_select_unknown_class_lists_the_real_ones():
    with pytest.raises(DataError, match=r"\['horse'\].*cat, dog, frog"):
        select_classes(_splits(), ["horse"])


def test_ensure_validation_carves_a_split_once():
    s = ensure_validation(_splits(), 0.2, seed=0)
    assert len(s.train) == 24 and len(s.val) == 6
    assert ensure_validation(s, 0.5, seed=0) is s
