"""Real data: a short resnet_mini run on a tenth of Fashion-MNIST (skipped without the files)."""

import json
from pathlib import Path

import pytest

from cnnvit.config import load_run_config
from cnnvit.train.run import train

pytestmark = pytest.mark.slow


def test_resnet_mini_learns_fashion_mnist(tmp_path: Path, has_fashion_mnist: bool):
    if not has_fashion_mnist:
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    cfg = load_run_config(
        None,
        [
            "data.spec=fashion-mnist",
            "data.train_fraction=0.1",
            "model.name=resnet_mini",
            f"output.dir={tmp_path / 'run'}",
            "train.epochs=2",
            "optim.warmup_epochs=0.1",
            "data.augment.crop_padding=0",
            "train.batch_size=64",
            "train.progress=false",
        ],
    )
    results = train(cfg)
    # 6,000 images (a tenth of each class) are the selection split; a tenth of the other 54,000
    assert results["num_selection_images"] == 6000
    assert results["num_train_images"] == 5400
    assert results["num_test_images"] == 10000  # the official test split
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["classes"][9] == "Ankle boot"
    assert [c["support"] for c in metrics["per_class"]] == [1000] * 10
    assert metrics["top1"] > 0.70  # chance is 0.10
