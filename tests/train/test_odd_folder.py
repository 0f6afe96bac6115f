"""A training run over an image folder with broken and odd files completes and counts them."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnvit.config import load_run_config
from cnnvit.train.run import train

BAD = {"truncated.jpg", "empty.jpg", "notes.jpg"}


def _write_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for label, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(rng.normal(colour, 20, (20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    odd = root / "red"
    Image.new("L", (20, 20), 90).save(odd / "gray.png")
    Image.new("RGBA", (20, 20), (220, 30, 30, 255)).save(odd / "rgba.png")
    Image.new("CMYK", (20, 20), (0, 200, 200, 20)).save(odd / "cmyk.jpg")
    Image.new("P", (20, 20), 3).save(odd / "palette.png")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(odd / "deep16.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(odd / "full.jpg")
    data = (odd / "full.jpg").read_bytes()
    (odd / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (odd / "empty.jpg").write_bytes(b"")
    (odd / "notes.jpg").write_text("this is not an image")
    hidden = root / ".thumbnails"
    hidden.mkdir()
    Image.new("RGB", (8, 8)).save(hidden / "t.png")


@pytest.mark.parametrize("in_memory", ["always", "never"])
def test_run_completes_and_names_bad_files(tmp_path: Path, in_memory: str):
    data = tmp_path / "photos"
    _write_folder(data)
    out = tmp_path / f"run-{in_memory}"
    cfg = load_run_config(
        None,
        [
            f"data.spec=folder:{data}",
            "data.image_size=16",
            f"data.in_memory={in_memory}",
            "data.num_workers=0",
            "data.test_fraction=0.25",
            "model.name=resnet_mini",
            f"output.dir={out}",
            "train.epochs=1",
            "train.batch_size=8",
            "train.progress=false",
        ],
    )
    results = train(cfg)
    assert results["status"] == "completed"
    assert results["num_classes"] == 2  # .thumbnails is not a class
    assert results["skipped_files"] == len(BAD)
    with (out / "skipped.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {Path(r["path"]).name for r in rows} == BAD
    assert all(r["reason"] for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    # every readable image is in exactly one split: 24 plain + 6 odd readable ones
    expected_val = metrics["num_images"]
    assert results["num_test_images"] >= expected_val
    held = results["num_train_images"] + results["num_selection_images"]
    assert held + results["num_test_images"] == 24 + 6 + (len(BAD) if in_memory == "never" else 0)
