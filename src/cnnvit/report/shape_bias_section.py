"""The report's shape-versus-texture section: what :func:`cnnvit.analyze.cue_conflict.
run_shape_bias` wrote in its folder (``shape_bias.json`` and its figures), and nothing else."""

from __future__ import annotations

import json
import math
from pathlib import Path

from cnnvit.markup import Markup, folder_figure, join, note, table, tag

RESULT = "shape_bias.json"


def render_shape_bias(folder: Path) -> Markup:
    """Per model shape bias with its counts, the shape-bias plot, sample cue-conflict images and
    the images each model classified by texture; a note when the files are missing or damaged."""
    folder = Path(folder)
    try:
        result = json.loads((folder / RESULT).read_text())
        models = list(result["models"])
        settings = dict(result["settings"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return note(
            f"No shape-bias results in {folder} ({RESULT} missing or damaged: "
            f"{type(err).__name__}); run `cnnvit shape-bias` or enable shape_bias in the study."
        )
    parts = [_source(settings), _table(models)]
    figures = result.get("figures") or {}
    parts.append(
        folder_figure(
            folder,
            figures.get("shape_bias"),
            "shape bias per model",
            "Shape bias from 0 (decides by texture) to 1 (decides by shape). The large marker is "
            "the model over all cue-conflict images; the small ones are the images of each "
            "shape class. For scale (on Geirhos et al.'s stylised ImageNet images, not these): "
            "humans about 0.96, an ImageNet-trained ResNet-50 about 0.22.",
        )
    )
    parts.append(
        folder_figure(
            folder,
            figures.get("examples"),
            "cue-conflict examples",
            "Sample cue-conflict images, each titled with the class its shape and its texture "
            "come from.",
        )
    )
    for m in models:
        name = m.get("texture_figure")
        if name:
            parts.append(
                folder_figure(
                    folder,
                    name,
                    f"{m.get('label')}: classified by texture",
                    f"{m.get('label')}: cue-conflict images it answered with the texture's class "
                    "(the first 24).",
                )
            )
    return join(parts)


def _source(settings: dict) -> Markup:
    if settings.get("source") == "folder":
        where = f"the cue-conflict images of {settings.get('folder')}"
    else:
        where = (
            f"{settings.get('images')} cue-conflict images generated from the validation images "
            f"of {settings.get('dataset') or 'the study'}: the silhouette of an image of one class "
            "filled with tiles cut from inside an image of another class (tiles shuffled, so "
            "only that image's local texture survives)"
        )
    return tag(
        "p",
        f"Each model classifies {where}. A shape hit is an answer equal to the class of the "
        "shape, a texture hit one equal to the class of the texture; shape bias = shape hits / "
        "(shape hits + texture hits), over the images whose two classes differ. Answers of a "
        "third class count for neither: when they are many, the bias rests on few images.",
    )


def _table(models: list) -> Markup:
    rows = []
    for m in models:
        rows.append(
            [
                m.get("label", "?"),
                _fmt(m.get("shape_bias")),
                m.get("shape_hits", "-"),
                m.get("texture_hits", "-"),
                m.get("neither", "-"),
                m.get("conflicts", "-"),
            ]
        )
    headers = ["model", "shape bias", "shape hits", "texture hits", "neither", "images"]
    return table(headers, rows, classes=["name", "num", "num", "num", "num", "num"])


def _fmt(value: object) -> str:
    if isinstance(value, (int, float)) and not math.isnan(value):
        return f"{value:.2f}"
    return "- (no hits)"
