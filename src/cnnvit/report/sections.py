"""The report's sections, in reading order (:func:`report_sections`).

A section (:class:`cnnvit.report.section.Section`) is an id, a title, a ``render(ctx) -> html``
function and, optionally, the figures and tables it owns. Adding a study section is one
``Section(...)`` in ``STUDY_SECTIONS`` with its functions next to it; an analysis brings its own
section through the registry (:mod:`cnnvit.report.analysis_sections`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cnnvit.formatting import count, pm
from cnnvit.markup import Markup, img, join, note, table, tag
from cnnvit.report import figures as figs
from cnnvit.report.agreement import agreement_figures, agreement_tables, render_agreement
from cnnvit.report.analysis_sections import analysis_sections
from cnnvit.report.calibration import calibration_figures, calibration_tables, render_calibration
from cnnvit.report.context import ReportContext
from cnnvit.report.header import render_header
from cnnvit.report.layout import cached_table, mb, model_cell, params, secs, size_pivot, size_rows
from cnnvit.report.learning_fit import METHOD as CURVE_METHOD
from cnnvit.report.learning_fit import TABLE as CURVE_TABLE
from cnnvit.report.learning_fit import curve_table
from cnnvit.report.profile_section import profile_figures, profile_tables, render_profile
from cnnvit.report.section import Section
from cnnvit.report.tables import (
    accuracy_table,
    efficiency_table,
    final_metrics_table,
    largest_fraction_cells,
)
from cnnvit.report.training import budget_tables, cell_tables, render_budget, render_cells
from cnnvit.report.tuning import render_tuning, tuning_shown, tuning_tables
from cnnvit.report.verdict import METHOD_NOTE

__all__ = ["ReportContext", "render_header", "report_sections"]


# --- verdict -----------------------------------------------------------------------------------


def render_verdict(ctx: ReportContext) -> str:
    items = join(tag("li", line) for line in ctx.verdict)
    parts = [Markup(f'<ul class="verdict">{items}</ul>'), note(METHOD_NOTE, "note")]
    if any(c is not None for c in ctx.curves.values()):
        parts.append(note(CURVE_METHOD, "note"))
    return join(parts)


# --- accuracy against training images ---------------------------------------------------------


def accuracy_figures(ctx: ReportContext) -> dict[str, Figure | None]:
    fig = figs.accuracy_vs_images(
        ctx.data.summary, ctx.data.models, curves=ctx.curves, improving=ctx.still_improving
    )
    return {"accuracy_vs_images": fig}


def accuracy_tables(ctx: ReportContext) -> dict[str, pd.DataFrame]:
    return {"accuracy": accuracy_table(ctx.data), CURVE_TABLE: curve_table(ctx.curves)}


def render_accuracy(ctx: ReportContext) -> str:
    if "accuracy_vs_images" not in ctx.figures:
        return note("No cell completed, so there is no accuracy to plot yet.")
    caption = (
        "Test top-1: dots are the mean over seeds, bars ±1 standard deviation over seeds. Lines "
        "are the head-to-head models' fitted learning curves (1 − the fitted test error), "
        "bands their 95 % interval over resamples of the seeds, dashed where extrapolated "
        "beyond the largest measured size (never past 10×); a dotted line marks where the "
        "fitted curves cross; ▲ marks a size where a run was still improving when training "
        "stopped."
    )
    parts = [img(ctx.figures["accuracy_vs_images"], "accuracy against training images", caption)]
    parts.append(_accuracy_pivot(ctx))
    if any(c is not None for c in ctx.curves.values()):
        parts.append(
            note(
                f"The fitted curves' numbers are in tables/{CURVE_TABLE}.csv (one row per model: "
                "a, b with its interval, c, the crossover and the images to match, each with its "
                "interval).",
                "note",
            )
        )
    return join(parts)


def _accuracy_pivot(ctx: ReportContext) -> Markup:
    """Models as rows, training sizes as columns: mean ± std (seeds) of the test top-1."""

    def cell(r, model: str, blocks: object) -> str:
        text = f"{pm(r.test_top1_mean, r.test_top1_std)} (n={r.n})"
        if (model, float(r.fraction), _depth(blocks)) in ctx.still_improving:
            text += " ▲"
        return text

    return size_pivot(ctx, cached_table(ctx, "accuracy", accuracy_table), "test top-1", cell)


def _depth(blocks: object) -> object:
    return None if pd.isna(blocks) else int(blocks)


# --- learning curves ---------------------------------------------------------------------------


def curve_figures(ctx: ReportContext) -> dict[str, Figure | None]:
    curves = ctx.data.curves
    if not curves.empty:
        sizes = ctx.data.results.set_index("cell")["num_train_images"]
        curves = curves.assign(num_train_images=curves["cell"].map(sizes))
    return {"learning_curves": figs.learning_curves(curves, ctx.data.models)}


def render_curves(ctx: ReportContext) -> str:
    if "learning_curves" not in ctx.figures:
        return note("No completed run has an epoch log (epochs.csv), so there are no curves.")
    curves = ctx.data.curves
    axis = figs.curve_axis(curves)
    caption = (
        f"Selection accuracy (the selection split, scored during training) and training loss "
        f"against {'optimiser steps' if axis == 'step' else 'epochs'}, one row per training "
        "size: thin lines are single seeds, bold their mean."
    )
    parts = [img(ctx.figures["learning_curves"], "learning curves", caption)]
    if (curves["scored_on"] == "test").any():
        parts.append(
            note(
                "Runs written before the three-way split scored the test split during training "
                "(their log's val_acc), and chose their best epoch on it; their rows are labelled "
                "so."
            )
        )
    return join(parts)


# --- efficiency ----------------------------------------------------------------------------------


def efficiency_tables(ctx: ReportContext) -> dict[str, pd.DataFrame]:
    return {"efficiency": efficiency_table(ctx.data)}


def render_efficiency(ctx: ReportContext) -> str:
    eff = cached_table(ctx, "efficiency", efficiency_table)
    if eff.empty:
        return note("No cell completed, so there are no costs to show.")
    headers = [
        "model",
        "training images",
        "seeds",
        "parameters",
        "trainable",
        "time / epoch",
        "training time",
        "peak memory",
    ]
    rows = size_rows(
        ctx,
        eff,
        lambda r: [
            params(r.params_total),
            params(r.params_trainable),
            secs(r.mean_epoch_seconds),
            secs(r.train_seconds),
            mb(r.peak_memory_mb),
        ],
    )
    explain = note(
        "Means over completed seeds. Training time is the whole run (every step, with the "
        "scores of the selection split); peak memory is the training process's peak on its device "
        "(the GPU allocator peak on a GPU, the resident-set peak on a CPU).",
        "note",
    )
    return join([table(headers, rows, classes=["name", *["num"] * 7]), explain])


# --- confusion matrices --------------------------------------------------------------------------


def confusion_figures(ctx: ReportContext) -> dict[str, Figure | None]:
    panels = _confusion_panels(ctx)
    return {"confusion_matrices": figs.confusion_matrices(panels, ctx.data.models)}


def _confusion_panels(ctx: ReportContext) -> list[figs.ConfusionPanel]:
    """Per model: the first completed seed at its largest training size."""
    cells = largest_fraction_cells(ctx.data)
    panels = []
    for model in ctx.data.models:
        mine = cells[cells["model"] == model]
        if mine.empty:
            continue
        row = mine[mine["fraction"] == mine["fraction"].max()].iloc[0]
        metrics = ctx.data.metrics[row["cell"]]
        counts = np.asarray(metrics.get("confusion_matrix") or [], dtype=np.int64)
        if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.size == 0:
            continue
        classes = [str(c) for c in metrics.get("classes") or range(counts.shape[0])]
        title = f"{model}: {count(row['num_train_images'])} images, seed {row['seed']}"
        panels.append(figs.ConfusionPanel(model, title, classes, counts))
    return panels


def render_confusion(ctx: ReportContext) -> str:
    if "confusion_matrices" not in ctx.figures:
        return note("No completed run has a metrics.json, so there is no confusion matrix.")
    shown = {p.model for p in _confusion_panels(ctx)}
    missing = [m for m in ctx.data.models if m not in shown]
    caption = (
        "Test split, the first completed seed of each model at its largest training size. "
        "Colour: share of the true class (row); numbers: image counts."
    )
    parts = [img(ctx.figures["confusion_matrices"], "confusion matrices", caption)]
    if missing:
        parts.append(note(f"No confusion matrix for {', '.join(missing)}: no completed run."))
    return join(parts)


# --- final metrics -------------------------------------------------------------------------------


def final_metric_tables(ctx: ReportContext) -> dict[str, pd.DataFrame]:
    return {"final_metrics": final_metrics_table(ctx.data)}


def render_final_metrics(ctx: ReportContext) -> str:
    final = cached_table(ctx, "final_metrics", final_metrics_table)
    if final.empty:
        return note("No completed run has a metrics.json, so there are no final metrics.")
    headers = [
        "model",
        "training images",
        "seeds",
        "test top-1",
        "precision",
        "recall",
        "F1",
        "top-5",
    ]
    rows = []
    for r in final.itertuples():
        rows.append(
            [
                model_cell(ctx, r.model, r.trainable_blocks),
                count(r.num_train_images),
                r.n,
                *(
                    pm(getattr(r, f"{m}_mean"), getattr(r, f"{m}_std"))
                    for m in ("accuracy", "precision", "recall", "f1", "top5")
                ),
            ]
        )
    explain = note(
        "Each model at its largest training size, on the test split; mean ± standard deviation "
        "over seeds. Precision, recall and F1 are macro averages over classes (metrics.json).",
        "note",
    )
    return join([table(headers, rows, classes=["name", *["num"] * 7]), explain])


# --- the list ------------------------------------------------------------------------------------

STUDY_SECTIONS: list[Section] = [
    Section("verdict", "Verdict", render_verdict),
    Section(
        "accuracy",
        "Accuracy against training images",
        render_accuracy,
        figures=accuracy_figures,
        tables=accuracy_tables,
    ),
    Section(
        "learning-curves",
        "Training curves (selection accuracy)",
        render_curves,
        figures=curve_figures,
    ),
    Section("budget", "Training budget and convergence", render_budget, tables=budget_tables),
    Section("tuning", "Recipe tuning", render_tuning, tables=tuning_tables, shown=tuning_shown),
    Section("efficiency", "Efficiency", render_efficiency, tables=efficiency_tables),
    Section(
        "cost-profile",
        "Cost profile",
        render_profile,
        figures=profile_figures,
        tables=profile_tables,
    ),
    Section(
        "calibration",
        "Calibration",
        render_calibration,
        figures=calibration_figures,
        tables=calibration_tables,
    ),
    Section("confusion", "Confusion matrices", render_confusion, figures=confusion_figures),
    Section("final-metrics", "Final metrics", render_final_metrics, tables=final_metric_tables),
    Section(
        "agreement",
        "Agreement",
        render_agreement,
        figures=agreement_figures,
        tables=agreement_tables,
    ),
]
CELLS = Section("cells", "Cells", render_cells, tables=cell_tables)


def report_sections() -> list[Section]:
    """The report's sections in reading order: the study's, one per registered analysis (and
    those not run), then every cell."""
    return [*STUDY_SECTIONS, *analysis_sections(), CELLS]
