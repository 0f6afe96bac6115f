"""Write a study's report from its folder: tables (CSV/Parquet), figures (PNG), report.html.

``cnnvit report DIR`` and the end of ``cnnvit compare`` both call :func:`write_report`; it
reads only files, so it works on a copied folder, without the models, and on a study where
some cells failed or never ran (sections say what is missing).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape  # a label like '[red]x' is not rich markup
from rich.table import Table

from cnnvit.folders import StudyFolder, write_text
from cnnvit.formatting import pm
from cnnvit.plotting import save_png
from cnnvit.report.analysis_summary import (
    analysis_headlines,
    columns_notes,
    format_headline,
    summary_columns,
)
from cnnvit.report.collect import load_study_data
from cnnvit.report.context import ReportContext
from cnnvit.report.header import render_header
from cnnvit.report.html import render_page
from cnnvit.report.section import Section
from cnnvit.report.sections import report_sections
from cnnvit.report.verdict import HeadToHead, head_to_heads, size_text
from cnnvit.stats.paired import SizeVerdict
from cnnvit.ui import at_least_width


def write_report(study_dir: Path | str, sections: Sequence[Section] | None = None) -> Path:
    """Build every output of the report under ``study_dir``; returns the path of report.html.

    Writes ``results.csv``/``results.parquet`` (one row per cell), ``summary.csv`` (aggregates
    over seeds), ``tables/*.csv``, ``figures/*.png`` and ``report.html``.
    """
    folder = StudyFolder(study_dir)
    data = load_study_data(folder.path)
    _write_frame(data.results, folder.results_csv, parquet=True)
    _write_frame(data.summary, folder.summary_csv)
    ctx = ReportContext(data)
    sections = report_sections() if sections is None else sections
    sections = [s for s in sections if s.is_shown(ctx)]
    for section in sections:
        _build_section_outputs(section, ctx, folder)
    page = render_page(ctx, sections, render_header(ctx))
    write_text(folder.report, page)  # a browser or a watcher never sees a half-written page
    return folder.report


def _build_section_outputs(section: Section, ctx: ReportContext, folder: StudyFolder) -> None:
    """Tables to tables/*.csv and figures to figures/*.png, kept in ``ctx`` for rendering."""
    if section.tables is not None:
        for name, frame in section.tables(ctx).items():
            ctx.tables[name] = frame
            _write_frame(frame, folder.tables / f"{name}.csv")
    if section.figures is not None:
        for name, fig in section.figures(ctx).items():
            path = folder.figures / f"{name}.png"
            if fig is None:
                # A figure that cannot be drawn now must not linger from an earlier build.
                path.unlink(missing_ok=True)
                continue
            ctx.figures[name] = save_png(fig, path)


def _write_frame(frame: pd.DataFrame, path: Path, *, parquet: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    if parquet:
        frame.to_parquet(path.with_suffix(".parquet"), index=False)


# --- terminal summary --------------------------------------------------------------------------


def print_summary(study_dir: Path | str, console: Console | None = None) -> None:
    """A rich table of per-model, per-size test accuracy (mean ± std) and cost, the head-to-head
    decision per size (difference, interval, outcome), then the report path."""
    console = console or Console()
    root = Path(study_dir)
    data = load_study_data(root)
    results, summary = data.results, data.summary
    improving = {
        _key(r.model, r.fraction, r.trainable_blocks)
        for r in results.itertuples()
        if r.status == "completed" and not pd.isna(r.still_improving) and bool(r.still_improving)
    }
    console.print(_summary_table(results, summary, improving))
    for pair in head_to_heads(data, data.families).values():
        if pair is not None and pair.verdicts:
            console.print(_pair_table(pair))
    bad = results[results["status"] != "completed"]
    if not bad.empty:
        counts = bad["status"].value_counts()
        listed = ", ".join(f"{n} {s}" for s, n in counts.items())
        console.print(f"[yellow]{len(bad)} of {len(results)} cells did not complete ({listed})[/]")
    analyses = _analysis_table(root)
    if analyses is not None:
        with at_least_width(100, console):  # 8 columns: not squeezed into a pipe's 80
            console.print(analyses)
    report = StudyFolder(root).report
    if report.is_file():
        console.print(f"Report: [bold]{report}[/]")
    else:
        console.print(f"[yellow]No report yet; write it with `cnnvit report {root}`[/]")


def _summary_table(results: pd.DataFrame, summary: pd.DataFrame, improving: set) -> Table:
    """One row per (model, size, depth) of the grid, in study order; '—' where none completed;
    ▲ where a run was still improving when training stopped."""
    depths = results["trainable_blocks"].notna().any()
    title = "Test accuracy and cost (mean over seeds)"
    if improving:
        title += "; ▲ a run still improving when it stopped"
    table = Table(title=title, title_justify="left")
    table.add_column("model")
    if depths:
        table.add_column("trainable blocks", justify="right")
    for name in ("images", "seeds", "test top-1", "train time", "peak memory"):
        table.add_column(name, justify="right")
    done = {_key(r.model, r.fraction, r.trainable_blocks): r for r in summary.itertuples()}
    planned: dict[tuple, int] = {}
    for r in results.itertuples():
        key = _key(r.model, r.fraction, r.trainable_blocks)
        planned[key] = planned.get(key, 0) + 1
    model_order = {m: i for i, m in enumerate(dict.fromkeys(results["model"]))}
    for key in sorted(
        planned, key=lambda k: (model_order[k[0]], -1 if k[2] is None else k[2], k[1])
    ):
        model, _, blocks = key
        row = done.get(key)
        cells = [escape(str(model))]
        if depths:
            cells.append("all" if blocks is None else str(blocks))
        cells += _summary_cells(row, planned[key], key in improving)
        table.add_row(*cells)
    return table


def _pair_table(pair: HeadToHead) -> Table:
    """The verdict's decision per size: A − B over seeds with its interval, the adjusted p and
    the outcome (see the report's verdict for the rule)."""
    depth = "" if pair.blocks is None else f", last {pair.blocks} blocks trainable"
    alpha = pair.verdicts[0].alpha
    table = Table(
        title=f"Head to head: {escape(pair.a)} − {escape(pair.b)}, test top-1 paired by seed"
        f"{depth} (α = {alpha:g}, Holm over sizes)",
        title_justify="left",
    )
    for name in ("images", "seeds", "A − B", "95 % interval", "p (Holm)", "outcome"):
        table.add_column(name, justify="left" if name == "outcome" else "right")
    for p, v in zip(pair.compared, pair.verdicts, strict=True):
        d = v.comparison.difference
        interval = "—" if d.n < 2 else f"{_signed(d.low)} to {_signed(d.high)}"
        table.add_row(
            size_text(p.images),
            str(d.n),
            f"{_signed(d.mean)} pts",
            interval,
            "—" if pd.isna(v.p_adjusted) else f"{v.p_adjusted:.2g}",
            escape(_outcome(v)),
        )
    return table


def _outcome(v: SizeVerdict) -> str:
    if v.outcome == "better":
        return f"{v.winner} better"
    if v.outcome == "indistinguishable":
        return "indistinguishable"
    more = "" if v.seeds_needed is None else f" (about {v.seeds_needed} would tell)"
    return f"too few seeds{more}"


def _signed(x: float) -> str:
    return f"{100 * x:+.1f}".replace("-", "−")


def _analysis_table(root: Path) -> Table | None:
    """The analyses' headline numbers per model (columns that were measured), or None."""
    frame = analysis_headlines(root).dropna(axis=1, how="all")
    if frame.empty or frame.columns.empty:
        return None
    notes = columns_notes(list(frame.columns))
    table = Table(
        title="Analyses" + (f" ({'; '.join(notes)})" if notes else ""), title_justify="left"
    )
    table.add_column("model")
    for column in frame.columns:
        table.add_column(summary_columns()[column].header, justify="right")
    for model, row in frame.iterrows():
        table.add_row(escape(str(model)), *(format_headline(c, row[c]) for c in frame.columns))
    return table


def _summary_cells(row, planned: int, improving: bool) -> list[str]:
    if row is None:
        return ["—", f"0/{planned}", "—", "—", "—"]
    return [
        "—" if pd.isna(row.num_train_images) else f"{int(row.num_train_images):,}",
        f"{row.n}/{planned}",
        pm(row.test_top1_mean, row.test_top1_std) + (" ▲" if improving else ""),
        "—" if pd.isna(row.train_seconds) else f"{row.train_seconds:.1f} s",
        "—" if pd.isna(row.peak_memory_mb) else f"{row.peak_memory_mb:,.0f} MB",
    ]


def _key(model: str, fraction: float, blocks: object) -> tuple[str, float, int | None]:
    # pd.NA (all layers trainable) neither equals itself nor hashes usefully: use None.
    return model, float(fraction), None if pd.isna(blocks) else int(blocks)
