"""The report's study figures: accuracy against training images, learning curves, confusion
matrices (style, palette and PNG bytes from :mod:`cnnvit.plotting`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from cnnvit.plotting import format_count, model_colors, plain, style
from cnnvit.report.verdict import Crossing


# Accuracy ticks as percentages, without trailing zeros: 88%, 77.5%.
def _percent() -> FuncFormatter:
    # A fresh formatter per axis: matplotlib binds a formatter to the axis it is set on.
    return FuncFormatter(lambda y, _pos: f"{100 * y:.4g}%")


# Annotating every cell of a confusion matrix only reads well up to this many classes.
MAX_ANNOTATED_CLASSES = 15
MAX_LABELLED_CLASSES = 40


@dataclass(frozen=True)
class ConfusionPanel:
    """One confusion matrix to draw: whose it is, the class names and the counts."""

    model: str
    title: str
    classes: list[str]
    counts: np.ndarray  # (K, K), rows = true class, columns = predicted class


# --- helpers shared by the study figures ------------------------------------------------


def _blocks_label(blocks: object) -> str:
    return "all layers trainable" if pd.isna(blocks) else f"last {int(blocks)} blocks trainable"


def _log_count_axis(ax, sizes: Sequence[float]) -> None:
    """Log x axis with ticks at the measured sizes, written 600, 3k, 12k."""
    ax.set_xscale("log")
    ticks = sorted({float(s) for s in sizes if s and not pd.isna(s)})
    if 0 < len(ticks) <= 10:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        # A little room either side so the end markers are not cut by the frame.
        ax.set_xlim(ticks[0] / 1.25, ticks[-1] * 1.25)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: format_count(x)))


# --- accuracy against the number of training images ---------------------------------------


def accuracy_vs_images(
    summary: pd.DataFrame,
    models: Sequence[str],
    *,
    metric: str = "final_val_top1",
    crossings: Mapping[object, Sequence[Crossing]] | None = None,
) -> Figure | None:
    """Mean accuracy over seeds against training images, one line per model, ±1 std band.

    One panel per ``trainable_blocks`` value. ``crossings`` (by trainable_blocks value) adds a
    dotted line where the verdict found the curves crossing. ``None`` when nothing completed.
    """
    if summary.empty:
        return None
    colors = model_colors(models)
    groups = list(summary.groupby("trainable_blocks", sort=False, dropna=False))
    with style():
        fig = Figure(figsize=(6.4 * len(groups) + 0.6, 4.2), layout="constrained")
        axes = fig.subplots(1, len(groups), sharey=True, squeeze=False)[0]
        for ax, (blocks, group) in zip(axes, groups, strict=True):
            for model in models:
                rows = group[group["model"] == model].sort_values("num_train_images")
                if not rows.empty:
                    _accuracy_line(ax, rows, metric, colors[model], model)
            for crossing in (crossings or {}).get(_key(blocks), []):
                ax.axvline(crossing.images, color="0.35", linestyle=":", linewidth=1.2)
                ax.annotate(
                    f"curves cross ≈ {format_count(crossing.images)}",
                    (crossing.images, 0.99),
                    xycoords=("data", "axes fraction"),
                    xytext=(4, 0),
                    textcoords="offset points",
                    va="top",
                    fontsize=8.5,
                    color="0.3",
                )
            _log_count_axis(ax, group["num_train_images"].astype("float64"))
            ax.set_xlabel("training images (log scale)")
            if len(groups) > 1:
                ax.set_title(_blocks_label(blocks))
        axes[0].set_ylabel("validation top-1 accuracy (%)")
        axes[0].yaxis.set_major_formatter(_percent())
        # Below the panels, where it can hide no data point and no crossing mark.
        legend = {}  # label -> handle, over every panel (a model may be missing from one)
        for ax in axes:
            legend.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
        labels = [plain(m) for m in models if plain(m) in legend]
        fig.legend(
            [legend[label] for label in labels],
            labels,
            loc="outside lower center",
            ncols=max(1, len(labels)),
            title="model: mean over seeds, band ±1 std",
        )
        fig.suptitle("Accuracy against number of training images")
    return fig


def _accuracy_line(ax, rows: pd.DataFrame, metric: str, color: str, label: str) -> None:
    x = rows["num_train_images"].astype("float64").to_numpy()
    mean = rows[f"{metric}_mean"].to_numpy(dtype="float64")
    std = rows[f"{metric}_std"].to_numpy(dtype="float64")
    ax.plot(x, mean, marker="o", color=color, linewidth=2, markersize=6, label=plain(label))
    if np.isfinite(std).any():
        # Single-seed points have no spread: draw no band there rather than a zero-width one.
        band = np.nan_to_num(std, nan=0.0)
        ax.fill_between(x, mean - band, mean + band, color=color, alpha=0.18, linewidth=0)


def _key(blocks: object) -> object:
    return None if pd.isna(blocks) else int(blocks)


# --- learning curves -----------------------------------------------------------------------


def learning_curves(curves: pd.DataFrame, models: Sequence[str]) -> Figure | None:
    """Validation accuracy and training loss per epoch: a row per training size (and depth).

    Each seed is a thin line, the mean over seeds a bold one, in the model's colour.
    """
    if curves.empty or "val_acc" not in curves:
        return None
    colors = model_colors(models)
    panels = list(curves.groupby(["trainable_blocks", "fraction"], sort=True, dropna=False))
    with style():
        fig = Figure(figsize=(10.0, 2.9 * len(panels) + 0.7), layout="constrained")
        present = [m for m in models if m in set(curves["model"])]
        handles = [Line2D([], [], color=colors[m], linewidth=2.5, label=plain(m)) for m in present]
        handles.append(Line2D([], [], color="0.45", linewidth=0.8, label="single seeds"))
        fig.legend(handles=handles, loc="outside upper center", ncols=len(handles))
        rows = fig.subfigures(len(panels), 1, squeeze=False)[:, 0]
        for i, (sub, ((blocks, fraction), group)) in enumerate(zip(rows, panels, strict=True)):
            _curve_row(sub, group, models, colors, first=i == 0, last=i == len(panels) - 1)
            sub.suptitle(_size_title(group, fraction, blocks), x=0.01, ha="left", weight="bold")
    return fig


def _curve_row(sub, group: pd.DataFrame, models, colors, *, first: bool, last: bool) -> None:
    """One training size: validation accuracy (left) and training loss (right)."""
    acc_ax, loss_ax = sub.subplots(1, 2)
    for model in models:
        runs = group[group["model"] == model]
        if not runs.empty:
            _curve_lines(acc_ax, runs, "val_acc", colors[model])
            _curve_lines(loss_ax, runs, "train_loss", colors[model])
    acc_ax.set_ylabel("validation top-1 (%)")
    acc_ax.yaxis.set_major_formatter(_percent())
    loss_ax.set_ylabel("training loss")
    for ax in (acc_ax, loss_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        if last:
            ax.set_xlabel("epoch")
    if first:
        acc_ax.set_title("Validation accuracy")
        loss_ax.set_title("Training loss")


def _curve_lines(ax, runs: pd.DataFrame, column: str, color: str) -> None:
    for _, run in runs.groupby("cell", sort=False):
        ax.plot(run["epoch"], run[column], color=color, linewidth=0.8, alpha=0.45)
    mean = runs.groupby("epoch")[column].mean()
    ax.plot(mean.index, mean.to_numpy(), color=color, linewidth=2.4)


def _size_title(group: pd.DataFrame, fraction: float, blocks: object) -> str:
    images = group.drop_duplicates("cell")
    sizes = pd.to_numeric(images.get("num_train_images", pd.Series(dtype=float)), "coerce")
    share = f"{100 * fraction:.3g} % of the training set"
    size = share
    if sizes.notna().any():
        size = f"{int(sizes.median()):,} training images ({share})"
    return size if pd.isna(blocks) else f"{size}, {_blocks_label(blocks)}"


# --- confusion matrices --------------------------------------------------------------------


def confusion_matrices(panels: Sequence[ConfusionPanel], models: Sequence[str]) -> Figure | None:
    """Row-normalised confusion matrices side by side, one per model, counts in the cells."""
    if not panels:
        return None
    colors = model_colors(models)
    k = max(len(p.classes) for p in panels)
    side = min(9.0, max(3.6, 0.42 * k + 1.6))  # inches per panel; grows with the class count
    with style(**{"axes.grid": False}):
        fig = Figure(figsize=(side * len(panels) + 1.0, side + 0.9), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        image = None
        for ax, panel in zip(axes, panels, strict=True):
            image = _confusion_panel(ax, panel)
            ax.set_title(plain(panel.title), color=colors.get(panel.model, "black"))
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="fraction of the true class")
        fig.suptitle("Confusion matrices (rows: true class, normalised by row; numbers: counts)")
    return fig


def _confusion_panel(ax, panel: ConfusionPanel):
    counts = np.asarray(panel.counts, dtype=np.int64)  # (K, K)
    totals = counts.sum(axis=1, keepdims=True)  # (K, 1)
    norm = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    k = len(panel.classes)
    if k <= MAX_LABELLED_CLASSES:
        names = [plain(c) for c in panel.classes]
        ax.set_xticks(range(k), names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(k), names)
    if k <= MAX_ANNOTATED_CLASSES:
        size = 8 if k <= 10 else 6.5
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    color = "white" if norm[i, j] > 0.55 else "black"
                    ax.text(
                        j,
                        i,
                        str(counts[i, j]),
                        ha="center",
                        va="center",
                        fontsize=size,
                        color=color,
                    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    return image
