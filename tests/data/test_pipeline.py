import numpy as np
import pytest
import torch

from cnnvit.config import DataConfig
from cnnvit.data.pipeline import SealedSplitError, load_splits, prepare_data
from cnnvit.data.types import DataError

SPEC = "synthetic:train_size=300,val_size=300,num_classes=3,image_size=8"
# No test split of its own: the test split is a hold-out of the training files too.
NO_TEST = "synthetic:train_size=600,val_size=0,num_classes=3,image_size=8"


def rows(source) -> set[bytes]:
    return {img.tobytes() for img in source.images}


def test_test_subset_is_stratified_and_shared_by_all_seeds():
    a = load_splits(DataConfig(spec=SPEC, max_test_images=60, split_seed=0))
    b = load_splits(DataConfig(spec=SPEC, max_test_images=60, split_seed=5, train_fraction=0.5))
    assert len(a.val) == 60
    assert np.bincount(a.val.labels).tolist() == [20, 20, 20]
    assert np.array_equal(a.val.images, b.val.images)  # the same images whatever the seed
    # 10 % of the pool (30 images, 10 per class) is the selection split; fractions take the rest.
    assert len(a.selection) == 30 and np.bincount(a.selection.labels).tolist() == [10, 10, 10]
    assert len(a.train) == 270 and len(b.train) == 135


def test_old_key_names_still_load():
    cfg = DataConfig.model_validate({"spec": SPEC, "max_val_images": 60, "val_fraction": 0.2})
    assert cfg.max_test_images == 60 and cfg.test_fraction == 0.2


@pytest.mark.parametrize("spec", [SPEC, NO_TEST])
def test_three_splits_are_disjoint_and_selection_is_shared_by_every_cell(spec):
    grid = [(f, seed) for f in (0.1, 0.5, 1.0) for seed in (0, 1, 2)]
    cells = [
        load_splits(DataConfig(spec=spec, train_fraction=f, split_seed=seed, selection_size=45))
        for f, seed in grid
    ]
    first = cells[0]
    assert len(first.selection) == 45
    for cell in cells:
        assert rows(cell.selection) == rows(first.selection)  # one selection split per study
        assert rows(cell.val) == rows(first.val)  # one test split per study
        assert not rows(cell.selection) & rows(cell.val)
        assert not rows(cell.train) & rows(cell.val)
        assert not rows(cell.train) & rows(cell.selection)
    partial = [frozenset(rows(c.train)) for c, (f, _) in zip(cells, grid, strict=True) if f < 1]
    assert len(set(partial)) == len(partial) == 6  # each seed draws its own subsets


def test_a_selection_split_that_leaves_nothing_is_refused():
    with pytest.raises(DataError, match=r"data\.selection_size=300 leaves no training images"):
        load_splits(DataConfig(spec=SPEC, selection_size=300))


def test_fractions_of_one_seed_are_nested_through_the_pipeline():
    small = load_splits(DataConfig(spec=SPEC, train_fraction=0.25, split_seed=3)).train
    large = load_splits(DataConfig(spec=SPEC, train_fraction=0.5, split_seed=3)).train
    assert rows(small) < rows(large)


def test_the_test_split_cannot_be_read_before_it_is_opened():
    data = prepare_data(
        DataConfig(spec=SPEC),
        device=torch.device("cpu"),
        batch_size=32,
        eval_batch_size=64,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    with pytest.raises(SealedSplitError, match="before the final evaluation"):
        next(iter(data.test))
    assert data.test.num_images == 300  # its size may be known; its images may not be read
    labels = torch.cat([y for _, y in data.open_test()])
    assert len(labels) == 300
