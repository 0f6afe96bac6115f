"""The report's study figures: test accuracy against training images (with the fitted learning
curves), the selection accuracy during training, confusion matrices (style, palette and PNG
bytes from :mod:`cnnvit.plotting`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import rcParams
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from cnnvit.plotting import format_count, model_colors, plain, style
from cnnvit.report.learning_fit import crossover_where
from cnnvit.stats.curves import MAX_EXTRAPOLATION, CurveComparison


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


def _log_count_axis(ax, sizes: Sequence[float], end: float | None = None) -> None:
    """Log x axis with ticks at the measured sizes, written 600, 3k, 12k (and at ``end``, where
    an extrapolated curve reaches)."""
    ax.set_xscale("log")
    ticks = sorted({float(s) for s in sizes if s and not pd.isna(s)})
    if 0 < len(ticks) <= 10:
        right = ticks[-1] if end is None else max(ticks[-1], end)
        ax.xaxis.set_major_locator(FixedLocator(ticks if end is None else [*ticks, right]))
        ax.xaxis.set_minor_locator(NullLocator())
        # A little room either side so the end markers are not cut by the frame.
        ax.set_xlim(ticks[0] / 1.25, right * 1.25)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: format_count(x)))


# --- accuracy against the number of training images ---------------------------------------

CurveMap = Mapping[object, CurveComparison | None]


def accuracy_vs_images(
    summary: pd.DataFrame,
    models: Sequence[str],
    *,
    metric: str = "test_top1",
    curves: CurveMap | None = None,
    improving: Collection[tuple[str, float, object]] = (),
) -> Figure | None:
    """Mean test accuracy over seeds against training images, one colour per model: the
    measured means with ±1 std bars, and where ``curves`` has the depth, each head-to-head
    model's fitted learning curve with its bootstrap band (dashed beyond the largest measured
    size where a crossover or a match lies there, up to 10×), the crossover marked.

    One panel per ``trainable_blocks`` value; ``curves`` and ``improving`` ((model, fraction,
    depth) where a run was still improving) are keyed by depth: None for all layers trainable.
    ``None`` when nothing completed.
    """
    if summary.empty:
        return None
    colors = model_colors(models)
    groups = list(summary.groupby("trainable_blocks", sort=False, dropna=False))
    with style():
        fig = Figure(figsize=(6.4 * len(groups) + 0.6, 4.4), layout="constrained")
        axes = fig.subplots(1, len(groups), sharey=True, squeeze=False)[0]
        for ax, (blocks, group) in zip(axes, groups, strict=True):
            fitted = (curves or {}).get(_key(blocks))
            for model in models:
                rows = group[group["model"] == model].sort_values("num_train_images")
                if rows.empty:
                    continue
                flags = [(model, float(f), _key(blocks)) in improving for f in rows["fraction"]]
                _accuracy_points(ax, rows, metric, colors[model], model, flags, fitted is None)
            end = None
            if fitted is not None:
                end = _fitted_curves(ax, fitted, colors)
            _log_count_axis(ax, group["num_train_images"].astype("float64"), end)
            ax.set_xlabel("training images (log scale)")
            if len(groups) > 1:
                ax.set_title(_blocks_label(blocks))
        axes[0].set_ylabel("test top-1 accuracy (%)")
        axes[0].yaxis.set_major_formatter(_percent())
        _accuracy_legend(fig, axes, models, bool(improving))
        fig.suptitle("Test accuracy against number of training images")
    return fig


def _accuracy_points(ax, rows, metric, color, label, flags, join_points: bool) -> None:
    """The measured means ±1 std over seeds; a line through them only where no curve is fitted;
    ▲ above the sizes where a run was still improving."""
    x = rows["num_train_images"].astype("float64").to_numpy()
    mean = rows[f"{metric}_mean"].to_numpy(dtype="float64")
    std = rows[f"{metric}_std"].to_numpy(dtype="float64")
    ax.errorbar(
        x,
        mean,
        yerr=np.nan_to_num(std, nan=0.0),  # single seeds: no spread, no bar
        marker="o",
        color=color,
        linewidth=2 if join_points else 0,
        elinewidth=1.2,
        capsize=3,
        markersize=6,
        label=plain(label),
    )
    for xi, yi, flag in zip(x, mean, flags, strict=True):
        if flag:
            ax.annotate(
                "▲",
                (xi, yi),
                xytext=(0, 9),
                textcoords="offset points",
                ha="center",
                fontsize=9,
                color=color,
            )


def _fitted_curves(ax, c: CurveComparison, colors: Mapping[str, str]) -> float | None:
    """Both fitted curves as accuracy (1 − error) with their 95 % bands; returns how far right
    the axis must reach (None: to the largest measured size)."""
    grid = np.asarray(c.grid)  # (G,)
    largest = c.crossover.window[1] / MAX_EXTRAPOLATION
    end = extrapolation_end(c)
    for curve in c.curves:
        color = colors.get(curve.model, "0.4")
        low, high = np.asarray(curve.band_low), np.asarray(curve.band_high)
        solid = grid <= largest * (1 + 1e-9)
        shown = solid if end is None else grid <= end * (1 + 1e-9)
        ax.fill_between(
            grid[shown], 1 - high[shown], 1 - low[shown], color=color, alpha=0.15, linewidth=0
        )
        x = np.geomspace(grid[0], largest, 60)
        ax.plot(x, 1 - curve.fit.predict(x), color=color, linewidth=1.8)
        if end is not None:
            x = np.geomspace(largest, end, 30)
            ax.plot(x, 1 - curve.fit.predict(x), color=color, linewidth=1.5, linestyle="--")
    _mark_crossover(ax, c)
    return end


def extrapolation_end(c: CurveComparison) -> float | None:
    """How far the dashed continuation of the curves reaches: a little past an extrapolated
    crossover or match (its interval included), never beyond 10× the largest measured size;
    None when nothing is extrapolated."""
    limit = c.crossover.window[1]
    largest = limit / MAX_EXTRAPOLATION
    x, m = c.crossover, c.images_to_match
    points = []
    if crossover_where(c) == "extrapolated" and x.n is not None:
        points += [x.n, x.high or x.n]
    if m.n is not None and m.n > largest:
        points += [m.n, m.high or limit]
    if not points:
        return None
    return min(limit, 1.25 * max(points))


def _mark_crossover(ax, c: CurveComparison) -> None:
    x = c.crossover
    if x.n is None:
        return
    ax.axvline(x.n, color="0.35", linestyle=":", linewidth=1.2)
    where = "" if crossover_where(c) == "inside" else ", extrapolated"
    ax.annotate(
        f"fitted curves cross ≈ {format_count(x.n)}{where}",
        (x.n, 0.02),
        xycoords=("data", "axes fraction"),
        xytext=(-4, 0),
        textcoords="offset points",
        ha="right",
        va="bottom",
        fontsize=8.5,
        color="0.3",
    )


def _accuracy_legend(fig, axes, models: Sequence[str], improving: bool) -> None:
    """Below the panels, where it can hide no data point and no crossing mark."""
    legend = {}  # label -> handle, over every panel (a model may be missing from one)
    for ax in axes:
        legend.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    labels = [plain(m) for m in models if plain(m) in legend]
    handles = [legend[label] for label in labels]
    if improving:
        handles.append(Line2D([], [], linestyle="", marker="^", color="0.3"))
        labels.append("a run still improving")
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=max(1, len(labels)),
        title="dots: mean over seeds ±1 std; lines: fitted learning curves, band 95 % over seeds",
    )


def _key(blocks: object) -> object:
    return None if pd.isna(blocks) else int(blocks)


# --- learning curves -----------------------------------------------------------------------


def learning_curves(curves: pd.DataFrame, models: Sequence[str]) -> Figure | None:
    """The accuracy scored during training and the training loss: a row per training size (and
    depth), against optimiser steps where every log of the row has them, else against epochs.

    The score is the selection split's (``scored_on``); runs from before the three-way split
    scored the test split, and their panel says so. Each seed is a thin line, the mean over
    seeds a bold one, in the model's colour.
    """
    if curves.empty or "score_acc" not in curves:
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


def curve_axis(group: pd.DataFrame) -> str:
    """``step`` when every log of ``group`` has optimiser steps, else ``epoch``."""
    steps = group["step"] if "step" in group else pd.Series(dtype="float64")
    return "step" if len(steps) and steps.notna().all() else "epoch"


def score_label(group: pd.DataFrame) -> str:
    """The split the accuracy during training was scored on, as the axis says it."""
    split = set(group.get("scored_on", pd.Series(["selection"])).dropna())
    if split == {"test"}:
        return "test top-1 during training (old runs)"
    if "test" in split:
        return "selection top-1 (old runs: test)"
    return "selection top-1 (%)"


def _curve_row(sub, group: pd.DataFrame, models, colors, *, first: bool, last: bool) -> None:
    """One training size: the accuracy scored during training (left) and training loss (right)."""
    acc_ax, loss_ax = sub.subplots(1, 2)
    x = curve_axis(group)
    for model in models:
        runs = group[group["model"] == model]
        if not runs.empty:
            _curve_lines(acc_ax, runs, x, "score_acc", colors[model])
            _curve_lines(loss_ax, runs, x, "train_loss", colors[model])
    acc_ax.set_ylabel(score_label(group))
    acc_ax.yaxis.set_major_formatter(_percent())
    loss_ax.set_ylabel("training loss")
    for ax in (acc_ax, loss_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        if last:
            ax.set_xlabel("optimiser steps" if x == "step" else "epoch")
    if first:
        acc_ax.set_title("Selection accuracy (scored during training)")
        loss_ax.set_title("Training loss")


def _curve_lines(ax, runs: pd.DataFrame, x: str, column: str, color: str) -> None:
    """Each seed's run as a thin line, then the mean over seeds as a bold one.

    The thin lines are one artist (a :class:`LineCollection`, each run drawn on its own as a
    line of its own would be), not one per run: a study of thousands of cells would otherwise
    spend most of its report adding and drawing lines."""
    codes, _ = pd.factorize(runs["cell"])  # runs numbered in order of appearance
    order = np.argsort(codes, kind="stable")  # each run's rows, in their own order
    starts = np.flatnonzero(np.diff(codes[order], prepend=-1))
    xs = runs[x].to_numpy(dtype="float64")[order]
    ys = runs[column].to_numpy(dtype="float64")[order]
    pieces = zip(np.split(xs, starts[1:]), np.split(ys, starts[1:]), strict=True)
    segments = [np.column_stack(p) for p in pieces]  # each (rows of the run, 2)
    # Drawn as Line2D draws: its caps and joins, its layer (zorder 2, below the bold mean).
    thin = LineCollection(
        segments,
        colors=color,
        linewidths=0.8,
        alpha=0.45,
        zorder=2,
        capstyle=rcParams["lines.solid_capstyle"],
        joinstyle=rcParams["lines.solid_joinstyle"],
    )
    ax.add_collection(thin)
    mean = runs.groupby(x)[column].mean()
    ax.plot(mean.index, mean.to_numpy(), color=color, linewidth=2.4)


def _size_title(group: pd.DataFrame, fraction: float, blocks: object) -> str:
    images = group.drop_duplicates("cell")
    sizes = pd.to_numeric(images.get("num_train_images", pd.Series(dtype=float)), "coerce")
    share = f"{100 * fraction:.3g} % of the training pool"
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
