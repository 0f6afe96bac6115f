"""The report's sections on how the runs trained: the budget and whether each cell had
converged (``budget``), and every cell with its status (``cells``).

A cell still improving when its budget ran out is marked ``▲ still improving`` here, on the
accuracy figure and in the verdict: its accuracy is where training stopped, not where the model
would have ended, so a comparison that rests on it may change with a longer budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from cnnvit.formatting import count, is_missing, pct
from cnnvit.markup import Markup, join, note, table, tag
from cnnvit.report.header import budget_text
from cnnvit.report.layout import cached_table, model_cell, secs, size_rows
from cnnvit.report.tables import budget_table, cells_table
from cnnvit.stats.convergence import RULE as CONVERGENCE_RULE

if TYPE_CHECKING:
    from cnnvit.report.context import ReportContext

__all__ = [
    "IMPROVING",
    "STATUSES",
    "budget_tables",
    "cell_tables",
    "render_budget",
    "render_cells",
]

STATUSES = ("completed", "diverged", "failed", "running", "missing")
IMPROVING = "▲ still improving"
STEPS_NOTE = (
    "Steps are optimiser steps, one batch each; epochs are passes over the run's training "
    "subset (fractional where the budget ends inside an epoch). Under a budget of steps every "
    "training size gets the same number of steps, so a small training set is seen for many "
    "more epochs than a large one."
)


# --- budget and convergence ----------------------------------------------------------------------


def budget_tables(ctx: ReportContext) -> dict[str, pd.DataFrame]:
    return {"budget": budget_table(ctx.data)}


def render_budget(ctx: ReportContext) -> str:
    frame = cached_table(ctx, "budget", budget_table)
    if frame.empty:
        return note("No cell completed, so there is no training to describe yet.")
    headers = [
        "model",
        "training images",
        "seeds",
        "steps planned",
        "steps taken (mean)",
        "epochs (mean)",
        "stopped early",
        "still improving?",
    ]
    rows = size_rows(
        ctx,
        frame,
        lambda r: [
            count(r.steps_planned),
            _mean_count(r.steps_completed_mean),
            _epochs(r.epochs_completed_mean),
            f"{r.stopped_early} of {r.n}",
            _improving_text(r.still_improving, r.convergence_unknown, r.n),
        ],
    )
    parts = [
        tag("p", f"Budget: {budget_text(ctx)}."),
        table(headers, rows, classes=["name", *["num"] * 6, ""]),
        note(f"{IMPROVING}: {CONVERGENCE_RULE}", "note"),
        note(STEPS_NOTE, "note"),
    ]
    advice = _advice(ctx)
    if advice:
        parts.insert(2, note(f"Some runs were still improving when they stopped: {advice}."))
    return join(parts)


def _improving_text(flagged: int, unknown: int, n: int) -> str:
    if flagged:
        return f"{IMPROVING} ({flagged} of {n})"
    if unknown == n:
        return "cannot be told"
    return "no" if not unknown else f"no ({unknown} of {n} cannot be told)"


def _advice(ctx: ReportContext) -> str:
    """The convergence check's advice for the runs that were still improving, once each."""
    r = ctx.data.results
    flagged = r[(r["status"] == "completed") & r["still_improving"].fillna(False).astype(bool)]
    found = []
    for cell in flagged["cell"]:
        text = str((ctx.data.convergence.get(cell) or {}).get("advice") or "")
        if text and text not in found:
            found.append(text)
    return "; ".join(found)


def _mean_count(x: float) -> str:
    return "—" if is_missing(x) else f"{x:,.0f}"


def _epochs(x: float) -> str:
    return "—" if is_missing(x) else f"{x:,.1f}"


# --- cells ---------------------------------------------------------------------------------------


def cell_tables(ctx: ReportContext) -> dict[str, pd.DataFrame]:
    return {"cells": cells_table(ctx.data)}


def render_cells(ctx: ReportContext) -> str:
    cells = cached_table(ctx, "cells", cells_table)
    counts = cells["status"].value_counts()
    order = [*STATUSES, *(s for s in counts.index if s not in STATUSES)]
    summary = ", ".join(f"{counts[s]} {s}" for s in order if s in counts)
    improving = int(cells["still_improving"].fillna(False).astype(bool).sum())
    if improving:
        summary += f"; {improving} still improving when training stopped"
    headers = [
        "run folder",
        "model",
        "images",
        "seed",
        "status",
        "steps",
        "epochs",
        "test top-1",
        "training time",
        "error",
    ]
    rows = [_cell_row(ctx, r) for r in cells.itertuples()]
    classes = ["name", "name", "num", "num", "", "num", "num", "num", "num", "error"]
    return join(
        [tag("p", f"{len(cells)} cells: {summary}."), table(headers, rows, classes=classes)]
    )


def _cell_row(ctx: ReportContext, r) -> list[object]:
    status = str(r.status)
    badge = tag("span", status, class_=f"status status-{_css_word(status)}")
    if not pd.isna(r.still_improving) and bool(r.still_improving):
        badge = join([badge, " ", improving_marker()])
    error = "" if r.error is None or pd.isna(r.error) else str(r.error)
    return [
        tag("code", r.run_dir or r.cell),
        model_cell(ctx, r.model, r.trainable_blocks),
        count(r.num_train_images),
        r.seed,
        badge,
        count(r.steps_completed),
        _epochs(r.epochs_completed),
        pct(r.test_top1, 2),
        secs(r.train_seconds),
        error,
    ]


def _css_word(status: str) -> str:
    return status if status in STATUSES else "unknown"


def improving_marker() -> Markup:
    """The badge of a run still improving when it stopped."""
    return tag("span", IMPROVING, class_="status status-improving")
