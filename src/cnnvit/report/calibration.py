"""The report's calibration section: how far each model's confidence is from its accuracy on the
test split.

The expected calibration error (ECE) per model and training size is the mean ± std over seeds
of results.csv's ``test_ece`` (15 equal-width bins of top-1 confidence, as
:func:`cnnvit.metrics.expected_calibration_error` computes it). The reliability diagram shows
each model at its largest training size, the bins of metrics.json's ``reliability`` pooled over
seeds: counts added, confidence and accuracy averaged with the counts as weights, which is the
same as binning every seed's test images together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cnnvit.formatting import count, pct, pm
from cnnvit.markup import img, join, note
from cnnvit.plotting import model_colors, plain, style
from cnnvit.report.collect import StudyData
from cnnvit.report.layout import cached_table, size_pivot
from cnnvit.report.tables import largest_fraction_cells

if TYPE_CHECKING:
    from cnnvit.report.context import ReportContext

__all__ = [
    "EXPLAIN",
    "Reliability",
    "calibration_figures",
    "calibration_table",
    "calibration_tables",
    "pooled_reliability",
    "reliability_figure",
    "render_calibration",
]

TABLE = "calibration"
FIGURE = "reliability"
EXPLAIN = (
    "ECE: the average gap between confidence and accuracy over 15 confidence bins; 0 is "
    "perfectly calibrated. Each bin holds the test images whose top-1 confidence falls in it, "
    "and counts in proportion to them: a model that says 90 % should be right 90 % of the time."
)
COLUMNS = [
    "model",
    "trainable_blocks",
    "fraction",
    "num_train_images",
    "n",
    "test_ece_mean",
    "test_ece_std",
]


@dataclass(frozen=True)
class Reliability:
    """One model's reliability bins at one training size, pooled over ``seeds``.

    ``edges``: the K + 1 bin edges; ``confidence``, ``accuracy``: the mean top-1 confidence and
    the accuracy of the images in each bin (NaN where empty), ``count``: images per bin, each
    shape (K + 1,) as metrics.json has them: the last bin holds confidences of exactly 1.0
    (shape (K,) where a file has no such bin). ``ece`` is the pooled bins' own expected
    calibration error: that of every seed's test images binned together.
    """

    model: str
    trainable_blocks: object
    num_train_images: float
    seeds: int
    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled]) * self.count[filled]
        return float(gaps.sum() / self.count.sum()) if self.count.sum() else float("nan")


# --- numbers -------------------------------------------------------------------------------------


def calibration_table(data: StudyData) -> pd.DataFrame:
    """ECE per model and training size: mean and std over the completed seeds that have one."""
    done = data.results[data.results["status"] == "completed"]
    rows = []
    keys = ["model", "trainable_blocks", "fraction"]
    for (model, blocks, fraction), group in done.groupby(keys, sort=False, dropna=False):
        ece = group["test_ece"].astype("float64").dropna()
        rows.append(
            {
                "model": model,
                "trainable_blocks": blocks,
                "fraction": fraction,
                "num_train_images": group["num_train_images"].median(),
                "n": len(ece),
                "test_ece_mean": float(ece.mean()) if len(ece) else np.nan,
                "test_ece_std": float(ece.std(ddof=1)) if len(ece) > 1 else np.nan,
            }
        )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("trainable_blocks", "num_train_images"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").round().astype("Int64")
    return frame.sort_values("fraction", kind="stable").reset_index(drop=True)


def pooled_reliability(data: StudyData) -> list[Reliability]:
    """Per model (and depth), at its largest training size with metrics.json: the reliability
    bins of its completed seeds added together; models whose runs recorded none are left out."""
    cells = largest_fraction_cells(data)
    out = []
    for (model, blocks), group in cells.groupby(["model", "trainable_blocks"], dropna=False):
        bins = [_bins(data.metrics[c].get("reliability")) for c in group["cell"]]
        bins = [b for b in bins if b is not None]
        if not bins or any(len(b[0]) != len(bins[0][0]) for b in bins):
            continue
        edges = bins[0][0]
        n = np.sum([b[1] for b in bins], axis=0)  # (K,)
        conf = np.sum([b[2] for b in bins], axis=0)  # (K,) summed confidence
        right = np.sum([b[3] for b in bins], axis=0)  # (K,) images right
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_conf = np.where(n > 0, conf / np.maximum(n, 1), np.nan)
            acc = np.where(n > 0, right / np.maximum(n, 1), np.nan)
        images = float(pd.to_numeric(group["num_train_images"], errors="coerce").median())
        out.append(Reliability(model, blocks, images, len(bins), edges, mean_conf, acc, n))
    order = {m: i for i, m in enumerate(data.models)}
    return sorted(out, key=lambda r: (order.get(r.model, len(order)), str(r.trainable_blocks)))


def _bins(found: object) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(edges (K+1,), count, summed confidence, number right (each (K+1,) or (K,))) from
    metrics.json's ``reliability``; None where it is absent or malformed."""
    if not isinstance(found, dict):
        return None
    try:
        edges = np.asarray(found["edges"], dtype=float)
        n = np.asarray(found["count"], dtype=float)
        conf = np.asarray([np.nan if v is None else v for v in found["confidence"]], float)
        acc = np.asarray([np.nan if v is None else v for v in found["accuracy"]], float)
    except (KeyError, TypeError, ValueError):
        return None
    k = len(edges) - 1
    if k < 1 or not len(n) == len(conf) == len(acc) or len(n) not in (k, k + 1):
        return None
    return edges, n, np.nan_to_num(conf * n), np.nan_to_num(acc * n)


