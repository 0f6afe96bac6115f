"""Fabricated study folders: the files `cnnvit compare` writes, with chosen numbers, no training.

Run folders are written as cnnvit writes them now (three splits: results.json names each
number's split, epochs.csv logs each selection score with its optimiser step, metrics.json has
the calibration bins), or with ``legacy=True`` as cnnvit wrote them before the selection split
(``best_val_acc``, ``final_top1``, ``num_val_images``; the best epoch chosen on the test split).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cnnvit.folders import StudyFolder
from cnnvit.metrics import expected_calibration_error, predictions_frame, reliability_bins
from cnnvit.stats.convergence import still_improving as convergence_of
from cnnvit.study.disagreements import save_disagreement_images

FULL_TRAIN = 48_000  # images at fraction 1.0
SELECTION_IMAGES = 2_000  # held out of the training pool, scored during training
BATCH = 64  # images per optimiser step
STEPS = 1_500  # a `steps` budget's optimiser steps per cell
CLASSES = ["T-shirt/top", "Trouser", "Bag"]
SUPPORT = 100  # test images per class
# Generated test images (300, three classes), so the report can draw the images where two
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


@dataclass(frozen=True)
class RunSpec:
    """One run folder to fabricate."""

    model: str  # registry name
    fraction: float
    seed: int
    blocks: int | None
    status: str
    acc: float  # test top-1
    classes: list[str]
    scores: int  # rows of epochs.csv when the run completes
    budget: str  # epochs | steps | early_stopping
    improving: bool  # the selection score was still rising at the end
    legacy: bool  # written before the selection split

    @property
    def n_train(self) -> int:
        return round(FULL_TRAIN * self.fraction)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / BATCH)

    @property
    def is_vit(self) -> bool:
        return self.model.startswith("vit")


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
    epochs: int = 5,
    budget: str = "steps",
    still_improving: Collection[str] = (),
    legacy: bool | Collection[str] = False,
    name: str = "test-study",
    command: str = "cnnvit compare --out study",
    disagreement_images: bool = True,
) -> Path:
    """Write study.yaml, study.json and one run folder per cell under ``root``; returns root.

    ``models`` are (label, registry name) pairs. ``statuses`` maps a cell id to ``failed``,
    ``diverged``, ``running`` or ``missing`` (no folder); every other cell completed with
    ``accuracy(label, fraction, seed)`` as its test top-1. ``epochs`` is the number of
    selection scores a completed run logs; ``budget`` the budget's kind; the selection score of
    the cells in ``still_improving`` climbs to the end, the others' levels off (results.json's
    ``convergence`` is what :mod:`cnnvit.stats.convergence` makes of the log).
    ``legacy`` writes every run folder (True) or those of the cells it lists as cnnvit did
    before the three-way split. ``disagreement_images`` saves the images where two models
    disagree, as ``cnnvit compare`` does after training (off: the report says it has none).
    """
    models = models or [("resnet_mini", "resnet_mini"), ("vit_mini", "vit_mini")]
    fractions = fractions or [0.02, 0.07, 0.25]
    seeds = seeds if seeds is not None else [0, 1, 2]
    blocks_axis = trainable_blocks or [None]
    statuses = statuses or {}
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
                    spec = RunSpec(
                        model=model_name,
                        fraction=fraction,
                        seed=seed,
                        blocks=blocks,
                        status=status,
                        acc=accuracy(label, fraction, seed),
                        classes=classes or CLASSES,
                        scores=epochs,
                        budget=budget,
                        improving=cid in still_improving,
                        legacy=legacy is True or (legacy is not False and cid in legacy),
                    )
                    write_run(root / "runs" / cid, spec)
    meta = {
        "name": name,
        "command": command,
        "started_at": "2026-01-02T03:04:05+0000",
        "finished_at": "2026-01-02T04:05:06+0000",
        "cells": cells,
    }
    (root / "study.json").write_text(json.dumps(meta, indent=2))
    if disagreement_images:
        save_disagreement_images(StudyFolder(root))  # as `cnnvit compare` does after training
    return root


# --- one run folder ----------------------------------------------------------------------------


def write_run(run_dir: Path, spec: RunSpec) -> None:
    run_dir.mkdir(parents=True)
    results: dict[str, Any] = {
        "status": spec.status,
        "model": spec.model,
        "family": "vit" if spec.is_vit else "cnn",  # as training records it
        "data": "fashion-mnist",
        "train_fraction": spec.fraction,
        "trainable_blocks": spec.blocks,
        "seed": spec.seed,
    }
    if spec.status == "failed":
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
        "seed": spec.seed,
    }
    (run_dir / "environment.json").write_text(json.dumps(env))
    config = {"data": {"spec": DATA_SPEC}, "model": {"name": spec.model}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    rows = _log_rows(spec)
    _write_log(run_dir, spec, rows)
    results.update(_run_numbers(spec, rows))
    if spec.status == "diverged":
        results["error"] = "loss is nan at epoch 2"
        (run_dir / "results.json").write_text(json.dumps(results))
        return
    labels, probs = _probabilities(spec, run_dir.name)
    f1 = spec.acc - 0.01
    results.update(_final_numbers(spec, rows, f1, expected_calibration_error(probs, labels)))
    (run_dir / "results.json").write_text(json.dumps(results))
    metrics = _metrics(spec.acc, f1, spec.classes)
    if not spec.legacy:
        metrics["ece"] = expected_calibration_error(probs, labels)
        metrics["reliability"] = reliability_bins(probs, labels)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    predictions_frame(labels, probs).to_parquet(run_dir / "predictions.parquet")


def _log_rows(spec: RunSpec) -> list[dict[str, float]]:
    """The selection scores a run logs: (epoch, step, accuracy, loss), one per evaluation."""
    spe = spec.steps_per_epoch
    if spec.budget == "steps":
        points = [round(k * STEPS / spec.scores) for k in range(1, spec.scores + 1)]
    else:  # epochs, early_stopping: after every epoch
        points = [spe * e for e in range(1, spec.scores + 1)]
    done = len(points) if spec.status == "completed" else max(1, len(points) - 1)
    rows = []
    for k, step in enumerate(points[:done], start=1):
        left = (spec.scores - k) / spec.scores
        # Still improving: a straight climb to the end; otherwise level over the last scores.
        gap = 0.1 * left if spec.improving else 0.1 * left**4
        loss = 1.5 / k + 0.01 * spec.seed
        if spec.status == "diverged" and k == done:
            loss = float("nan")
        rows.append(
            {"epoch": math.ceil(step / spe), "step": step, "acc": spec.acc - gap, "loss": loss}
        )
    return rows


def _write_log(run_dir: Path, spec: RunSpec, rows: list[dict[str, float]]) -> None:
    seconds = _seconds_per_step(spec)
    memory = 300
    if spec.legacy:
        lines = [
            "epoch,train_loss,train_acc,val_loss,val_acc,lr,epoch_seconds,images_per_second,"
            "peak_memory_mb"
        ]
        epoch_s = seconds * spec.steps_per_epoch
        for r in rows:
            lines.append(
                f"{r['epoch']},{r['loss']},{r['acc'] - 0.02},{r['loss']},{r['acc']},0.001,"
                f"{epoch_s},{spec.n_train / epoch_s},{memory}"
            )
    else:
        lines = [
            "epoch,step,train_loss,train_acc,selection_loss,selection_acc,lr,seconds,"
            "images_per_second,peak_memory_mb"
        ]
        previous = 0
        for r in rows:
            took = seconds * (r["step"] - previous)
            previous = r["step"]
            lines.append(
                f"{r['epoch']},{r['step']},{r['loss']},{r['acc'] - 0.02},{r['loss']},{r['acc']},"
                f"0.001,{took},{BATCH / seconds},{memory}"
            )
    (run_dir / "epochs.csv").write_text("\n".join(lines) + "\n")


def _seconds_per_step(spec: RunSpec) -> float:
    return BATCH / (1500.0 if spec.is_vit else 2000.0)


def _run_numbers(spec: RunSpec, rows: list[dict[str, float]]) -> dict[str, Any]:
    """What results.json says once a run has trained: sizes, parameters, budget, timings."""
    params = 320_000 if spec.is_vit else 300_000
    steps = int(rows[-1]["step"])
    epochs = steps / spec.steps_per_epoch
    seconds = _seconds_per_step(spec) * steps
    out: dict[str, Any] = {
        "num_classes": len(spec.classes),
        "num_train_images": spec.n_train,
        "params_total": params,
        "params_trainable": params if spec.blocks is None else params // 4,
        "mean_epoch_seconds": seconds / epochs,
        "train_seconds": seconds,
        "peak_memory_mb": 200.0 + (100.0 if spec.is_vit else 0.0) + spec.seed,
    }
    if spec.legacy:
        out.update(
            num_val_images=SUPPORT * len(spec.classes),
            epochs_planned=spec.scores,
            epochs_completed=len(rows),
        )
        return out
    planned = STEPS if spec.budget == "steps" else spec.scores * spec.steps_per_epoch
    if spec.budget == "early_stopping":
        planned *= 2  # the cap; the run stops early after its last score
    out.update(
        num_selection_images=SELECTION_IMAGES,
        num_test_images=SUPPORT * len(spec.classes),
        splits={
            "train": "the cell's fraction of the training pool",
            "selection": "held out of the training pool; scored during training",
            "test": "the dataset's test split; read once, for the final numbers",
        },
        budget={
            "kind": spec.budget,
            "steps_per_epoch": spec.steps_per_epoch,
            "steps_planned": planned,
            "evaluations_planned": spec.scores * (2 if spec.budget == "early_stopping" else 1),
            "patience": 2 if spec.budget == "early_stopping" else None,
        },
        epochs_planned=math.ceil(planned / spec.steps_per_epoch),
        steps_completed=steps,
        epochs_completed=round(epochs, 3),
        evaluated_weights="best" if spec.budget == "early_stopping" else "model",
    )
    return out


def _final_numbers(
    spec: RunSpec, rows: list[dict[str, float]], f1: float, ece: float
) -> dict[str, Any]:
    """The numbers of a completed run: the best selection score and the test evaluation."""
    best = rows[-1]
    if spec.legacy:
        return {
            "best_val_acc": spec.acc + 0.002,
            "best_epoch": best["epoch"],
            "final_val_acc": spec.acc,
            "final_top1": spec.acc,
            "final_top5": min(1.0, spec.acc + 0.1),
            "macro_f1": f1,
            "skipped_files": 0,
            "finished_at": "2026-01-02T03:30:00+0000",
        }
    convergence = convergence_of([r["step"] for r in rows], [r["acc"] for r in rows])
    return {
        "best_selection_acc": best["acc"],
        "best_step": best["step"],
        "best_epoch": best["epoch"],
        "final_selection_acc": best["acc"],
        "test_top1": spec.acc,
        "test_top5": min(1.0, spec.acc + 0.1),
        "test_macro_f1": f1,
        "test_ece": ece,
        "stopped_early": spec.budget == "early_stopping",
        "convergence": asdict(convergence),
        "skipped_files": 0,
        "finished_at": "2026-01-02T03:30:00+0000",
    }


# --- the test evaluation -----------------------------------------------------------------------


def _probabilities(spec: RunSpec, cell: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) and probabilities (N, k) matching ``_metrics``: per class,
    ``round(acc * SUPPORT)`` images right (which ones: seeded by the cell) and the rest
    predicted as the next class. The ViTs are more confident than the CNNs."""
    k = len(spec.classes)
    rng = np.random.default_rng(zlib.crc32(cell.encode()))
    labels = np.arange(SUPPORT * k) % k  # (N,)
    preds = labels.copy()
    right = round(spec.acc * SUPPORT)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        wrong = rng.permutation(members)[right:]
        preds[wrong] = (c + 1) % k
    low = 0.6 if spec.is_vit else 0.4
    confidence = rng.uniform(low, 0.99, len(labels))  # (N,) above the others' share
    probs = np.repeat(((1 - confidence) / (k - 1))[:, None], k, axis=1)  # (N, k)
    probs[np.arange(len(labels)), preds] = confidence
    return labels, probs


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


