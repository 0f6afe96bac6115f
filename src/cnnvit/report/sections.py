"""The report's sections, in reading order (:func:`report_sections`).

A section (:class:`cnnvit.report.section.Section`) is an id, a title, a ``render(ctx) -> html``
function and, optionally, the figures and tables it owns. Adding a study section is one
``Section(...)`` in ``STUDY_SECTIONS`` with its functions next to it; an analysis brings its own
section through the registry (:mod:`cnnvit.report.analysis_sections`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cnnvit.formatting import count, is_missing, pct, pm
from cnnvit.markup import Markup, esc, img, join, note, swatch, table, tag
from cnnvit.plotting import model_colors
from cnnvit.report import figures as figs
from cnnvit.report.agreement import (
    StudyAgreement,
    agreement_figures,
    agreement_tables,
    render_agreement,
    study_agreement,
)
from cnnvit.report.analysis_sections import analysis_sections
from cnnvit.report.analysis_summary import analysis_verdict
from cnnvit.report.collect import StudyData
from cnnvit.report.profile_section import profile_figures, profile_tables, render_profile
from cnnvit.report.section import Section
from cnnvit.report.tables import (
    accuracy_table,
    cells_table,
    efficiency_table,
    final_metrics_table,
    largest_fraction_cells,
)
from cnnvit.report.verdict import (
    METHOD_NOTE,
    Crossing,
    find_crossings,
    format_seconds,
    head_to_head,
    verdict,
)

STATUSES = ("completed", "diverged", "failed", "running", "missing")


@dataclass
class ReportContext:
    """What every section sees: the study's data and the figures/tables already built."""

    data: StudyData
    figures: dict[str, bytes] = field(default_factory=dict)  # name -> PNG bytes
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # name -> table

    @property
    def families(self) -> dict[str, str]:
        """Model label -> family, as the runs recorded it (picks the head-to-head pair among 3+
        models)."""
        return self.data.families

    @cached_property
    def verdict(self) -> list[str]:
        lines = verdict(self.data.summary, self.data.models, self.families)
        return lines + analysis_verdict(self.data.info.root)

    @cached_property
    def crossings(self) -> dict[object, list[Crossing]]:
        """Crossings of the head-to-head pair, by trainable_blocks value (None = all)."""
        out: dict[object, list[Crossing]] = {}
        summary = self.data.summary
        for blocks, group in summary.groupby("trainable_blocks", sort=False, dropna=False):
            pair = head_to_head(group, self.data.models, self.families)
            if pair is not None:
                out[None if pd.isna(blocks) else int(blocks)] = find_crossings(group, *pair)
        return out

    @cached_property
    def colors(self) -> dict[str, str]:
        return model_colors(self.data.models)

    def swatch(self, model: str) -> Markup:
        """The model's colour square (grey for a model the study does not list)."""
        return swatch(self.colors.get(model, "#999999"))

    @cached_property
    def agreement(self) -> StudyAgreement:
        """Every pair of models compared on the same images, per seed (agreement section)."""
        return study_agreement(self.data, self.families)


# --- header ----------------------------------------------------------------------------------


def render_header(ctx: ReportContext) -> Markup:
    """Study name, dataset, device, versions, dates and the exact command."""
    info, envs = ctx.data.info, ctx.data.environments
    counts = ctx.data.results["status"].value_counts()
    rows = [
        ("Dataset", _dataset(ctx)),
        ("Models", _model_names(ctx)),
        ("Training sizes", _sizes(ctx)),
        ("Validation", _validation(ctx)),
        ("Seeds", ", ".join(str(s) for s in dict.fromkeys(c.seed for c in info.cells))),
        ("Device", _distinct(envs, "device_name", "device") or "unknown (no run started)"),
        ("Precision", _distinct(envs, "dtype") or "unknown"),
        ("Versions", _versions(envs)),
        ("Git revision", _distinct(envs, "git_revision") or "unknown"),
        ("Started", info.started_at or "unknown"),
        ("Finished", info.finished_at or "not finished"),
        ("Cells", f"{counts.get('completed', 0)} of {len(ctx.data.results)} completed"),
        ("Command", tag("code", info.command or "unknown")),
    ]
    meta = join(join([tag("dt", k), tag("dd", v)]) for k, v in rows)
    subtitle = "CNN versus Vision Transformer study report, written by cnnvit"
    return Markup(
        f"<header>{tag('h1', info.name)}{tag('p', subtitle, class_='subtitle')}"
        f'<dl class="meta">{meta}</dl></header>'
    )


def _dataset(ctx: ReportContext) -> str:
    info = ctx.data.info
    data_cfg = info.config.get("data") or {}
    classes = data_cfg.get("classes") if isinstance(data_cfg, dict) else None
    spec = info.data_spec or "unknown"
    return f"{spec} (classes: {', '.join(map(str, classes))})" if classes else spec


