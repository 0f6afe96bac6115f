"""The study's analyses (``analysis: [gradcam, cka, ...]``), run once the cells have trained.

Each analysis looks at one trained cell per model — the largest training size and the first
seed unless ``analysis_options`` names others — and writes its numbers and figures to
``DIR/analysis/<name>/``, where the report's sections find them. A finished analysis records its
cells and settings in ``run.json``; a re-run with the same ones skips it, so adding an analysis
to a finished study costs only that analysis. A failing analysis writes ``error.txt`` (with the
traceback) and the study goes on: it must not cost the study its results.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnvit.folders import StudyFolder
from cnnvit.study.config import ANALYSES, Cell, StudyConfig
from cnnvit.ui import console

__all__ = ["ANALYSIS_DIR", "analysis_cells", "run_analyses"]

ANALYSIS_DIR = "analysis"
RUN_JSON = "run.json"
ERROR = "error.txt"


def analysis_cells(study: StudyConfig, grid: list[Cell]) -> list[Cell]:
    """One completed cell per model at the analysed size and seed, in study order."""
    from cnnvit.study.run import cell_status

    options = study.analysis_options
    fraction = options.fraction if options.fraction is not None else max(study.fractions)
    seed = options.seed if options.seed is not None else study.seeds[0]
    chosen: dict[str, Cell] = {}
    for cell in grid:
        if cell.fraction != fraction or cell.seed != seed or cell.model in chosen:
            continue
        if cell_status(Path(cell.config.output.dir)) == "completed":
            chosen[cell.model] = cell
    return list(chosen.values())


def run_analyses(
    study: StudyConfig, grid: list[Cell], out_dir: StudyFolder, *, progress: bool = True
) -> dict[str, str]:
    """Run every analysis the study enables; returns ``{name: done | unchanged | failed | ...}``."""
    if not study.analysis:
        return {}
    cells = analysis_cells(study, grid)
    if not cells:
        console.print("[yellow]no completed cell at the analysed size and seed: no analyses[/]")
        return {name: "no cells" for name in study.analysis}
    inputs = _Inputs(cells, progress)
    outcomes = {}
    for name in (a for a in ANALYSES if a in study.analysis):
        folder = out_dir.analysis(name).path
        settings = {
            "cells": [c.id for c in cells],
            "options": _options(study, name),
        }
        if _unchanged(folder, settings):
            console.print(f"[dim]analysis {name}: done earlier with the same cells, skipped[/]")
            outcomes[name] = "unchanged"
            continue
        outcomes[name] = _run_one(name, folder, settings, study, inputs)
    return outcomes


def _options(study: StudyConfig, name: str) -> dict[str, Any]:
    """The settings an analysis reads (changing any other one must not re-run it)."""
    options = study.analysis_options
    if name == "attention":
        return {"images": options.images}
    own = getattr(options, name, None)
    return own.model_dump(mode="json") if own is not None else {}


def _unchanged(folder: Path, settings: dict[str, Any]) -> bool:
    try:
        earlier = json.loads((folder / RUN_JSON).read_text())
    except (OSError, ValueError):
        return False
    return {k: earlier.get(k) for k in settings} == settings


def _run_one(
    name: str, folder: Path, settings: dict[str, Any], study: StudyConfig, inputs: _Inputs
) -> str:
    console.print(f"analysis {name} on {', '.join(settings['cells'])}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_JSON).unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        RUNNERS[name](study, inputs, folder)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # one analysis must not cost the study the others
        console.print(f"[red]analysis {name} failed:[/] {type(err).__name__}: {err}")
        (folder / ERROR).write_text("".join(traceback.format_exception(err)))
        return f"failed: {type(err).__name__}: {err}"
    (folder / ERROR).unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    record = {**settings, "seconds": round(seconds, 2), "finished_at": _now()}
    (folder / RUN_JSON).write_text(json.dumps(record, indent=2))
    console.print(f"analysis {name}: {seconds:.1f} s")
    return "done"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class _Inputs:
    """Models and images, loaded on first use and shared by the analyses."""

    def __init__(self, cells: list[Cell], progress: bool) -> None:
        self.cells = cells
        self.progress = progress
        self._subjects = None
        self._val = None

    @property
    def subjects(self):
        from cnnvit.analyze.subject import subject_from_run

        if self._subjects is None:
            self._subjects = [
                subject_from_run(c.config.output.dir, device=c.config.train.device, label=c.model)
                for c in self.cells
            ]
        return self._subjects

    @property
    def val(self):
        """The analysed cells' validation split (the same images for every cell of a study)."""
        from cnnvit.analyze.images import images_from_run

        if self._val is None:
            self._val = images_from_run(self.cells[0].config.output.dir, "val")
        return self._val

    def train(self, max_images: int | None):
        from cnnvit.analyze.images import images_from_run

        return images_from_run(self.cells[0].config.output.dir, "train", max_images=max_images)


