"""``cnnvit compare``: run every cell of a study into ``DIR/runs/<cell>``, then write the report.

With ``tuning.enabled`` each model's recipe is searched first (:mod:`cnnvit.study.tuning`,
trials under ``DIR/tuning/``, run and skipped like cells) and the cells train with the result.

The cells run where ``executor`` says (:mod:`cnnvit.study.executors`: one after another here,
as Ray tasks, or as a SLURM job array); this process holds the study folder and builds
everything after training. A cell that diverges or fails is recorded (its ``results.json``
says so) and the study goes on. Re-running the same command, with any executor, skips finished
cells (completed or diverged: both are final for a deterministic recipe), resumes an
interrupted one from its last checkpoint, and retries a failed one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cnnvit.config import ProfileConfig
from cnnvit.folders import RunFolder, RunFolderError, StudyFolder, write_text
from cnnvit.locks import writing
from cnnvit.profile.profiler import profile_run, require_runtimes
from cnnvit.study.analysis import run_analyses
from cnnvit.study.cell import CellOutcome, cell_status, run_cell
from cnnvit.study.config import Cell, StudyConfig, StudyProfile, cells
from cnnvit.study.disagreements import save_disagreement_images
from cnnvit.study.executors import Executor, Tracker, open_executor
from cnnvit.study.tuning import tune
from cnnvit.train.trackers import log_study_figures, prepare_trackers, require_trackers
from cnnvit.ui import console

__all__ = ["CellOutcome", "cell_status", "profile_models", "run_cell", "run_study"]


def run_study(
    study: StudyConfig,
    out_dir: Path,
    *,
    command: str,
    progress: bool = True,
    then: Callable[[Path], object] | None = None,
) -> list[CellOutcome]:
    """Run (or continue) every cell of ``study`` under ``out_dir``, then ``then(out_dir)``
    (the report), as the one process writing the folder (:mod:`cnnvit.locks`: a second
    ``compare`` on it is refused before it touches anything)."""
    require_trackers(study.recipe.output.loggers)  # a missing one is refused before any cell
    if study.profile.enabled:
        require_runtimes(study.profile)  # profile.runtimes: onnxruntime needs cnnvit[onnx]
    # Workers elsewhere find the run folders by their absolute path (on a shared filesystem).
    folder = StudyFolder(out_dir if study.executor.kind == "local" else out_dir.resolve())
    with writing(folder.path, folder.lock):
        outcomes = _run_study(study, folder, command=command, progress=progress)
        if then is not None:
            then(folder.path)
            log_study_figures(study.recipe.output.loggers, folder.path, study.name)
    return outcomes


def _run_study(
    study: StudyConfig, folder: StudyFolder, *, command: str, progress: bool
) -> list[CellOutcome]:
    planned = cells(study, folder.path)  # a study that cannot be laid out claims no folder,
    with open_executor(study.executor, folder.path) as executor:  # nor one that cannot run
        _claim_folder(study, folder)
        _write_study_json(folder, study, planned, command, finished=False)
        prepare_trackers(study.recipe.output.loggers, folder.path, study.name)

        def trials(batch: Sequence[Cell]) -> list[str]:
            return [o.status for o in _run_cells(executor, batch, "trials", progress)]

        tuned = tune(study, folder, trials)
        grid = cells(study, folder.path, tuned)
        outcomes = _run_cells(executor, grid, "cells", progress)
    if study.profile.enabled:
        profile_models(study, grid, progress=progress)
    save_disagreement_images(folder)
    run_analyses(study, grid, folder, progress=progress)
    _write_study_json(folder, study, grid, command, finished=True)
    return outcomes


def _run_cells(
    executor: Executor, batch: Sequence[Cell], label: str, progress: bool
) -> list[CellOutcome]:
    with Tracker.shown(label, len(batch), progress) as tracker:
        return executor.run(batch, tracker)


def profile_models(study: StudyConfig, grid: list[Cell], *, progress: bool = True) -> None:
    """Give every completed cell a ``profile.json``: its model's efficiency profile at the
    study's image size (:func:`cnnvit.profile.profile_run`), measured once per model on its
    first completed cell and copied to the others (same architecture, same size). A cell that
    already has one keeps it, so a re-run does not measure again, unless the settings now ask
    for ONNX Runtime and it has no deployment figures."""
    settings = study.profile
    measured: dict[str, str] = {}  # model label -> profile.json text
    for cell in grid:
        run = RunFolder(cell.config.output.dir)
        if run.status() != "completed":
            continue
        if run.profile.is_file() and _has_runtimes(run.profile, settings):
            measured.setdefault(cell.model, run.profile.read_text())
            continue
        if cell.model not in measured:
            console.print(f"profiling {cell.model} on {cell.id}")
            try:
                profile = profile_run(
                    run.path, _profile_config(settings, cell), label=cell.model, progress=progress
                )
            except Exception as err:  # a profile must not cost the study its results
                console.print(f"[red]profiling {cell.model} failed:[/] {type(err).__name__}: {err}")
                measured[cell.model] = ""
                continue
            measured[cell.model] = json.dumps(profile.to_dict(), indent=2)
        if measured[cell.model]:
            write_text(run.profile, measured[cell.model])


def _has_runtimes(path: Path, settings: StudyProfile) -> bool:
    """Whether the profile.json at ``path`` holds what ``settings.runtimes`` ask for."""
    if "onnxruntime" not in settings.runtimes:
        return True
    try:
        return json.loads(path.read_text()).get("deployment") is not None
    except (OSError, ValueError):
        return False


def _profile_config(settings: StudyProfile, cell: Cell) -> ProfileConfig:
    """The study's profile settings, on the cell's own device unless they name one."""
    values = settings.model_dump(exclude={"enabled"})
    if settings.device == "auto":
        values["device"] = cell.config.train.device
    values["sizes"] = settings.sizes or None  # [] = no sweep
    return ProfileConfig(**values)


def _claim_folder(study: StudyConfig, folder: StudyFolder) -> None:
    """Write study.yaml, refusing a folder that holds a different study (its results stay)."""
    folder.path.mkdir(parents=True, exist_ok=True)
    resolved = study.model_dump(mode="json")
    if folder.config.is_file():
        earlier = folder.read_config_data() or {}
        if _trained_part(earlier) != _trained_part(resolved):
            raise RunFolderError(
                f"{folder.path} holds a different study (see {folder.config}); choose another "
                "--out, or delete that folder to start again"
            )
        if earlier == resolved:
            return
    folder.write_config_data(resolved)


# Settings of the stages after training: changing them keeps the trained cells (a re-run
# profiles or analyses what is new) instead of refusing the folder.
AFTER_TRAINING = ("profile", "analysis", "analysis_options")
# Where the cells run is how, not what: a study re-run with another executor keeps its cells.
HOW_IT_RUNS = ("executor",)


def _trained_part(config: dict) -> dict:
    part = {k: v for k, v in config.items() if k not in AFTER_TRAINING + HOW_IT_RUNS}
    # Progress bars (--no-progress) change what is shown, not what is trained.
    recipe = dict(part.get("recipe") or {})
    recipe["train"] = {k: v for k, v in (recipe.get("train") or {}).items() if k != "progress"}
    recipe.pop("output", None)  # nor do the trackers the cells log to
    part["recipe"] = recipe
    return part


def _write_study_json(
    folder: StudyFolder, study: StudyConfig, grid: list[Cell], command: str, *, finished: bool
) -> None:
    earlier = folder.read_info() or {}
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info = {
        "name": study.name,
        "command": command,
        "started_at": earlier.get("started_at", now),
        "finished_at": now if finished else None,
        "cells": [
            {
                "id": c.id,
                "model": c.model,
                "model_name": c.config.model.name,
                "fraction": c.fraction,
                "seed": c.seed,
                "trainable_blocks": c.trainable_blocks,
                "run_dir": folder.run_dir_entry(c.id),
            }
            for c in grid
        ],
    }
    folder.write_info(info)
