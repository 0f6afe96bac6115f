"""Fabricated study folders: the files `cnnvit compare` writes, with chosen numbers, no training."""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from cnnvit.folders import StudyFolder
from cnnvit.metrics import predictions_frame
from cnnvit.study.disagreements import save_disagreement_images

FULL_TRAIN = 48_000  # images at fraction 1.0
CLASSES = ["T-shirt/top", "Trouser", "Bag"]
SUPPORT = 100  # validation images per class
# Generated validation images (300, three classes), so the report can draw the images where two
# models disagree without a dataset on disk.
DATA_SPEC = "synthetic:num_classes=3,train_size=30,val_size=300,image_size=16"

AccuracyFn = Callable[[str, float, int], float]


def default_accuracy(model: str, fraction: float, seed: int) -> float:
    """A smooth, seed-dependent accuracy: the second model gains more from data."""
    slope = 0.02 if model.startswith("resnet") else 0.035
    base = 0.80 if model.startswith("resnet") else 0.74
    return base + slope * math.log2(fraction * 64) + 0.004 * (seed - 1)


def cell_id(label: str, fraction: float, seed: int, blocks: int | None = None) -> str:
    depth = "" if blocks is None else f"-k{blocks}"
    return f"{label}-f{fraction:g}{depth}-s{seed}"


