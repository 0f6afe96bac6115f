"""``cnnvit compare``: run every cell of a study into ``DIR/runs/<cell>``, then write the report.

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
from dataclasses import dataclass
from pathlib import Path

import yaml

from cnnvit.study.analysis import run_analyses
from cnnvit.study.config import Cell, StudyConfig, cells
from cnnvit.train.checkpoint import latest_checkpoint_dir
from cnnvit.train.run import RunFolderError, resume, train
from cnnvit.ui import console, progress_bar

FINAL = {"completed", "diverged"}
PROFILE = "profile.json"


@dataclass(frozen=True)
class CellOutcome:
    cell: Cell
    status: str  # completed | diverged | failed | skipped (finished earlier)
    seconds: float


def run_study(
    study: StudyConfig, out_dir: Path, *, command: str, progress: bool = True
) -> list[CellOutcome]:
    """Run (or continue) every cell of ``study`` under ``out_dir``."""
    out_dir = Path(out_dir)
    _claim_folder(study, out_dir)
    grid = cells(study, out_dir)
    _write_study_json(out_dir, study, grid, command, finished=False)
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
    run_analyses(study, grid, out_dir, progress=progress)
    _write_study_json(out_dir, study, grid, command, finished=True)
    return outcomes


def profile_models(study: StudyConfig, grid: list[Cell], *, progress: bool = True) -> None:
    """Give every completed cell a ``profile.json``: its model's efficiency profile at the
    study's image size (:func:`cnnvit.profile.profile_run`), measured once per model on its
    first completed cell and copied to the others (same architecture, same size). A cell that
    already has one keeps it, so a re-run does not measure again."""
    from cnnvit.profile import profile_run

    settings = study.profile
    measured: dict[str, str] = {}  # model label -> profile.json text
    for cell in grid:
        run_dir = Path(cell.config.output.dir)
        path = run_dir / PROFILE
        if cell_status(run_dir) != "completed":
            continue
        if path.is_file():
            measured.setdefault(cell.model, path.read_text())
            continue
        if cell.model not in measured:
            console.print(f"profiling {cell.model} on {cell.id}")
            try:
                profile = profile_run(
                    run_dir,
                    batch_size=settings.batch_size,
                    sizes=settings.sizes or None,
                    train=settings.train,
                    device=cell.config.train.device,
                    label=cell.model,
                    progress=progress,
                )
            except Exception as err:  # a profile must not cost the study its results
                console.print(f"[red]profiling {cell.model} failed:[/] {type(err).__name__}: {err}")
                measured[cell.model] = ""
                continue
            measured[cell.model] = json.dumps(profile.to_dict(), indent=2)
        if measured[cell.model]:
            path.write_text(measured[cell.model])


def run_cell(cell: Cell) -> CellOutcome:
    """Train one cell, or skip/resume it according to what its folder already holds."""
    run_dir = Path(cell.config.output.dir)
    status = cell_status(run_dir)
    start = time.perf_counter()
    if status in FINAL:
        console.print(f"[dim]{cell.id}: {status} earlier, skipped[/]")
        return CellOutcome(cell, "skipped", 0.0)
    console.rule(f"{cell.id}")
    try:
        if latest_checkpoint_dir(run_dir) is not None:
            results = resume(run_dir)
        else:
            # A folder without a checkpoint holds nothing worth keeping (killed in epoch 1).
            shutil.rmtree(run_dir, ignore_errors=True)
            results = train(cell.config)
        status = results["status"]
    except (KeyboardInterrupt, RunFolderError):
        raise
    except Exception as err:  # a failing cell must not stop the study
        status = "failed"
        _record_failure(cell, run_dir, err)
    return CellOutcome(cell, status, time.perf_counter() - start)


def cell_status(run_dir: Path) -> str | None:
    """The status in a cell's results.json, or None where it has none."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("status")
    except json.JSONDecodeError:
        return None


def _record_failure(cell: Cell, run_dir: Path, err: Exception) -> None:
    """Make sure a failed cell has a results.json that says why, even if it never started."""
    console.print(f"[red]{cell.id} failed:[/] {type(err).__name__}: {err}")
    path = run_dir / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.update(
        status="failed",
        error=results.get("error") or f"{type(err).__name__}: {err}",
        model=cell.config.model.name,
        train_fraction=cell.fraction,
        seed=cell.seed,
        trainable_blocks=cell.trainable_blocks,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    (run_dir / "traceback.txt").write_text("".join(traceback.format_exception(err)))


def _claim_folder(study: StudyConfig, out_dir: Path) -> None:
    """Write study.yaml, refusing a folder that holds a different study (its results stay)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "study.yaml"
    resolved = study.model_dump(mode="json")
    if path.is_file():
        earlier = yaml.safe_load(path.read_text()) or {}
        if _trained_part(earlier) != _trained_part(resolved):
            raise RunFolderError(
                f"{out_dir} holds a different study (see {path}); choose another --out, "
                "or delete that folder to start again"
            )
        if earlier == resolved:
            return
    path.write_text(yaml.safe_dump(resolved, sort_keys=False))


# Settings of the stages after training: changing them keeps the trained cells (a re-run
# profiles or analyses what is new) instead of refusing the folder.
AFTER_TRAINING = ("profile", "analysis", "analysis_options")


def _trained_part(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in AFTER_TRAINING}


def _write_study_json(
    out_dir: Path, study: StudyConfig, grid: list[Cell], command: str, *, finished: bool
) -> None:
    path = out_dir / "study.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
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
                "run_dir": f"runs/{c.id}",
            }
            for c in grid
        ],
    }
    path.write_text(json.dumps(info, indent=2))
