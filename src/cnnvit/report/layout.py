"""Small pieces the report's sections share: a section's table (built once by
``write_report``), rows grouped by model in study order, a model's cell with its colour, and
numbers formatted for tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd

from cnnvit.formatting import count, is_missing
from cnnvit.markup import Markup, esc, join, table
from cnnvit.report.collect import StudyData
from cnnvit.report.verdict import format_seconds

if TYPE_CHECKING:
    from cnnvit.report.context import ReportContext

__all__ = [
    "by_model",
    "cached_table",
    "mb",
    "model_cell",
    "params",
    "secs",
    "size_pivot",
    "size_rows",
]


def cached_table(ctx: ReportContext, name: str, build: Callable[[StudyData], pd.DataFrame]):
    """The table ``write_report`` built, or a fresh one where a section renders alone."""
    built = ctx.tables.get(name)
    return build(ctx.data) if built is None else built


def by_model(ctx: ReportContext, frame: pd.DataFrame):
    """Groups of ``frame`` by (model, trainable_blocks), in study order of models."""
    order = {m: i for i, m in enumerate(ctx.data.models)}
    groups = list(frame.groupby(["model", "trainable_blocks"], sort=False, dropna=False))
    return sorted(
        groups,
        key=lambda g: (order.get(g[0][0], len(order)), -1 if pd.isna(g[0][1]) else g[0][1]),
    )


def size_rows(
    ctx: ReportContext, frame: pd.DataFrame, cells: Callable[[Any], list[object]]
) -> list[list[object]]:
    """One table row per model (and depth) and training size of ``frame``, in study order: the
    model, its training images, its seeds, then ``cells(row)``."""
    rows = []
    for (model, blocks), group in by_model(ctx, frame):
        for r in group.sort_values("fraction").itertuples():
            rows.append([model_cell(ctx, model, blocks), count(r.num_train_images), r.n, *cells(r)])
    return rows


def size_pivot(
    ctx: ReportContext,
    frame: pd.DataFrame,
    corner: str,
    cell: Callable[[Any, str, object], str],
) -> Markup:
    """Models as rows, training sizes as columns; ``cell(row, model, blocks)`` is the text of
    one (model, size), "—" where that size has no row."""
    fractions = sorted(set(frame["fraction"]))
    sizes = frame.groupby("fraction")["num_train_images"].median()
    headers = [corner, *(_size_header(f, sizes.get(f)) for f in fractions)]
    rows = []
    for (model, blocks), group in by_model(ctx, frame):
        found = {r.fraction: r for r in group.itertuples()}
        row: list[object] = [model_cell(ctx, model, blocks)]
        row += ["—" if found.get(f) is None else cell(found[f], model, blocks) for f in fractions]
        rows.append(row)
    return table(headers, rows, classes=["name", *["num"] * len(fractions)])


def _size_header(fraction: float, images: object) -> str:
    if images is None or pd.isna(images):
        return f"fraction {fraction:g}"
    return f"{int(images):,} images"


def model_cell(ctx: ReportContext, model: str, blocks: object) -> Markup:
    text = model if pd.isna(blocks) else f"{model}, last {int(blocks)} blocks"
    return join([ctx.swatch(model), esc(text)])


def params(p: float) -> str:
    if is_missing(p):
        return "—"
    return f"{p / 1e6:.2f} M" if p < 100e6 else f"{p / 1e6:.0f} M"


def secs(s: float) -> str:
    return "—" if is_missing(s) else format_seconds(s)


def mb(x: float) -> str:
    return "—" if is_missing(x) else f"{x:,.0f} MB"
