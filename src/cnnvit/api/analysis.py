"""Analyses from Python: :func:`analyze_runs` runs a registered analysis on run folders and
returns its numbers (what its ``<name>.json`` holds), writing its figures and tables as the CLI
verb does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["analysis_names", "analyze_runs"]


def analysis_names() -> list[str]:
    """The registered analyses' names (``"cka"``, ``"knn"``, ...), in report order."""
    from cnnvit.analyze.registry import all_analyses

    return [a.name for a in all_analyses()]


def analyze_runs(
    runs: Sequence[str | Path],
    name: str,
    out: str | Path | None = None,
    *,
    device: str = "cpu",
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Run the analysis ``name`` on the trained models of ``runs``, on the first run's images.

    ``options``: the analysis's own (``images=256``, ``k=[1, 5]``: see ``cnnvit <verb> --help``).
    Files go to ``out`` (default ``runs/analysis/<name>``). Returns the analysis's JSON: per
    model (``"models"``) or per pair, the numbers the report shows.

    Raises:
        KeyError: ``name`` is not a registered analysis (the message lists them).
    """
    from cnnvit.analyze.images import images_from_run
    from cnnvit.analyze.inputs import Inputs
    from cnnvit.analyze.registry import get_analysis
    from cnnvit.analyze.run import options_of, run_analysis
    from cnnvit.analyze.subject import subject_from_run
    from cnnvit.folders import AnalysisFolder

    item = get_analysis(name)
    paths = [Path(r) for r in runs]
    inputs = Inputs(
        lambda: _labelled([subject_from_run(p, device=device) for p in paths], paths),
        lambda split, count: images_from_run(paths[0], split, max_images=count),
        progress=progress,
    )
    folder = AnalysisFolder(
        Path(out) if out is not None else Path("runs") / "analysis" / name, name
    )
    return run_analysis(item, inputs, folder, options_of(item, options))


def _labelled(subjects: list, paths: list[Path]) -> list:
    """Two runs of one model get their folder names in their labels, as the CLI does."""
    if len({s.label for s in subjects}) < len(subjects):
        for subject, path in zip(subjects, paths, strict=True):
            subject.label = f"{subject.label} ({path.resolve().name})"
    return subjects
