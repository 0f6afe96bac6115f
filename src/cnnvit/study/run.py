"""``cnnvit compare``: run every cell of a study into ``DIR/runs/<cell>``, then write the report.

With ``tuning.enabled`` each model's recipe is searched first (:mod:`cnnvit.study.tuning`,
trials under ``DIR/tuning/``, run and skipped like cells) and the cells train with the result.

Cells run one after another. A cell that diverges or fails is recorded (its ``results.json``
says so) and the study goes on. Re-running the same command skips finished cells (completed or
diverged: both are final for a deterministic recipe), resumes an interrupted one from its last
checkpoint, and retries a failed one.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cnnvit.config import ProfileConfig
from cnnvit.folders import FINAL, RunFolder, RunFolderError, StudyFolder, write_text
from cnnvit.locks import FolderBusyError, writing
from cnnvit.profile.profiler import profile_run
from cnnvit.study.analysis import run_analyses
from cnnvit.study.config import Cell, StudyConfig, StudyProfile, cells
from cnnvit.study.disagreements import save_disagreement_images
from cnnvit.study.tuning import tune
from cnnvit.train.run import resume, train
from cnnvit.ui import console, progress_bar


@dataclass(frozen=True)
class CellOutcome:
    cell: Cell
    status: str  # completed | diverged | failed | skipped (finished earlier)
    seconds: float


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
    folder = StudyFolder(out_dir)
    with writing(folder.path, folder.lock):
        outcomes = _run_study(study, folder, command=command, progress=progress)
        if then is not None:
            then(folder.path)
    return outcomes


def _run_study(
    study: StudyConfig, folder: StudyFolder, *, command: str, progress: bool
) -> list[CellOutcome]:
    planned = cells(study, folder.path)  # a study that cannot be laid out claims no folder
    _claim_folder(study, folder)
    _write_study_json(folder, study, planned, command, finished=False)
    tuned = tune(study, folder, lambda trial: run_cell(trial).status)
    grid = cells(study, folder.path, tuned)
    outcomes = []
    with progress_bar(progress) as bar:
        task = bar.add_task("cells", total=len(grid), rate="") if bar else None
        for cell in grid:
            if bar is not None:
                bar.update(task, rate=cell.id)
            outcomes.append(run_cell(cell))
            if bar is not None:
                bar.advance(task)
    if study.profile.enabled:
        profile_models(study, grid, progress=progress)
    save_disagreement_images(folder)
    run_analyses(study, grid, folder, progress=progress)
    _write_study_json(folder, study, grid, command, finished=True)
    return outcomes


def profile_models(study: StudyConfig, grid: list[Cell], *, progress: bool = True) -> None:
    """Give every completed cell a ``profile.json``: its model's efficiency profile at the
    study's image size (:func:`cnnvit.profile.profile_run`), measured once per model on its
    first completed cell and copied to the others (same architecture, same size). A cell that
    already has one keeps it, so a re-run does not measure again."""
    settings = study.profile
    measured: dict[str, str] = {}  # model label -> profile.json text
    for cell in grid:
        run = RunFolder(cell.config.output.dir)
        if run.status() != "completed":
            continue
        if run.profile.is_file():
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


def _profile_config(settings: StudyProfile, cell: Cell) -> ProfileConfig:
    """The study's profile settings, on the cell's own device unless they name one."""
    values = settings.model_dump(exclude={"enabled"})
    if settings.device == "auto":
        values["device"] = cell.config.train.device
    values["sizes"] = settings.sizes or None  # [] = no sweep
    return ProfileConfig(**values)


def run_cell(cell: Cell) -> CellOutcome:
    """Train one cell, or skip/resume it according to what its folder already holds."""
    run = RunFolder(cell.config.output.dir)
    status = run.status()
    start = time.perf_counter()
    if status in FINAL:
        console.print(f"[dim]{cell.id}: {status} earlier, skipped[/]")
        return CellOutcome(cell, "skipped", 0.0)
    console.rule(f"{cell.id}")
    try:
        if run.latest_checkpoint() is not None:
            results = resume(run.path)
        else:
            # A folder without a checkpoint holds nothing worth keeping (killed in epoch 1).
            shutil.rmtree(run.path, ignore_errors=True)
            results = train(cell.config)
        status = results["status"]
    except (KeyboardInterrupt, RunFolderError, FolderBusyError):  # the folder is not ours to mark
        raise
    except Exception as err:  # a failing cell must not stop the study
        status = "failed"
        _record_failure(cell, run, err)
    return CellOutcome(cell, status, time.perf_counter() - start)


def cell_status(run_dir: Path) -> str | None:
    """The status in a cell's results.json, or None where it has none."""
    return RunFolder(run_dir).status()


def _record_failure(cell: Cell, run: RunFolder, err: Exception) -> None:
    """Make sure a failed cell has a results.json that says why, even if it never started."""
    console.print(f"[red]{cell.id} failed:[/] {type(err).__name__}: {err}")
    results = run.read_results() or {}
    results.update(
        status="failed",
        error=results.get("error") or f"{type(err).__name__}: {err}",
        model=cell.config.model.name,
        train_fraction=cell.fraction,
        seed=cell.seed,
        trainable_blocks=cell.trainable_blocks,
    )
    run.write_results(results)
    write_text(run.traceback, "".join(traceback.format_exception(err)))


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


def _trained_part(config: dict) -> dict:
    part = {k: v for k, v in config.items() if k not in AFTER_TRAINING}
    # Progress bars (--no-progress) change what is shown, not what is trained.
    recipe = dict(part.get("recipe") or {})
    recipe["train"] = {k: v for k, v in (recipe.get("train") or {}).items() if k != "progress"}
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
