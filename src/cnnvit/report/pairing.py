"""Two models paired seed by seed at every training size: what the verdict's tests take in.

Both models of a seed train on the same subset of the training pool and are scored on the same
test images, so at each size the comparison pairs them by seed: the two test accuracies of each
seed (results.csv), and how many test images only A got right and only B got right (the two
cells' predictions.parquet, matched image by image on ``index``). Only files are read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cnnvit.folders import RunFolder
from cnnvit.report.collect import StudyData

__all__ = ["SizePair", "count_discordant", "size_pairs"]


@dataclass(frozen=True)
class SizePair:
    """Models ``a`` and ``b`` at one training size, paired by seed.

    ``seeds``: the seeds where both completed (in order), ``acc_a``/``acc_b`` their test top-1
    (shape (seeds,)); ``discordant``: per seed (only A right, only B right) on the test images,
    None when a seed's predictions are missing or do not match (``problem`` says why);
    ``only``: a model that alone has completed runs at this size (then ``seeds`` is empty).
    """

    fraction: float
    images: float  # median number of training images over the size's cells
    seeds: tuple[int, ...]
    acc_a: tuple[float, ...]
    acc_b: tuple[float, ...]
    discordant: tuple[tuple[int, int], ...] | None
    problem: str | None = None
    only: str | None = None


def size_pairs(data: StudyData, a: str, b: str, blocks: int | None) -> list[SizePair]:
    """One :class:`SizePair` per training size where ``a`` or ``b`` completed a cell (at
    unfrozen depth ``blocks``; None = all trainable), ordered by number of images."""
    done = data.results[data.results["status"] == "completed"]
    depth = done["trainable_blocks"]
    done = done[(depth.isna() if blocks is None else (depth == blocks).fillna(False)).to_numpy()]
    runs = data.info.run_dirs
    out = []
    for fraction, cells in done.groupby("fraction", sort=True):
        pair = _pair(cells, float(fraction), a, b, runs)
        if pair is not None:
            out.append(pair)
    return sorted(out, key=lambda p: (math.isnan(p.images), p.images))


def _pair(cells: pd.DataFrame, fraction: float, a: str, b: str, runs: dict) -> SizePair | None:
    by_a = cells[cells["model"] == a].set_index("seed")
    by_b = cells[cells["model"] == b].set_index("seed")
    if by_a.empty and by_b.empty:
        return None
    images = pd.to_numeric(cells["num_train_images"], errors="coerce").astype("float64")
    size = float(images.median()) if images.notna().any() else math.nan
    if by_a.empty or by_b.empty:
        return SizePair(fraction, size, (), (), (), None, only=a if by_b.empty else b)
    seeds = sorted(set(by_a.index) & set(by_b.index))
    acc_a = tuple(float(by_a.at[s, "test_top1"]) for s in seeds)
    acc_b = tuple(float(by_b.at[s, "test_top1"]) for s in seeds)
    counts: list[tuple[int, int]] = []
    problem = None
    for s in seeds:
        found, problem = count_discordant(runs[by_a.at[s, "cell"]], runs[by_b.at[s, "cell"]])
        if found is None:
            problem = f"seed {s}: {problem}"
            break
        counts.append(found)
    discordant = tuple(counts) if problem is None and counts else None
    return SizePair(fraction, size, tuple(seeds), acc_a, acc_b, discordant, problem)


def count_discordant(run_a, run_b) -> tuple[tuple[int, int] | None, str | None]:
    """(only A right, only B right) on the test images two run folders both predicted, or
    None and the reason (no predictions, different images or labels, an unreadable file).

    Read as arrays, not DataFrames: the verdict pairs every completed cell, so over a study of
    thousands of cells this is most of the report's reading."""
    columns = ["index", "label", "prediction"]
    try:
        pa = RunFolder(run_a).read_prediction_arrays(columns)
        pb = RunFolder(run_b).read_prediction_arrays(columns)
    except (OSError, ValueError, KeyError) as err:  # missing (RunFolderError), damaged
        return None, str(err)
    pa, pb = _by_index(pa), _by_index(pb)
    same = len(pa["index"]) == len(pb["index"]) and np.array_equal(pa["index"], pb["index"])
    if not same:
        return None, "the two runs' predictions do not hold the same test images"
    label = pa["label"]
    if not np.array_equal(label, pb["label"]):
        return None, "the two runs' predictions give the same images different labels"
    right_a = pa["prediction"] == label  # (N,)
    right_b = pb["prediction"] == label  # (N,)
    return (int(np.sum(right_a & ~right_b)), int(np.sum(right_b & ~right_a))), None


def _by_index(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The rows in the order of their image index (stable: ties keep the file's order)."""
    order = np.argsort(columns["index"], kind="stable")
    return {name: values[order] for name, values in columns.items()}
