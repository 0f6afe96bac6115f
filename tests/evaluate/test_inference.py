"""Batched multi-model evaluation against a plain reference loop built from timm's own
``resolve_data_config`` / ``create_transform``, plus skipped files and the timing seam."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import timm.data
import torch
from PIL import Image

from cnnvit.config import InferenceConfig
from cnnvit.data.readers import read_dataset
from cnnvit.data.types import ArraySource, DataError
from cnnvit.evaluate.inference import EvalModel, StageTimer, evaluate_models, evaluation_split
from cnnvit.runtime import Clock

CLASSES = ["a", "b", "c"]

ONE_PROCESS = InferenceConfig(num_workers=0)  # decoding in this process


def _photo_folder(root: Path, per_class: int = 4) -> list[Path]:
    """JPEGs of assorted, non-square sizes in class folders; returns them in reader order."""
    rng = np.random.default_rng(0)
    paths = []
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            h, w = 180 + 20 * i, 260 - 15 * c
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            path = root / name / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, quality=92)
            paths.append(path)
    return paths


def _models() -> list[EvalModel]:
    torch.manual_seed(0)
    resnet = timm.create_model("resnet18", num_classes=3)  # bicubic, crop_pct 0.95
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3)  # bicubic, crop_pct 0.9
    return [EvalModel.of("resnet18", resnet), EvalModel.of("vit_tiny", vit)]


def _reference(model: torch.nn.Module, paths: list[Path]) -> np.ndarray:
    """Seed 002's loop: one image at a time through timm's eval transform. (N, C) probs."""
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    model.eval()
    with torch.inference_mode():
        rows = [
            torch.softmax(model(transform(Image.open(p).convert("RGB"))[None]), 1)[0] for p in paths
        ]
    return torch.stack(rows).numpy()


def test_same_predictions_as_timms_transform_one_image_at_a_time(tmp_path: Path) -> None:
    paths = _photo_folder(tmp_path / "photos")
    splits = read_dataset(f"folder:{tmp_path / 'photos'}")
    models = _models()
    summary = evaluate_models(
        models, evaluation_split(splits), splits.classes, tmp_path / "out",
        InferenceConfig(batch_size=5, num_workers=2), progress=False,
    )  # fmt: skip
    assert [Path(p) for p in splits.train.paths] == paths
    labels = np.repeat(np.arange(3), 4)
    for m, result in zip(models, summary["models"], strict=True):
        expected = _reference(m.model, paths)
        preds = pd.read_parquet(tmp_path / "out" / m.label / "predictions.parquet")
        got = np.stack(preds["top5_probs"].to_numpy())[:, 0]
        np.testing.assert_allclose(got, expected.max(1), atol=1e-4)
        assert (preds["prediction"].to_numpy() == expected.argmax(1)).all()
        assert result["top1"] == pytest.approx((expected.argmax(1) == labels).mean())
        assert result["num_images"] == 12
        assert set(result["ms_per_image"]) == {"preprocess", "forward", "postprocess"}
        assert all(v > 0 for v in result["ms_per_image"].values())
    written = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert written["num_images"] == 12 and written["batch_size"] == 5
    assert written["decode_ms_per_image"] > 0 and written["images_per_second"] > 0
    assert written["models"][0]["preprocess"]["resize"] == 235  # floor(224 / 0.95)


def test_a_corrupt_file_is_skipped_and_named(tmp_path: Path) -> None:
    _photo_folder(tmp_path / "photos", per_class=2)
    (tmp_path / "photos" / "b" / "9_broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    splits = read_dataset(f"folder:{tmp_path / 'photos'}")
    torch.manual_seed(0)
    model = EvalModel.of("r", timm.create_model("resnet18", num_classes=3))
    summary = evaluate_models(
        [model], splits.train, splits.classes, tmp_path / "out", ONE_PROCESS, progress=False
    )
    assert summary["num_images"] == 6
    assert [Path(s["path"]).name for s in summary["skipped_files"]] == ["9_broken.jpg"]
    broken = [Path(p).name for p in splits.train.paths].index("9_broken.jpg")
    index = pd.read_parquet(tmp_path / "out" / "r" / "predictions.parquet")["index"]
    assert broken not in set(index) and len(index) == 6  # rows name the images they belong to


def test_in_memory_arrays_and_class_count_check(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    source = ArraySource(rng.integers(0, 256, (6, 32, 32, 1), dtype=np.uint8), np.arange(6) % 3)
    torch.manual_seed(0)
    model = EvalModel.of("r", timm.create_model("resnet18", num_classes=3))
    summary = evaluate_models([model], source, CLASSES, tmp_path, ONE_PROCESS, progress=False)
    assert summary["num_images"] == 6
    wrong = EvalModel.of("ten", timm.create_model("resnet18", num_classes=10))
    with pytest.raises(DataError, match="ten has 10 classes but the dataset has 3"):
        evaluate_models([wrong], source, CLASSES, tmp_path, ONE_PROCESS, progress=False)


def test_stage_timer_reads_the_clock_only_after_synchronising() -> None:
    events: list[str] = []
    pending = {"work": False}

    def synchronize() -> None:  # a device whose work completes only when synchronised
        pending["work"] = False
        events.append("sync")

    def clock() -> float:
        assert not pending["work"], "clock read while the device still had queued work"
        events.append("clock")
        return float(len(events))

    timer = StageTimer(Clock(synchronize, clock))
    with timer.stage("forward"):
        pending["work"] = True  # enqueue asynchronous work
        events.append("enqueue")
    assert events == ["sync", "clock", "enqueue", "sync", "clock"]
    assert timer.seconds["forward"] == 5.0 - 2.0