def _model_names(ctx: ReportContext) -> Markup:
    names = ctx.data.info.model_names
    parts = []
    for label in ctx.data.models:
        name = names.get(label, label)
        text = label if name == label else f"{label} ({name})"
        parts.append(join([ctx.swatch(label), esc(text)]))
    return Markup(", ".join(parts))


def _sizes(ctx: ReportContext) -> str:
    fractions = sorted({c.fraction for c in ctx.data.info.cells})
    images = ctx.data.results.groupby("fraction")["num_train_images"].median()
    out = []
    for f in fractions:
        n = images.get(f, np.nan)
        out.append(f"{f:g}" + ("" if pd.isna(n) else f" ({int(n):,} images)"))
    return ", ".join(out)


def _validation(ctx: ReportContext) -> str:
    counts = ctx.data.results["num_val_images"].dropna().unique()
    if len(counts) == 0:
        return "unknown (no run finished)"
    return ", ".join(f"{int(n):,}" for n in sorted(counts)) + " images"


def _distinct(envs: dict[str, dict], *keys: str) -> str:
    """The distinct values of a key over all runs (several means a mixed study: say so)."""
    values = []
    for env in envs.values():
        value = next((env[k] for k in keys if env.get(k)), None)
        if value is not None and str(value) not in values:
            values.append(str(value))
    return "; ".join(values)


def _versions(envs: dict[str, dict]) -> str:
    keys = ("python", "torch", "torchvision", "timm", "cnnvit")
    parts = [f"{k} {_distinct(envs, k)}" for k in keys if _distinct(envs, k)]
    return ", ".join(parts) or "unknown"


# --- verdict -----------------------------------------------------------------------------------


def render_verdict(ctx: ReportContext) -> str:
    items = join(tag("li", line) for line in ctx.verdict)
    return join([Markup(f'<ul class="verdict">{items}</ul>'), note(METHOD_NOTE, "note")])


# --- accuracy against training images ---------------------------------------------------------


def accuracy_figures(ctx: ReportContext) -> dict[str, Figure | None]:
    fig = figs.accuracy_vs_images(ctx.data.summary, ctx.data.models, crossings=ctx.crossings)
    return {"accuracy_vs_images": fig}


def accuracy_tables(ctx: ReportContext) -> dict[str, pd.DataFrame]:
    return {"accuracy": accuracy_table(ctx.data)}


def render_accuracy(ctx: ReportContext) -> str:
    if "accuracy_vs_images" not in ctx.figures:
        return note("No cell completed, so there is no accuracy to plot yet.")
    caption = (
        "Mean final validation top-1 over seeds; the band is ±1 standard deviation over seeds; "
        "a dotted line marks where the head-to-head curves cross."
    )
    parts = [img(ctx.figures["accuracy_vs_images"], "accuracy against training images", caption)]
    parts.append(_accuracy_pivot(ctx))
    return join(parts)


def _accuracy_pivot(ctx: ReportContext) -> Markup:
    """Models as rows, training sizes as columns: mean ± std (seeds)."""
    acc = _table(ctx, "accuracy", accuracy_table)
    fractions = sorted(set(acc["fraction"]))
    sizes = acc.groupby("fraction")["num_train_images"].median()
    headers = ["model", *(_size_header(f, sizes.get(f)) for f in fractions)]
    rows = []
    for (model, blocks), group in _by_model(ctx, acc):
        by_fraction = {r.fraction: r for r in group.itertuples()}
        row: list[object] = [_model_cell(ctx, model, blocks)]
        for f in fractions:
            r = by_fraction.get(f)
            row.append(
                "—" if r is None else f"{pm(r.final_val_top1_mean, r.final_val_top1_std)} (n={r.n})"
            )
        rows.append(row)
    return table(headers, rows, classes=["name", *["num"] * len(fractions)])


def _size_header(fraction: float, images: object) -> str:
    if images is None or pd.isna(images):
        return f"fraction {fraction:g}"
    return f"{int(images):,} images"


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
    caption = "Per epoch, one row per training size: thin lines are single seeds, bold their mean."
    return img(ctx.figures["learning_curves"], "learning curves", caption)


# --- efficiency ----------------------------------------------------------------------------------


def efficiency_tables(ctx: ReportContext) -> dict[str, pd.DataFrame]:
    return {"efficiency": efficiency_table(ctx.data)}


