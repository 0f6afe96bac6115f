"""The images the report's grid of disagreements shows, saved by the study after training.

For every two models, per unfrozen depth and seed, at the largest training size both finished:
the test images where the two label differently (those a grid may show, in either order),
read back from the runs' own data and saved as ``agreement/<cell>__<cell>.npz``. The report then
draws the grid from files alone, without the dataset.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from cnnvit.evaluate.agreement import (
    AgreementError,
    compare_predictions,
    grid_indices,
    largest_common,
    write_disagreement_images,
)
from cnnvit.evaluate.run_agreement import validation_images
from cnnvit.folders import RunFolder, StudyFolder
from cnnvit.ui import console

__all__ = ["save_disagreement_images"]


@dataclass(frozen=True)
class _Cell:
    """A cell as study.json lists it."""

    id: str
    model: str
    fraction: float
    seed: int
    trainable_blocks: int | None
    run: RunFolder


def save_disagreement_images(folder: StudyFolder) -> int:
    """Save the images of every compared pair of the study's cells (study.json) that has none
    yet; returns how many were saved.

    A pair whose predictions or images cannot be read is skipped with a warning: the grid
    illustrates, it must not cost the study its results."""
    done = [
        c for c in _cells(folder) if c.run.status() == "completed" and c.run.predictions.is_file()
    ]
    saved = 0
    for depth in dict.fromkeys(c.trainable_blocks for c in done):
        cells = [c for c in done if c.trainable_blocks == depth]
        models = list(dict.fromkeys(c.model for c in cells))
        for a, b in itertools.combinations(models, 2):
            by_a = {(c.fraction, c.seed): c for c in cells if c.model == a}
            by_b = {(c.fraction, c.seed): c for c in cells if c.model == b}
            for key in largest_common(by_a, by_b):
                saved += _save_pair(folder, by_a[key], by_b[key])
    return saved


def _cells(folder: StudyFolder) -> list[_Cell]:
    listed = (folder.read_info() or {}).get("cells") or []
    return [
        _Cell(
            id=str(c["id"]),
            model=str(c["model"]),
            fraction=float(c["fraction"]),
            seed=int(c["seed"]),
            trainable_blocks=c.get("trainable_blocks"),
            run=RunFolder(folder.path / c.get("run_dir", folder.run_dir_entry(str(c["id"])))),
        )
        for c in listed
    ]


def _save_pair(folder: StudyFolder, a: _Cell, b: _Cell) -> int:
    path = folder.disagreement_images(a.id, b.id)
    if path.is_file():
        return 0
    classes = (a.run.read_metrics() or {}).get("classes") or []
    try:
        agreement = compare_predictions(
            a.run.read_predictions(), b.run.read_predictions(), classes, n_boot=1
        )
        indices = grid_indices(agreement)
        images = validation_images(a.run.path, indices)
    except (AgreementError, OSError, ValueError) as err:  # DataError is a ValueError
        console.print(f"[yellow]no grid of disagreements for {a.id} and {b.id}: {err}[/]")
        return 0
    write_disagreement_images(path, indices, images)
    return 1
