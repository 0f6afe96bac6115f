"""The report's feature-map section: what :func:`cnnvit.analyze.featuremaps.run_featuremaps`
wrote to a folder (``featuremaps.json``, one ``featuremaps_<model>.png`` grid per CNN or
hybrid).

Only that folder is read, so a rebuild gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from cnnvit.markup import Markup, img, join, note, tag

FEATUREMAPS_JSON = "featuremaps.json"


def render_featuremaps(folder: Path) -> Markup:
    """How to read the grids, each model's grid (or why it has none)."""
    folder = Path(folder)
    try:
        result = json.loads((folder / FEATUREMAPS_JSON).read_text())
        models = [_model(folder, m) for m in result["models"]]
    except FileNotFoundError:
        return note(
            f"No feature maps: {folder / FEATUREMAPS_JSON} is missing (run `cnnvit explain RUN "
            "...`, or add `featuremaps` to the study's `analysis` list)."
        )
    except (ValueError, KeyError, TypeError) as err:
        return note(
            f"The feature-map results in {folder / FEATUREMAPS_JSON} are damaged ({err}); run it "
            "again."
        )
    parts = [
        tag(
            "p",
            "Each row is a validation image; each column the output of one convolution, "
            "averaged over its channels, shallow to deep, with its resolution (h × w) above it. "
            "Every map is scaled to its own range (viridis: yellow high, purple low), so compare "
            "patterns, not brightness, across columns. Early convolutions keep the object's "
            "outline and edges; deeper ones work on coarser grids where the picture gives way "
            "to abstract features.",
        )
    ]
    return join([*parts, *models])


def _model(folder: Path, model: dict) -> Markup:
    if "skipped" in model:
        return note(f"{model['label']}: no feature maps ({model['skipped']}).", "note")
    name = str(model.get("figure", ""))
    path = folder / name
    if not name or not path.is_file():
        return note(f"The feature-map grid of {model['label']} is missing ({path}).")
    layers, shown = list(model.get("layers", [])), list(model.get("shown", []))
    subset = (
        f" ({len(shown)} of its {len(layers)} convolutions, evenly spread)"
        if len(shown) < len(layers)
        else ""
    )
    caption = f"{model['label']}: channel-mean activation after each convolution{subset}."
    return img(path.read_bytes(), f"feature maps of {model['label']}", caption)
