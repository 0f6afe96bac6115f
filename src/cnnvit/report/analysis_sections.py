"""The report's analysis sections: one per registered analysis (:mod:`cnnvit.analyze.registry`)
the study enables or that has a folder under ``DIR/analysis/``.

Each analysis renders its own folder; this module decides what to show around it: the cells
analysed and how long it took (``run.json``), the error of a failed analysis (``error.txt``), or
how to enable an analysis the study did not run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cnnvit.analyze.registry import Analysis, all_analyses
from cnnvit.folders import AnalysisFolder, StudyFolder
from cnnvit.markup import Markup, join, note, tag
from cnnvit.report.section import Section

if TYPE_CHECKING:
    from cnnvit.report.context import ReportContext


def analysis_sections() -> list[Section]:
    """A section per registered analysis (shown when it ran or is enabled), then the list of
    those the study did not run."""
    sections = [
        Section(a.anchor, a.title, _renderer(a), shown=_shown(a.name)) for a in all_analyses()
    ]
    return [
        *sections,
        Section("analyses-not-run", "Analyses not run", render_not_run, shown=any_not_run),
    ]


def enabled_analyses(ctx: ReportContext) -> list[str]:
    listed = ctx.data.info.config.get("analysis") or []
    return [str(a) for a in listed] if isinstance(listed, list) else []


def _folder(ctx: ReportContext, name: str) -> AnalysisFolder:
    return StudyFolder(ctx.data.info.root).analysis(name)


def _shown(name: str) -> Callable[[ReportContext], bool]:
    def shown(ctx: ReportContext) -> bool:
        return name in enabled_analyses(ctx) or _folder(ctx, name).path.is_dir()

    return shown


def _not_run(ctx: ReportContext) -> list[Analysis]:
    return [a for a in all_analyses() if not _shown(a.name)(ctx)]


def any_not_run(ctx: ReportContext) -> bool:
    return bool(_not_run(ctx))


def render_not_run(ctx: ReportContext) -> Markup:
    rows = [
        tag(
            "li",
            join(
                [
                    tag("code", a.name),
                    f" ({a.title}): ",
                    tag("code", f"cnnvit {a.command.name}"),
                    " on run folders",
                ]
            ),
        )
        for a in _not_run(ctx)
    ]
    return join(
        [
            tag(
                "p",
                "This study did not enable these analyses (they take time its budget did not "
                "allow, or were not asked for). Add them to the study's `analysis:` list and run "
                "`cnnvit compare` again — trained cells are kept and only the analyses run — "
                "or run the command on two run folders:",
            ),
            tag("ul", join(rows)),
        ]
    )


def _renderer(item: Analysis) -> Callable[[ReportContext], Markup]:
    """``render(ctx)`` for the section of ``item``: its own rendering of its folder, after what
    was analysed; a note where it failed or has not run."""

    def render(ctx: ReportContext) -> Markup:
        folder = _folder(ctx, item.name)
        error = folder.last_error_line()
        if error is not None:
            return note(f"This analysis failed: {error} (traceback in {folder.error}).")
        if not folder.path.is_dir():
            return note(
                f"Enabled but not run yet: {folder.path} is missing (the analyses run after the "
                "cells have trained)."
            )
        return join([_provenance(folder), item.render(folder)])

    return render


def _provenance(folder: AnalysisFolder) -> Markup:
    run = folder.read_run()
    if run is None:
        return Markup("")
    cells = ", ".join(str(c) for c in run.get("cells") or [])
    seconds = run.get("seconds")
    took = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    return tag("p", f"Analysed cells: {cells}{took}.", class_="provenance")
