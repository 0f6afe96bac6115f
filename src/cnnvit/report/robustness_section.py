"""The report's corruption-robustness section: what :func:`cnnvit.analyze.robustness.
run_robustness` wrote in its folder (``robustness.json`` and its figures), and nothing else."""

from __future__ import annotations

import json
import math
from pathlib import Path

from cnnvit.markup import Markup, folder_figure, join, note, table, tag

RESULT = "robustness.json"


def render_robustness(folder: Path) -> Markup:
    """Clean and mean corrupted accuracy per model, the per-corruption means, the accuracy plot
    and the corruption examples; a note when the files are missing or damaged."""
    folder = Path(folder)
    try:
        result = json.loads((folder / RESULT).read_text())
        models = list(result["models"])
        settings = dict(result["settings"])
        names = list(settings["corruptions"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return note(
            f"No robustness results in {folder} ({RESULT} missing or damaged: "
            f"{type(err).__name__}); run `cnnvit robustness` or enable robustness in the study."
        )
    intro = tag(
        "p",
        f"Top-1 accuracy on {settings.get('images')} validation images, clean and under "
        f"{len(names)} corruptions at severities {_severities(settings)} (parameters after "
        "ImageNet-C, Hendrycks & Dietterich 2019). Every model sees the same corrupted pixels. "
        "Relative accuracy = mean corrupted accuracy / clean accuracy: 100 % means the "
        "corruptions cost nothing; compare it between models rather than raw accuracy when "
        "their clean accuracies differ.",
    )
    headers = ["model", "clean", "mean corrupted", "relative", *[_title(n) for n in names]]
    rows = [_row(m, names) for m in models]
    parts = [intro, table(headers, rows, classes=["name", *["num"] * (3 + len(names))])]
    parts.append(
        tag(
            "p",
            "The corruption columns are the mean accuracy over the severities. In the plot, each "
            "panel is one corruption: accuracy (y) as the severity grows (x, 0 = clean), one "
            "line per model; a flatter line is a more robust model.",
            class_="note",
        )
    )
    figures = result.get("figures") or {}
    parts.append(
        folder_figure(
            folder,
            figures.get("accuracy"),
            "accuracy against severity",
            "Accuracy by corruption severity.",
        )
    )
    parts.append(
        folder_figure(
            folder,
            figures.get("examples"),
            "corruption examples",
            "One validation image under each corruption (rows) at each severity (columns).",
        )
    )
    return join(parts)


def _severities(settings: dict) -> str:
    sevs = settings.get("severities") or []
    return ", ".join(str(s) for s in sevs) or "-"


def _title(name: str) -> str:
    return str(name).replace("_", " ")


def _pct(value: object) -> str:
    if isinstance(value, (int, float)) and not math.isnan(value):
        return f"{100 * value:.1f}%"
    return "-"


def _row(m: dict, names: list) -> list:
    by = m.get("mean_by_corruption") or {}
    return [
        m.get("label", "?"),
        _pct(m.get("clean_accuracy")),
        _pct(m.get("mean_corruption_accuracy")),
        _pct(m.get("relative_accuracy")),
        *[_pct(by.get(n)) for n in names],
    ]