def render_efficiency(ctx: ReportContext) -> str:
    eff = _table(ctx, "efficiency", efficiency_table)
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
    rows = []
    for (model, blocks), group in _by_model(ctx, eff):
        for r in group.sort_values("fraction").itertuples():
            rows.append(
                [
                    _model_cell(ctx, model, blocks),
                    count(r.num_train_images),
                    r.n,
                    _params(r.params_total),
                    _params(r.params_trainable),
                    _secs(r.mean_epoch_seconds),
                    _secs(r.train_seconds),
                    _mb(r.peak_memory_mb),
                ]
            )
    explain = note(
        "Means over completed seeds. Training time is the whole run (all epochs, with the "
        "per-epoch validation); peak memory is the training process's peak on its device "
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
        "Validation set, the first completed seed of each model at its largest training size. "
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
    final = _table(ctx, "final_metrics", final_metrics_table)
    if final.empty:
        return note("No completed run has a metrics.json, so there are no final metrics.")
    headers = [
        "model",
        "training images",
        "seeds",
        "accuracy",
        "precision",
        "recall",
        "F1",
        "top-5",
    ]
    rows = []
    for r in final.itertuples():
        rows.append(
            [
                _model_cell(ctx, r.model, r.trainable_blocks),
                count(r.num_train_images),
                r.n,
                *(
                    pm(getattr(r, f"{m}_mean"), getattr(r, f"{m}_std"))
                    for m in ("accuracy", "precision", "recall", "f1", "top5")
                ),
            ]
        )
    explain = note(
        "Each model at its largest training size; mean ± standard deviation over seeds. "
        "Precision, recall and F1 are macro averages over classes (metrics.json).",
        "note",
    )
    return join([table(headers, rows, classes=["name", *["num"] * 7]), explain])


# --- cells ---------------------------------------------------------------------------------------


def cell_tables(ctx: ReportContext) -> dict[str, pd.DataFrame]:
    return {"cells": cells_table(ctx.data)}


def render_cells(ctx: ReportContext) -> str:
    cells = _table(ctx, "cells", cells_table)
    counts = cells["status"].value_counts()
    order = [*STATUSES, *(s for s in counts.index if s not in STATUSES)]
    summary = ", ".join(f"{counts[s]} {s}" for s in order if s in counts)
    headers = [
        "run folder",
        "model",
        "images",
        "seed",
        "status",
        "epochs",
        "final top-1",
        "training time",
        "error",
    ]
    rows = []
    for r in cells.itertuples():
        status = str(r.status)
        badge = tag("span", status, class_=f"status status-{_css_word(status)}")
        error = "" if r.error is None or pd.isna(r.error) else str(r.error)
        rows.append(
            [
                tag("code", r.run_dir or r.cell),
                _model_cell(ctx, r.model, r.trainable_blocks),
                count(r.num_train_images),
                r.seed,
                badge,
                count(r.epochs_completed),
                pct(r.final_val_top1, 2),
                _secs(r.train_seconds),
                error,
            ]
        )
    classes = ["name", "name", "num", "num", "", "num", "num", "num", "error"]
    return join(
        [tag("p", f"{len(cells)} cells: {summary}."), table(headers, rows, classes=classes)]
    )


def _css_word(status: str) -> str:
    return status if status in STATUSES else "unknown"


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
    Section("learning-curves", "Learning curves", render_curves, figures=curve_figures),
    Section("efficiency", "Efficiency", render_efficiency, tables=efficiency_tables),
    Section(
        "cost-profile",
        "Cost profile",
        render_profile,
        figures=profile_figures,
        tables=profile_tables,
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


# --- formatting ----------------------------------------------------------------------------------


def _table(ctx: ReportContext, name: str, build: Callable[[StudyData], pd.DataFrame]):
    """The table ``write_report`` built, or a fresh one where a section renders alone."""
    built = ctx.tables.get(name)
    return build(ctx.data) if built is None else built


def _by_model(ctx: ReportContext, frame: pd.DataFrame):
    """Groups of ``frame`` by (model, trainable_blocks), in study order of models."""
    order = {m: i for i, m in enumerate(ctx.data.models)}
    groups = list(frame.groupby(["model", "trainable_blocks"], sort=False, dropna=False))
    return sorted(
        groups,
        key=lambda g: (order.get(g[0][0], len(order)), -1 if pd.isna(g[0][1]) else g[0][1]),
    )


def _model_cell(ctx: ReportContext, model: str, blocks: object) -> Markup:
    text = model if pd.isna(blocks) else f"{model}, last {int(blocks)} blocks"
    return join([ctx.swatch(model), esc(text)])


def _params(p: float) -> str:
    if is_missing(p):
        return "—"
    return f"{p / 1e6:.2f} M" if p < 100e6 else f"{p / 1e6:.0f} M"


def _secs(s: float) -> str:
    return "—" if is_missing(s) else format_seconds(s)


def _mb(mb: float) -> str:
    return "—" if is_missing(mb) else f"{mb:,.0f} MB"
