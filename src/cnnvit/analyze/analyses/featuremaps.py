"""CNN feature maps: what each convolution responds to, channel-averaged, as a grid (``cnnvit
explain``, with the Grad-CAM and attention analyses).

For a few stratified test images, every convolution's output averaged over its channels
(:mod:`cnnvit.analyze.featuremaps` has the maths); a ViT, with no convolution but its patch
embedding, is listed as skipped; a hybrid shows its conv block. Files: ``featuremaps.json`` and a
grid ``featuremaps_<model>.png`` per CNN or hybrid (rows: images; columns: the input, then each
convolution's map at its own resolution).

The grids are :func:`cnnvit.plotting.mosaic_figure`, shared with the Grad-CAM grids: one image
axes per figure, because a hundred matplotlib axes cost seconds to lay out on a small CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from pydantic import Field

from cnnvit.analyze.analyses.gradcam import EXPLAIN
from cnnvit.analyze.files import file_stems
from cnnvit.analyze.registry import AnalysisOptions, Inputs, analysis
from cnnvit.folders import AnalysisFolder
from cnnvit.markup import Markup, img, join, note, tag
from cnnvit.plotting import MAX_COLUMNS, Cell, mosaic_figure, save_png, shown_columns, wrap_name

if TYPE_CHECKING:
    from cnnvit.analyze.featuremaps import ModelFeatureMaps

__all__ = [
    "FeaturemapsOptions",
    "FeaturemapsResult",
    "compute_featuremaps",
    "render_featuremaps",
    "write_featuremaps",
]


class FeaturemapsOptions(AnalysisOptions):
    grid_images: int = Field(4, gt=0, description="rows of each model's grid of maps")
    images: int | None = Field(
        None, gt=0, description="test images looked at (stratified); null = all"
    )


@dataclass
class FeaturemapsModel:
    """One model's feature maps of the grid images, or why it has none (and who it is)."""

    label: str
    family: str
    device: str
    image_size: int
    classes: list[str]
    found: ModelFeatureMaps  # numbers and pictures (numpy), from cnnvit.analyze.featuremaps


@dataclass
class FeaturemapsResult:
    """Every model's feature maps of the same stratified images."""

    images: str  # the image set's name
    classes: list[str]  # the image set's class names
    indices: np.ndarray  # (N,) the grid's images among those looked at
    labels: np.ndarray  # (N,) their classes
    models: list[FeaturemapsModel]

    def figure(self, index: int) -> str:
        return f"featuremaps_{file_stems([m.label for m in self.models])[index]}.png"

    def to_json(self) -> dict[str, Any]:
        return {
            "analysis": "featuremaps",
            "num_images": len(self.labels),
            "batch_size": len(self.labels),  # one forward pass for all the grid's images
            "images": self.images,
            "image_indices": [int(i) for i in self.indices],
            "labels": [self.classes[int(k)] for k in self.labels],
            "max_columns": MAX_COLUMNS,
            "models": [_model_entry(m, self.figure(i)) for i, m in enumerate(self.models)],
        }


def write_featuremaps(result: FeaturemapsResult, folder: AnalysisFolder) -> None:
    """A grid per model with convolutions, then featuremaps.json."""
    folder.path.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    for model, entry in zip(result.models, data["models"], strict=True):
        if "figure" in entry:
            save_png(grid_figure(model, result.labels), folder.file(entry["figure"]))
    folder.write_result(data)


def _model_entry(model: FeaturemapsModel, figure: str) -> dict[str, Any]:
    entry: dict = {"label": model.label, "family": model.family, "device": model.device}
    found = model.found.found
    if found is None:
        return {**entry, "skipped": model.found.skipped}
    shown = shown_columns(len(found.layers))
    return {
        **entry,
        "image_size": model.image_size,
        "layers": found.layers,
        "shapes": [list(s) for s in found.shapes],
        "shown": [found.layers[i] for i in shown],
        "figure": figure,
        "seconds": round(model.found.seconds, 3),
    }


