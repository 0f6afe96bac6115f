import numpy as np

from cnnvit.config import DataConfig
from cnnvit.data.pipeline import load_splits

SPEC = "synthetic:train_size=300,val_size=300,num_classes=3,image_size=8"


def test_validation_subset_is_stratified_and_shared_by_all_seeds():
    a = load_splits(DataConfig(spec=SPEC, max_val_images=60, split_seed=0))
    b = load_splits(DataConfig(spec=SPEC, max_val_images=60, split_seed=5, train_fraction=0.5))
    assert len(a.val) == 60
    assert np.bincount(a.val.labels).tolist() == [20, 20, 20]
    assert np.array_equal(a.val.images, b.val.images)  # the same images whatever the seed
    assert len(b.train) == 150 and len(a.train) == 300


def test_fractions_of_one_seed_are_nested_through_the_pipeline():
    small = load_splits(DataConfig(spec=SPEC, train_fraction=0.25, split_seed=3)).train
    large = load_splits(DataConfig(spec=SPEC, train_fraction=0.5, split_seed=3)).train
    as_rows = lambda s: {img.tobytes() for img in s.images}  # noqa: E731
    assert as_rows(small) < as_rows(large)
