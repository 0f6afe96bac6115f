"""Running a registered analysis: compute its numbers, write its folder, return its JSON.

The study stage (:mod:`cnnvit.study.analysis`) and the CLI verbs add what they need around it
(which models and images, run.json and skipping); :func:`analyse` runs one analysis on models
and images already in memory (a notebook, a test).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cnnvit.analyze.images import ImageSet, Split
from cnnvit.analyze.inputs import Inputs
from cnnvit.analyze.registry import Analysis, AnalysisOptions, get_analysis
from cnnvit.analyze.subject import Subject
from cnnvit.config import validate_config
from cnnvit.folders import AnalysisFolder

__all__ = ["analyse", "options_of", "run_analysis"]


def options_of(item: Analysis, values: Mapping[str, Any] | AnalysisOptions | None) -> Any:
    """``item``'s typed options from plain values (missing keys take their defaults)."""
    if isinstance(values, AnalysisOptions):
        return values
    return validate_config(item.options, dict(values or {}))


def run_analysis(
    item: Analysis, inputs: Inputs, folder: AnalysisFolder, options: AnalysisOptions
) -> dict[str, Any]:
    """Compute ``item`` on ``inputs`` with ``options``, write its files into ``folder``, and
    return what its ``<name>.json`` holds."""
    result = item.compute(inputs, options)
    folder.path.mkdir(parents=True, exist_ok=True)
    item.write(result, folder)
    return result.to_json()


def analyse(
    name: str,
    subjects: Sequence[Subject],
    out_dir: str | Path,
    *,
    val: ImageSet | None = None,
    train: ImageSet | None = None,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Run the analysis ``name`` on these models and images (``val``: the images looked at,
    ``train``: kNN's index), writing into ``out_dir``; returns its JSON. ``options``: the
    analysis's options by name (``batch_size=16``)."""
    item = get_analysis(name)
    sets = {"val": val, "train": train}

    def load(split: Split, count: int | None) -> ImageSet:
        found = sets[split]
        if found is None:
            raise ValueError(f"the {name} analysis needs {split} images: pass {split}=...")
        return found.subset(count)

    inputs = Inputs(lambda: list(subjects), load, progress=progress)
    folder = AnalysisFolder(Path(out_dir), name)
    return run_analysis(item, inputs, folder, options_of(item, options))