# --- figures ------------------------------------------------------------------------------------


def grid_figure(model: FeaturemapsModel, labels: np.ndarray) -> Figure:
    """Rows: images; columns: the input (its class), then each shown convolution's channel
    mean, scaled to its own range (viridis), with the layer's name and resolution above it."""
    found, inputs = model.found.found, model.found.inputs
    assert found is not None and inputs is not None  # a skipped model has no grid
    shown = shown_columns(len(found.layers))
    viridis = mpl.colormaps["viridis"]
    rows = []
    for r in range(len(labels)):
        row = [Cell(inputs[r], model.classes[int(labels[r])])]
        for i in shown:
            _, h, w = found.shapes[i]
            header = f"{wrap_name(found.layers[i])}\n{h}×{w}" if r == 0 else ""
            row.append(Cell(viridis(_own_range(found.maps[i][r]))[..., :3], header))
        rows.append(row)
    hidden = len(found.layers) - len(shown)
    more = f" ({len(shown)} of {len(found.layers)} convolutions shown)" if hidden else ""
    title = f"{model.label}: channel-mean activation after each convolution{more}"
    return mosaic_figure(rows, title)


def _own_range(m: np.ndarray) -> np.ndarray:
    """A map scaled to [0, 1] over its own range (a constant map is 0)."""
    low, high = float(m.min()), float(m.max())
    return (m - low) / (high - low) if high > low else np.zeros_like(m)


# --- the report section -------------------------------------------------------------------------


def render_featuremaps(folder: AnalysisFolder) -> Markup:
    """How to read the grids, each model's grid (or why it has none)."""
    try:
        result = json.loads(folder.result.read_text())
        models = [_model(folder, m) for m in result["models"]]
    except FileNotFoundError:
        return note(
            f"No feature maps: {folder.result} is missing (run `cnnvit explain RUN "
            "...`, or add `featuremaps` to the study's `analysis` list)."
        )
    except (ValueError, KeyError, TypeError) as err:
        return note(
            f"The feature-map results in {folder.result} are damaged ({err}); run it again."
        )
    parts = [
        tag(
            "p",
            "Each row is a test image; each column the output of one convolution, "
            "averaged over its channels, shallow to deep, with its resolution (h × w) above it. "
            "Every map is scaled to its own range (viridis: yellow high, purple low), so compare "
            "patterns, not brightness, across columns. Early convolutions keep the object's "
            "outline and edges; deeper ones work on coarser grids where the picture gives way "
            "to abstract features.",
        )
    ]
    return join([*parts, *models])


def _model(folder: AnalysisFolder, model: dict) -> Markup:
    if "skipped" in model:
        return note(f"{model['label']}: no feature maps ({model['skipped']}).", "note")
    name = str(model.get("figure", ""))
    path = folder.file(name)
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


# --- the analysis ------------------------------------------------------------------------------


@analysis(
    name="featuremaps",
    title="CNN feature maps",
    command=EXPLAIN,
    options=FeaturemapsOptions,
    write=write_featuremaps,
    render=render_featuremaps,
    order=30,
)
def compute_featuremaps(inputs: Inputs, options: FeaturemapsOptions) -> FeaturemapsResult:
    """Each model's channel-mean convolution outputs for ``options.grid_images`` stratified
    images of ``options.images`` test images (None: all)."""
    # The feature maps come from running the models (torch); imported when the analysis runs,
    # so that the registry and the report stay free of torch.
    from cnnvit.analyze.featuremaps import grid_feature_maps

    images = inputs.val(options.images)
    subjects = inputs.subjects
    run = grid_feature_maps(
        subjects, images, num_images=options.grid_images, progress=inputs.progress
    )
    models = [
        FeaturemapsModel(s.label, s.family, str(s.device), s.image_size, list(s.classes), found)
        for s, found in zip(subjects, run.models, strict=True)
    ]
    return FeaturemapsResult(
        images=images.name,
        classes=list(images.classes),
        indices=run.indices,
        labels=run.labels,
        models=models,
    )
