"""The report's tables as DataFrames of plain numbers (the HTML layer formats them; CSV keeps
full precision), and the choice of runs shown for "the largest training size"."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cnnvit.report.collect import StudyData

EFFICIENCY_COLUMNS = [
    "model",
    "trainable_blocks",
    "fraction",
    "num_train_images",
    "n",
    "params_total",
    "params_trainable",
    "mean_epoch_seconds",
    "train_seconds",
    "peak_memory_mb",
]
# metrics.json key path -> column stem in the final-metrics table.
FINAL_METRICS = {
    "accuracy": ("top1",),
    "precision": ("macro", "precision"),
    "recall": ("macro", "recall"),
    "f1": ("macro", "f1"),
    "top5": ("top5",),
}
CELL_COLUMNS = [
    "cell",
    "model",
    "fraction",
    "num_train_images",
    "seed",
    "trainable_blocks",
    "status",
    "still_improving",
    "selected_on",
    "steps_completed",
    "epochs_completed",
    "test_top1",
    "best_selection_top1",
    "train_seconds",
    "run_dir",
    "error",
]


def accuracy_table(data: StudyData) -> pd.DataFrame:
    """Final top-1 per model (rows) and training size: mean, std, 95 % interval, seeds."""
    keep = ["model", "trainable_blocks", "fraction", "num_train_images", "n"]
    keep += [f"test_top1_{s}" for s in ("mean", "std", "ci95_low", "ci95_high")]
    return data.summary[keep].copy()


def efficiency_table(data: StudyData) -> pd.DataFrame:
    """Cost per model and training size, mean over completed seeds."""
    return data.summary[EFFICIENCY_COLUMNS].copy()


BUDGET_COLUMNS = [
    "model",
    "trainable_blocks",
    "fraction",
    "num_train_images",
    "n",
    "budget",
    "steps_planned",
    "steps_completed_mean",
    "epochs_completed_mean",
    "stopped_early",
    "still_improving",
    "convergence_unknown",
]


def budget_table(data: StudyData) -> pd.DataFrame:
    """Per model and training size, over completed seeds: the budget, the steps planned, the
    steps and epochs taken (means), and how many seeds stopped early or were still improving
    (``convergence_unknown``: seeds the check could not tell, or that did not record it)."""
    done = data.results[data.results["status"] == "completed"]
    rows = []
    keys = ["model", "trainable_blocks", "fraction"]
    for (model, blocks, fraction), group in done.groupby(keys, sort=False, dropna=False):
        flag = group["still_improving"]
        rows.append(
            {
                "model": model,
                "trainable_blocks": blocks,
                "fraction": fraction,
                "num_train_images": group["num_train_images"].median(),
                "n": len(group),
                "budget": ", ".join(dict.fromkeys(group["budget"].dropna())) or None,
                "steps_planned": group["steps_planned"].median(),
                "steps_completed_mean": group["steps_completed"].astype("float64").mean(),
                "epochs_completed_mean": group["epochs_completed"].astype("float64").mean(),
                "stopped_early": int(group["stopped_early"].fillna(False).sum()),
                "still_improving": int(flag.fillna(False).sum()),
                "convergence_unknown": int(flag.isna().sum()),
            }
        )
    table = pd.DataFrame(rows, columns=BUDGET_COLUMNS)
    for column in ("trainable_blocks", "num_train_images", "steps_planned"):
        table[column] = pd.to_numeric(table[column], errors="coerce").round().astype("Int64")
    return table.sort_values(["fraction"], kind="stable").reset_index(drop=True)


def largest_fraction_cells(data: StudyData) -> pd.DataFrame:
    """Completed cells with metrics.json at each (model, trainable_blocks)'s largest such size.

    Per model rather than study-wide: a model whose largest-size runs all failed still shows
    its best available size (the fraction column says which).
    """
    done = data.results[
        (data.results["status"] == "completed") & data.results["cell"].isin(data.metrics)
    ]
    if done.empty:
        return done
    largest = done.groupby(["model", "trainable_blocks"], dropna=False)["fraction"].transform("max")
    return done[done["fraction"] == largest]


def final_metrics_table(data: StudyData) -> pd.DataFrame:
    """Accuracy, macro precision/recall/F1 and top-5 (metrics.json), mean and std over seeds."""
    cells = largest_fraction_cells(data)
    rows = []
    model_order = {m: i for i, m in enumerate(data.models)}
    for (model, blocks), group in cells.groupby(["model", "trainable_blocks"], dropna=False):
        row: dict[str, Any] = {
            "model": model,
            "trainable_blocks": blocks,
            "fraction": group["fraction"].iloc[0],
            "num_train_images": group["num_train_images"].median(),
            "n": len(group),
        }
        for name, path in FINAL_METRICS.items():
            values = np.array([_dig(data.metrics[c], path) for c in group["cell"]], dtype=float)
            values = values[~np.isnan(values)]
            row[f"{name}_mean"] = values.mean() if len(values) else np.nan
            row[f"{name}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
        rows.append(row)
    columns = ["model", "trainable_blocks", "fraction", "num_train_images", "n"]
    columns += [f"{m}_{s}" for m in FINAL_METRICS for s in ("mean", "std")]
    table = pd.DataFrame(rows, columns=columns)
    if table.empty:
        return table
    table["trainable_blocks"] = table["trainable_blocks"].astype("Int64")
    table["num_train_images"] = table["num_train_images"].round().astype("Int64")
    order = table["model"].map(model_order).fillna(len(model_order))
    blocks_key = table["trainable_blocks"].astype("float64").fillna(-1)
    table = table.assign(_m=order, _k=blocks_key).sort_values(["_m", "_k"], kind="stable")
    return table.drop(columns=["_m", "_k"]).reset_index(drop=True)


def cells_table(data: StudyData) -> pd.DataFrame:
    """Every cell with its status and, where it failed or diverged, the error text."""
    runs = data.info.run_dirs
    table = data.results.copy()
    table["run_dir"] = [
        _relative(runs[c], data.info.root) if c in runs else "" for c in table["cell"]
    ]
    return table[CELL_COLUMNS]


def _relative(path, root) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _dig(obj: Any, path: tuple[str, ...]) -> float:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return np.nan
        obj = obj[key]
    try:
        return float(obj)
    except (TypeError, ValueError):
        return np.nan
