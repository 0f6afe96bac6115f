"""Agreement of two run folders: both validated on the same images, their predictions compared
(:mod:`cnnvit.evaluate.agreement` does the statistics), and the images where they disagree read
back from the run's own data."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cnnvit.config import DataConfig, RunConfig, read_run_config
from cnnvit.data.decode import load_uint8
from cnnvit.data.pipeline import image_size, rebuild_splits
from cnnvit.data.readers import read_dataset
from cnnvit.data.types import ArraySource, DataError
from cnnvit.evaluate.agreement import (
    DISAGREEMENTS_PNG,
    Agreement,
    AgreementError,
    compare_predictions,
    disagreement_figure,
    some,
    write_agreement,
)
from cnnvit.folders import RunFolder, RunFolderError
from cnnvit.plotting import save_png

__all__ = ["agree_runs", "validation_images", "validation_mismatch"]

# The data settings that decide which images the test split holds (image_size, channels,
# normalisation and the training fraction change how they are seen or trained on, not which).
_SAME_IMAGES_KEYS = ("spec", "root", "classes", "max_test_images")
# These matter only where the test split is carved out of the training files.
_HOLDOUT_KEYS = ("test_fraction", "holdout_seed")


def agree_runs(
    run_a: Path | str,
    run_b: Path | str,
    out_dir: Path | str | None = None,
    names: tuple[str, str] | None = None,
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
    figure: bool = True,
    max_images: int = 16,
) -> Agreement:
    """Compare two evaluated run folders (``predictions.parquet``, ``config.yaml``).

    Checks first that both validated on the same images (same data spec, root, classes and
    test subset; same holdout split where the split is carved from the training files).
    With ``out_dir``, writes agreement.json, per_class_agreement.csv and (``figure``) the grid of
    disagreements as disagreements.png; a grid whose images cannot be read is left out with a
    warning, the statistics are written regardless. ``names`` default to the models' names.
    """
    run_a, run_b = Path(run_a), Path(run_b)
    cfg_a, cfg_b = _run_config(run_a), _run_config(run_b)
    problem = validation_mismatch(cfg_a.data, cfg_b.data)
    if problem:
        raise AgreementError(f"{run_a} and {run_b} were not tested on the same images: {problem}")
    classes = _run_classes(run_a, run_b)
    names = names or _default_names(run_a, run_b, cfg_a.model.name, cfg_b.model.name)
    agreement = compare_predictions(
        _read_predictions(run_a),
        _read_predictions(run_b),
        classes,
        names=names,
        n_boot=n_boot,
        seed=seed,
        alpha=alpha,
    )
    if out_dir is not None:
        write_agreement(agreement, Path(out_dir))
        if figure:
            _write_figure(agreement, run_a, Path(out_dir), max_images)
    return agreement


def _write_figure(agreement: Agreement, run_dir: Path, out_dir: Path, max_images: int) -> None:
    path = out_dir / DISAGREEMENTS_PNG
    shown = agreement.shown_disagreements(max_images)
    if shown.empty:
        path.unlink(missing_ok=True)  # no disagreement: no grid, and no stale one either
        return
    indices = shown["index"].to_numpy()
    try:
        images = validation_images(run_dir, indices)
    except (OSError, ValueError) as err:  # DataError is a ValueError
        warnings.warn(f"no grid of disagreements: {err}", stacklevel=3)
        return
    save_png(disagreement_figure(images, agreement, max_images=max_images, indices=indices), path)


def validation_mismatch(a: DataConfig, b: DataConfig) -> str | None:
    """Why two runs' ``DataConfig``s test on different images, or None where they do not."""
    for key in _SAME_IMAGES_KEYS:
        if getattr(a, key) != getattr(b, key):
            return f"data.{key} is {getattr(a, key)!r} against {getattr(b, key)!r}"
    for key in _HOLDOUT_KEYS:
        if getattr(a, key) != getattr(b, key) and not _has_own_validation(a):
            return (
                f"data.{key} is {getattr(a, key)!r} against {getattr(b, key)!r}, and {a.spec} "
                "has no test split of its own, so each run held out different images"
            )
    return None


def _has_own_validation(data_cfg: DataConfig) -> bool:
    return read_dataset(data_cfg.spec, root=data_cfg.root, download=False).val is not None


def _run_config(run_dir: Path) -> RunConfig:
    folder = RunFolder(run_dir)
    folder.require(results=False)
    return read_run_config(folder.config)


def _read_predictions(run_dir: Path) -> pd.DataFrame:
    try:
        return RunFolder(run_dir).read_predictions()
    except RunFolderError as err:
        raise AgreementError(str(err)) from None


def _run_classes(run_a: Path, run_b: Path) -> list[str]:
    """The class names in metrics.json (the same in both runs, or the two are not comparable)."""
    found = []
    for run in (run_a, run_b):
        classes = (RunFolder(run).read_metrics() or {}).get("classes")
        found.append([str(c) for c in classes] if isinstance(classes, list) else None)
    a, b = found
    if a is not None and b is not None and a != b:
        raise AgreementError(
            f"{run_a} and {run_b} name their classes differently ({some(a)} against {some(b)})"
        )
    classes = a or b
    if classes is None:
        labels = RunFolder(run_a).read_predictions(["label", "prediction"])
        classes = [str(i) for i in range(int(labels.to_numpy().max()) + 1)]
    return classes


def _default_names(run_a: Path, run_b: Path, model_a: str, model_b: str) -> tuple[str, str]:
    # Two runs of the same model (two seeds, two recipes) are told apart by their folders.
    if model_a != model_b:
        return model_a, model_b
    a, b = run_a.resolve().name, run_b.resolve().name
    return (a, b) if a != b else (str(run_a), str(run_b))


# --- images -------------------------------------------------------------------------------------


def validation_images(run_dir: Path | str, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """The run's test images at ``indices`` (positions in predictions.parquet's ``index``)
    as (n, H, W, C) uint8, without augmentation or normalisation.

    The split is rebuilt from config.yaml exactly as training built it (reader, classes, holdout,
    test subset), without downloading. In-memory formats are indexed directly; image files
    are decoded only at the indices asked, at the run's image size, after dropping the files the
    run skipped as unreadable (skipped.csv) so that positions match its predictions.
    """
    run_dir = Path(run_dir)
    data_cfg = _run_config(run_dir).data
    val = rebuild_splits(data_cfg).val
    assert val is not None  # load_splits always provides one
    if not isinstance(val, ArraySource):
        skipped = RunFolder(run_dir).read_skipped_paths()
        keep = [i for i, p in enumerate(val.paths) if str(p) not in skipped]
        val = val.subset(np.asarray(keep, dtype=np.int64))
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(idx) and (idx.min() < 0 or idx.max() >= len(val)):
        raise DataError(
            f"{run_dir}: image index {int(idx.max() if idx.max() >= len(val) else idx.min())} is "
            f"outside its test split of {len(val)} images (has the data changed?)"
        )
    if isinstance(val, ArraySource):
        return val.images[idx].copy()  # (n, H, W, C)
    size = image_size(data_cfg, val)
    if not len(idx):
        return np.empty((0, size, size, 3), np.uint8)
    return np.stack([load_uint8(val.paths[i], size) for i in idx])  # (n, S, S, 3)
