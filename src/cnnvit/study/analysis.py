"""The study's analyses (``analysis: [gradcam, cka, ...]``), run once the cells have trained.

Every registered analysis (:mod:`cnnvit.analyze.registry`) the study lists looks at one trained
cell per model — the largest training size and the first seed unless ``analysis_options`` names
others — and writes its numbers and figures to ``DIR/analysis/<name>/``, where the report's
sections find them. A finished analysis records its cells and settings in ``run.json``; a re-run
with the same ones skips it, so adding an analysis to a finished study costs only that analysis.
A failing analysis writes ``error.txt`` (with the traceback) and the study goes on: it must not
cost the study its results.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from cnnvit.analyze.images import images_from_run
from cnnvit.analyze.inputs import Inputs
from cnnvit.analyze.registry import Analysis, AnalysisOptions, all_analyses
from cnnvit.analyze.run import run_analysis
from cnnvit.analyze.subject import subject_from_run
from cnnvit.folders import AnalysisFolder, RunFolder, StudyFolder
from cnnvit.study.config import Cell, StudyConfig
from cnnvit.ui import console

__all__ = ["analysis_cells", "run_analyses"]


def analysis_cells(study: StudyConfig, grid: list[Cell]) -> list[Cell]:
    """One completed cell per model at the analysed size and seed, in study order."""
    options = study.analysis_options
    fraction = options.fraction if options.fraction is not None else max(study.fractions)
    seed = options.seed if options.seed is not None else study.seeds[0]
    chosen: dict[str, Cell] = {}
    for cell in grid:
        if cell.fraction != fraction or cell.seed != seed or cell.model in chosen:
            continue
        if RunFolder(cell.config.output.dir).status() == "completed":
            chosen[cell.model] = cell
    return list(chosen.values())


def run_analyses(
    study: StudyConfig, grid: list[Cell], folder: StudyFolder, *, progress: bool = True
) -> dict[str, str]:
    """Run every analysis the study enables; returns ``{name: done | unchanged | failed | ...}``."""
    if not study.analysis:
        return {}
    cells = analysis_cells(study, grid)
    if not cells:
        console.print("[yellow]no completed cell at the analysed size and seed: no analyses[/]")
        return {name: "no cells" for name in study.analysis}
    inputs = _inputs(cells, progress)
    outcomes = {}
    for item in (a for a in all_analyses() if a.name in study.analysis):
        options = study.analysis_options.of(item.name)
        settings = {"cells": [c.id for c in cells], "options": options.model_dump(mode="json")}
        target = folder.analysis(item.name)
        if target.unchanged(settings):
            console.print(
                f"[dim]analysis {item.name}: done earlier with the same cells, skipped[/]"
            )
            outcomes[item.name] = "unchanged"
            continue
        outcomes[item.name] = _run_one(item, options, target, settings, inputs)
    return outcomes


def _inputs(cells: list[Cell], progress: bool) -> Inputs:
    """The analysed cells' models, and their images: the first cell's splits (every cell of a
    study validates on the same images)."""
    first = cells[0].config.output.dir

    def subjects() -> list:
        return [
            subject_from_run(c.config.output.dir, device=c.config.train.device, label=c.model)
            for c in cells
        ]

    return Inputs(
        subjects,
        lambda split, count: images_from_run(first, split, max_images=count),
        progress=progress,
    )


def _run_one(
    item: Analysis,
    options: AnalysisOptions,
    folder: AnalysisFolder,
    settings: dict[str, Any],
    inputs: Inputs,
) -> str:
    console.print(f"analysis {item.name} on {', '.join(settings['cells'])}")
    folder.start()
    start = time.perf_counter()
    try:
        run_analysis(item, inputs, folder, options)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # one analysis must not cost the study the others
        console.print(f"[red]analysis {item.name} failed:[/] {type(err).__name__}: {err}")
        folder.fail("".join(traceback.format_exception(err)))
        return f"failed: {type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    folder.finish({**settings, "seconds": round(seconds, 2), "finished_at": _now()})
    console.print(f"analysis {item.name}: {seconds:.1f} s")
    return "done"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