# --- one function per analysis: the study's options -> the analysis's own call --------------


def _gradcam(study: StudyConfig, inputs: _Inputs, folder: Path) -> None:
    from cnnvit.analyze.cam import run_gradcam

    o = study.analysis_options.gradcam
    run_gradcam(
        inputs.subjects,
        inputs.val,
        folder,
        method=o.method,
        layers=o.layers,
        num_images=o.num_images,
        progress=inputs.progress,
    )


def _attention(study: StudyConfig, inputs: _Inputs, folder: Path) -> None:
    from cnnvit.analyze.attention import run_attention

    images = inputs.val.subset(study.analysis_options.images)
    run_attention(inputs.subjects, images, folder, progress=inputs.progress)


def _featuremaps(study: StudyConfig, inputs: _Inputs, folder: Path) -> None:
    from cnnvit.analyze.featuremaps import run_featuremaps

    run_featuremaps(inputs.subjects, inputs.val, folder, progress=inputs.progress)


def _cka(study: StudyConfig, inputs: _Inputs, folder: Path) -> None:
    from cnnvit.analyze.cka import run_cka

    o = study.analysis_options.cka
    images = inputs.val.subset(o.images)
    run_cka(
        inputs.subjects,
        images,
        folder,
        layers=o.layers,
        batch_size=o.batch_size,
        progress=inputs.progress,
    )


def _knn(study: StudyConfig, inputs: _Inputs, folder: Path) -> None:
    from cnnvit.analyze.knn import run_knn

    o = study.analysis_options.knn
    index = inputs.train(o.max_index)
    ks = tuple(k for k in o.ks if k <= len(index)) or (len(index),)
    if ks != tuple(o.ks):  # a tiny training set: k cannot exceed the index
        console.print(f"[yellow]kNN: {len(index)} training images, so k = {list(ks)}[/]")
    run_knn(
        inputs.subjects,
        index,
        inputs.val.subset(o.max_queries),
        folder,
        ks=ks,
        progress=inputs.progress,
    )


def _shape_bias(study: StudyConfig, inputs: _Inputs, folder: Path) -> None:
    from cnnvit.analyze.cue_conflict import run_shape_bias

    o = study.analysis_options.shape_bias
    run_shape_bias(
        inputs.subjects,
        None if o.folder is not None else inputs.val,
        folder,
        folder=o.folder,
        num_images=o.num_images,
        progress=inputs.progress,
    )


def _robustness(study: StudyConfig, inputs: _Inputs, folder: Path) -> None:
    from cnnvit.analyze.robustness import run_robustness

    o = study.analysis_options.robustness
    run_robustness(
        inputs.subjects,
        inputs.val.subset(o.images),
        folder,
        corruptions=o.corruptions,
        severities=tuple(o.severities),
        progress=inputs.progress,
    )


RUNNERS: dict[str, Callable[[StudyConfig, _Inputs, Path], None]] = {
    "gradcam": _gradcam,
    "attention": _attention,
    "featuremaps": _featuremaps,
    "cka": _cka,
    "knn": _knn,
    "shape_bias": _shape_bias,
    "robustness": _robustness,
}