def make_study(
    root: Path,
    *,
    models: list[tuple[str, str]] | None = None,
    fractions: list[float] | None = None,
    seeds: list[int] | None = None,
    trainable_blocks: list[int | None] | None = None,
    accuracy: AccuracyFn = default_accuracy,
    statuses: dict[str, str] | None = None,
    classes: list[str] | None = None,
    epochs: int = 3,
    name: str = "test-study",
    command: str = "cnnvit compare --out study",
) -> Path:
    """Write study.yaml, study.json and one run folder per cell under ``root``; returns root.

    ``models`` are (label, registry name) pairs. ``statuses`` maps a cell id to ``failed``,
    ``diverged``, ``running`` or ``missing`` (no folder); every other cell completed with
    ``accuracy(label, fraction, seed)`` as its final top-1.
    """
    models = models or [("resnet_mini", "resnet_mini"), ("vit_mini", "vit_mini")]
    fractions = fractions or [0.02, 0.07, 0.25]
    seeds = seeds if seeds is not None else [0, 1, 2]
    blocks_axis = trainable_blocks or [None]
    statuses = statuses or {}
    classes = classes or CLASSES
    root.mkdir(parents=True, exist_ok=True)
    study = {
        "name": name,
        "data": {"spec": "fashion-mnist", "classes": None},
        "models": [{"name": n, "label": None if n == lab else lab} for lab, n in models],
        "fractions": fractions,
        "seeds": seeds,
        "recipe": {"optim": {"name": "adamw", "lr": 0.002}, "train": {"epochs": epochs}},
        "grid": {"trainable_blocks": blocks_axis},
    }
    (root / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    cells = []
    for fraction in fractions:
        for seed in seeds:
            for blocks in blocks_axis:
                for label, model_name in models:
                    cid = cell_id(label, fraction, seed, blocks)
                    cells.append(
                        {
                            "id": cid,
                            "model": label,
                            "model_name": model_name,
                            "fraction": fraction,
                            "seed": seed,
                            "trainable_blocks": blocks,
                            "run_dir": f"runs/{cid}",
                        }
                    )
                    status = statuses.get(cid, "completed")
                    if status == "missing":
                        continue
                    acc = accuracy(label, fraction, seed)
                    _write_run(
                        root / "runs" / cid,
                        model_name,
                        fraction,
                        seed,
                        blocks,
                        status,
                        acc,
                        classes,
                        epochs,
                    )
    meta = {
        "name": name,
        "command": command,
        "started_at": "2026-01-02T03:04:05+0000",
        "finished_at": "2026-01-02T04:05:06+0000",
        "cells": cells,
    }
    (root / "study.json").write_text(json.dumps(meta, indent=2))
    save_disagreement_images(StudyFolder(root))  # as `cnnvit compare` does after training
    return root


def _write_run(
    run_dir: Path,
    model: str,
    fraction: float,
    seed: int,
    blocks: int | None,
    status: str,
    acc: float,
    classes: list[str],
    epochs: int,
) -> None:
    run_dir.mkdir(parents=True)
    n_train = round(FULL_TRAIN * fraction)
    params = 300_000 if model.startswith("resnet") else 320_000
    epoch_s = n_train / (2000.0 if model.startswith("resnet") else 1500.0)
    results: dict[str, Any] = {
        "status": status,
        "model": model,
        "family": "vit" if model.startswith("vit") else "cnn",  # as training records it
        "data": "fashion-mnist",
        "train_fraction": fraction,
        "trainable_blocks": blocks,
        "seed": seed,
    }
    if status == "failed":
        results["error"] = "RuntimeError: CUDA out of memory <b>tried</b>"
        (run_dir / "results.json").write_text(json.dumps(results))
        return
    env = {
        "python": "3.11.7",
        "torch": "2.5.0",
        "timm": "1.0.9",
        "cnnvit": "0.1.0",
        "device": "cpu",
        "device_name": "x86_64 CPU (2 threads)",
        "dtype": "float32",
        "seed": seed,
    }
    (run_dir / "environment.json").write_text(json.dumps(env))
    config = {"data": {"spec": DATA_SPEC}, "model": {"name": model}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    done = epochs if status == "completed" else max(1, epochs - 1)
    lines = [
        "epoch,train_loss,train_acc,val_loss,val_acc,lr,epoch_seconds,images_per_second,"
        "peak_memory_mb"
    ]
    for e in range(1, done + 1):
        val = acc - 0.1 * (epochs - e) / epochs
        loss = 1.5 / e + 0.01 * seed
        if status == "diverged" and e == done:
            loss = float("nan")
        lines.append(
            f"{e},{loss},{val - 0.02},{loss},{val},0.001,{epoch_s},{n_train / epoch_s},300"
        )
    (run_dir / "epochs.csv").write_text("\n".join(lines) + "\n")
    results.update(
        num_classes=len(classes),
        num_train_images=n_train,
        num_val_images=300,
        params_total=params,
        params_trainable=params if blocks is None else params // 4,
        epochs_planned=epochs,
        epochs_completed=done,
        mean_epoch_seconds=epoch_s,
        train_seconds=epoch_s * done,
        peak_memory_mb=200.0 + (100.0 if model.startswith("vit") else 0.0) + seed,
    )
    if status == "diverged":
        results["error"] = "loss is nan at epoch 2"
        (run_dir / "results.json").write_text(json.dumps(results))
        return
    f1 = acc - 0.01
    results.update(
        best_val_acc=acc + 0.002,
        best_epoch=epochs,
        final_val_acc=acc,
        final_top1=acc,
        final_top5=min(1.0, acc + 0.1),
        macro_f1=f1,
        skipped_files=0,
        finished_at="2026-01-02T03:30:00+0000",
    )
    (run_dir / "results.json").write_text(json.dumps(results))
    (run_dir / "metrics.json").write_text(json.dumps(_metrics(acc, f1, classes)))
    _predictions(acc, len(classes), run_dir.name).to_parquet(run_dir / "predictions.parquet")


def _predictions(acc: float, k: int, cell: str):
    """predictions.parquet matching ``_metrics``: per class, ``round(acc * SUPPORT)`` images
    right (which ones: seeded by the cell) and the rest predicted as the next class."""
    rng = np.random.default_rng(zlib.crc32(cell.encode()))
    labels = np.arange(SUPPORT * k) % k  # (N,)
    preds = labels.copy()
    right = round(acc * SUPPORT)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        wrong = rng.permutation(members)[right:]
        preds[wrong] = (c + 1) % k
    confidence = rng.uniform(0.4, 0.99, len(labels))  # (N,) above the others' share
    probs = np.repeat(((1 - confidence) / (k - 1))[:, None], k, axis=1)  # (N, k)
    probs[np.arange(len(labels)), preds] = confidence
    return predictions_frame(labels, probs)


def _metrics(acc: float, f1: float, classes: list[str]) -> dict[str, Any]:
    support = SUPPORT
    k = len(classes)
    right = round(acc * support)
    matrix = []
    for i in range(k):
        row = [0] * k
        row[i] = right
        row[(i + 1) % k] += support - right
        matrix.append(row)
    return {
        "num_images": support * k,
        "num_classes": k,
        "top1": acc,
        "top5": min(1.0, acc + 0.1),
        "macro": {"precision": acc + 0.005, "recall": acc, "f1": f1},
        "weighted": {"precision": acc + 0.005, "recall": acc, "f1": f1},
        "per_class": [
            {"class": c, "accuracy": right / support, "support": support} for c in classes
        ],
        "confusion_matrix": matrix,
        "classes": classes,
    }


@pytest.fixture(scope="session")
def study_factory() -> Callable[..., Path]:
    """``make_study`` as a fixture, so test modules need no import path tricks."""
    return make_study