# --- studies of many cells (the report's scaling test and benchmarks/study_scale.py) -----------


def grid_for(cells: int) -> tuple[list[float], list[int]]:
    """Training fractions and seeds of a two-model study of about ``cells`` cells
    (2 × fractions × seeds), both axes growing: 100 → 5 × 10, 1,000 → 10 × 50,
    10,000 → 20 × 250."""
    n_fractions = max(2, round(5 * (cells / 100) ** 0.3))
    n_seeds = max(1, round(cells / (2 * n_fractions)))
    fractions = [float(f"{f:.3g}") for f in np.geomspace(0.01, 0.5, n_fractions)]
    return fractions, list(range(n_seeds))


def scale_accuracy(model: str, fraction: float, seed: int) -> float:
    """A saturating power law in the training images, as learning curves tend to be (test error
    ``c + a·(n/1000)^(−b)``: the ViT starts worse and gains more from data), with a bounded seed
    effect, so that any number of seeds keeps every accuracy below 1."""
    floor, amplitude, exponent = (
        (0.08, 0.10, 0.4) if model.startswith("resnet") else (0.05, 0.16, 0.55)
    )
    error = floor + amplitude * (fraction * FULL_TRAIN / 1000) ** -exponent
    return 1 - error + 0.004 * (seed % 5 - 2)


def make_scaled_study(root: Path, cells: int, **kwargs: Any) -> Path:
    """A two-model study of about ``cells`` fabricated run folders (:func:`grid_for`), every
    file of a completed run written as in :func:`make_study`; returns root."""
    fractions, seeds = grid_for(cells)
    kwargs.setdefault("accuracy", scale_accuracy)
    return make_study(root, fractions=fractions, seeds=seeds, name=f"scale-{cells}", **kwargs)