# --- figure --------------------------------------------------------------------------------------


def reliability_figure(panels: list[Reliability], models: list[str]) -> Figure | None:
    """One reliability diagram per model: accuracy per confidence bin against the diagonal."""
    if not panels:
        return None
    colors = model_colors(models)
    with style():
        fig = Figure(figsize=(3.6 * len(panels) + 0.6, 4.0), layout="constrained")
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        for ax, panel in zip(axes, panels, strict=True):
            _panel(ax, panel, colors.get(panel.model, "0.4"))
        axes[0].set_ylabel("accuracy in the bin")
        fig.suptitle("Reliability on the test split (bins pooled over seeds)")
    return fig


def _shown_bins(p: Reliability) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean confidence, accuracy, count), each (K,): the bin of confidences of exactly 1.0
    drawn as part of the last bin."""
    n, conf, acc = p.count, np.nan_to_num(p.confidence), np.nan_to_num(p.accuracy)
    k = len(p.edges) - 1
    if len(n) == k + 1:
        conf_sum, right = conf * n, acc * n
        n, conf_sum, right = (np.append(x[: k - 1], x[k - 1] + x[k]) for x in (n, conf_sum, right))
        conf, acc = conf_sum / np.maximum(n, 1), right / np.maximum(n, 1)
    return conf, acc, n


def _panel(ax, p: Reliability, color: str) -> None:
    centres = (p.edges[:-1] + p.edges[1:]) / 2  # (K,)
    width = np.diff(p.edges)  # (K,)
    confidence, accuracy, n = _shown_bins(p)
    filled = n > 0
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="perfect calibration")
    ax.bar(
        centres[filled],
        accuracy[filled],
        width=width[filled] * 0.92,
        color=color,
        alpha=0.8,
        label="accuracy",
    )
    ax.scatter(
        confidence[filled], accuracy[filled], s=10, color="black", zorder=3,
        label="mean confidence",
    )  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("top-1 confidence")
    depth = "" if pd.isna(p.trainable_blocks) else f", last {int(p.trainable_blocks)} blocks"
    ax.set_title(
        f"{plain(p.model)}{depth}\n{count(p.num_train_images)} images, {p.seeds} seed"
        f"{'s' if p.seeds != 1 else ''}, ECE {pct(p.ece)}",
        fontsize=9.5,
    )
    ax.legend(loc="upper left", fontsize=8)


# --- the section ---------------------------------------------------------------------------------


def calibration_tables(ctx: ReportContext) -> dict[str, pd.DataFrame]:
    return {TABLE: calibration_table(ctx.data)}


def calibration_figures(ctx: ReportContext) -> dict[str, Figure | None]:
    return {FIGURE: reliability_figure(pooled_reliability(ctx.data), ctx.data.models)}


def render_calibration(ctx: ReportContext) -> str:
    frame = cached_table(ctx, TABLE, calibration_table)
    if frame.empty or not frame["n"].any():
        return note(
            "No completed run recorded a calibration error (runs written before cnnvit measured "
            "calibration have none), so there is nothing to show."
        )
    parts = [_pivot(ctx, frame)]
    if FIGURE in ctx.figures:
        caption = (
            "Each model at its largest training size, test images of all its seeds binned "
            "together: bars are the accuracy in each confidence bin, dots the bin's mean "
            "confidence; bars below the diagonal mean overconfidence. The last bin includes "
            "confidences of exactly 1."
        )
        parts.append(img(ctx.figures[FIGURE], "reliability diagrams", caption))
    parts.append(note(EXPLAIN, "note"))
    if (frame["n"] == 0).any():
        parts.append(note("—: runs written before cnnvit measured calibration have no ECE."))
    return join(parts)


def _pivot(ctx: ReportContext, frame: pd.DataFrame):
    def cell(r, model: str, blocks: object) -> str:
        return "—" if not r.n else f"{pm(r.test_ece_mean, r.test_ece_std)} (n={r.n})"

    return size_pivot(ctx, frame, "ECE on the test split", cell)
