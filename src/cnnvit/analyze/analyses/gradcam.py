"""Grad-CAM by depth: where each layer's evidence for a class lies in the image (``cnnvit
explain``, with the attention and feature-map analyses).

CAMs of a few stratified test images at every depth of each model
(:mod:`cnnvit.analyze.cam` has the maths, pytorch-grad-cam's methods). Files: ``gradcam.json``,
``gradcam_area.csv`` (CAM area per layer), ``gradcam_area.png`` (CAM area against relative
depth) and a grid ``gradcam_<model>.png`` per model (rows: images; columns: the input, then the
CAM at each depth over it). :func:`cam_figure` is ``cnnvit classify --cam``'s figure.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from matplotlib.figure import Figure
from pydantic import Field

from cnnvit.analyze.files import file_stems
from cnnvit.analyze.registry import AnalysisOptions, Command, Inputs, analysis
from cnnvit.folders import AnalysisFolder
from cnnvit.markup import Markup, folder_figure, join, note, table, tag
from cnnvit.plotting import Cell, model_colors, mosaic_figure, plain, save_png, shown_columns, style

if TYPE_CHECKING:
    from cnnvit.analyze.cam import GridCams
    from cnnvit.analyze.images import ImageSet
    from cnnvit.analyze.subject import Subject

__all__ = [
    "EXPLAIN",
    "GradcamOptions",
    "GradcamResult",
    "area_figure",
    "cam_figure",
    "compute_gradcam",
    "render_gradcam",
    "write_gradcam",
]

EXPLAIN = Command(
    "explain",
    "Grad-CAM at every depth, ViT attention maps and attention distance, CNN feature maps, for "
    "run folders or models",
    defaults={"images": 256},
)
AREA_PNG = "gradcam_area.png"
AREA_CSV = "gradcam_area.csv"
MAX_CAM_COLUMNS = 24  # depth columns in a grid (ResNet-50's 17 blocks all fit); more: evenly


class GradcamOptions(AnalysisOptions):
    method: Literal["gradcam", "gradcam++", "scorecam", "eigencam", "layercam"] = Field(
        "gradcam", description="the CAM method (pytorch-grad-cam's)"
    )
    layers: Literal["stages", "blocks"] = Field(
        "stages",
        description="CNN: stages (stage outputs) or blocks (every residual block); ViT: every "
        "block",
    )
    num_images: int = Field(8, gt=0, description="rows of each model's grid")
    target: Literal["label", "predicted"] = Field(
        "label",
        description="the class whose evidence the CAM shows: label (the true class) or predicted",
    )
    images: int | None = Field(
        None, gt=0, description="test images looked at (stratified); null = all"
    )


@dataclass
class GradcamModel:
    """One model's CAMs of the grid images (and who it is)."""

    label: str
    family: str
    device: str
    image_size: int
    classes: list[str]
    cams: GridCams  # numbers and pictures (numpy), from cnnvit.analyze.cam


@dataclass
class GradcamResult:
    """Every model's CAMs of the same stratified images, and how they were taken."""

    method: str
    target: str
    layers: str
    batch_size: int
    images: str  # the image set's name
    classes: list[str]  # the image set's class names
    indices: np.ndarray  # (N,) the grid's images among those looked at
    labels: np.ndarray  # (N,) their classes
    models: list[GradcamModel]

    def figure(self, index: int) -> str:
        return f"gradcam_{file_stems([m.label for m in self.models])[index]}.png"

    def to_json(self) -> dict[str, Any]:
        return {
            "analysis": "gradcam",
            "method": self.method,
            "target": self.target,
            "layers": self.layers,
            "num_images": len(self.labels),
            "batch_size": self.batch_size,
            "images": self.images,
            "image_indices": [int(i) for i in self.indices],
            "labels": [self.classes[int(k)] for k in self.labels],
            "cam_area": "fraction of a map's pixels at or above half its maximum, mean (and std) "
            "over the images whose map is not empty",
            "area_figure": AREA_PNG,
            "area_table": AREA_CSV,
            "models": [
                _model_entry(m, self.labels, self.figure(i)) for i, m in enumerate(self.models)
            ],
        }


def write_gradcam(result: GradcamResult, folder: AnalysisFolder) -> None:
    """A grid per model, the area plot and table, then gradcam.json."""
    folder.path.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    for model, entry in zip(result.models, data["models"], strict=True):
        figure = grid_figure(model, result.labels, result.method, result.target)
        save_png(figure, folder.file(entry["figure"]))
    save_png(area_figure(data["models"]), folder.file(AREA_PNG))
    _write_area_csv(data["models"], folder.file(AREA_CSV))
    folder.write_result(data)


# --- numbers for gradcam.json -------------------------------------------------------------------


def relative_depth(count: int) -> list[float]:
    """(i + 1) / L for L layers: the deepest is 1, whatever the model's depth."""
    return [(i + 1) / count for i in range(count)]


def _mean_or_none(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _std_or_none(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.std()) if finite.size else None


def _model_entry(model: GradcamModel, labels: np.ndarray, figure: str) -> dict[str, Any]:
    cams = model.cams
    shown = shown_columns(len(cams.layers), MAX_CAM_COLUMNS)
    return {
        "label": model.label,
        "family": model.family,
        "device": model.device,
        "image_size": model.image_size,
        "layers": cams.layers,
        "modules": cams.modules,
        "relative_depth": relative_depth(len(cams.layers)),
        "cam_area": [_mean_or_none(a) for a in cams.areas],
        "cam_area_std": [_std_or_none(a) for a in cams.areas],
        "empty_maps": [int(np.isnan(a).sum()) for a in cams.areas],
        "predicted": [model.classes[int(k)] for k in cams.predicted],
        "explained": [model.classes[int(k)] for k in cams.targets],
        "correct": int((cams.predicted == labels).sum()),
        "figure": figure,
        "shown_layers": [cams.layers[i] for i in shown],
        "seconds": round(cams.seconds, 3),
    }


def _write_area_csv(models: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["model", "layer", "module", "relative_depth", "cam_area", "cam_area_std", "empty_maps"]
        )
        for m in models:
            for row in zip(
                m["layers"],
                m["modules"],
                m["relative_depth"],
                m["cam_area"],
                m["cam_area_std"],
                m["empty_maps"],
                strict=True,
            ):
                writer.writerow([m["label"], *("" if v is None else v for v in row)])


# --- figures ------------------------------------------------------------------------------------


def grid_figure(model: GradcamModel, labels: np.ndarray, method: str, target: str) -> Figure:
    """Rows: images; columns: the input (true -> predicted class, red when wrong), then the
    CAM at each depth over the input."""
    cams = model.cams
    shown = shown_columns(len(cams.layers), MAX_CAM_COLUMNS)
    rows = []
    for r in range(len(cams.inputs)):
        true, pred = int(labels[r]), int(cams.predicted[r])
        color = "#a1261f" if true != pred else "black"
        row = [Cell(cams.inputs[r], f"{model.classes[true]}\n→ {model.classes[pred]}", color)]
        for li in shown:
            header = cams.layers[li] if r == 0 else ""
            row.append(Cell(cams.overlays[li, r], header))
        rows.append(row)
    explained = "true class" if target == "label" else "predicted class"
    hidden = len(cams.layers) - len(shown)
    more = f" ({len(shown)} of {len(cams.layers)} layers shown)" if hidden else ""
    return mosaic_figure(rows, f"{model.label}: {method} for the {explained}, shallow → deep{more}")


def area_figure(models: list[dict]) -> Figure:
    """CAM area against relative depth, one line per model (from the JSON entries)."""
    colors = model_colors([m["label"] for m in models])
    with style():
        fig = Figure(figsize=(5.2, 3.4), layout="constrained")
        ax = fig.add_subplot()
        for m in models:
            area = [np.nan if a is None else a for a in m["cam_area"]]
            ax.plot(
                m["relative_depth"],
                area,
                marker="o",
                color=colors[m["label"]],
                label=plain(f"{m['label']} ({m['family']})"),
            )
        ax.set_xlabel("relative depth (layer / number of layers)")
        ax.set_ylabel("CAM area (≥ half max)")
        ax.set_ylim(0, 1)
        ax.set_xlim(0, 1.05)
        ax.legend(fontsize=8)
        ax.set_title("How spread the class evidence is at each depth")
    return fig


def cam_figure(subjects: Sequence[Subject], images: ImageSet, *, method: str = "gradcam") -> Figure:
    """For ``cnnvit classify --cam``: rows = images, columns = the input, then each model's CAM
    at its last layer for the class it predicts, titled with the prediction and confidence."""
    # The CAMs run the models (torch); imported when the figure is drawn, so that the registry
    # and the report stay free of torch.
    from cnnvit.analyze.cam import input_pictures, method_class, prediction_cams

    method_class(method)
    labels = [s.label for s in subjects]
    if not subjects:
        raise ValueError("no models to analyse: give at least one subject")
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique, got {labels}; pass label= to tell apart")
    if len(images) == 0:
        raise ValueError("no images to explain")
    columns = [(s, prediction_cams(s, images.images, method=method)) for s in subjects]
    inputs = input_pictures(images.images)  # (B, H, W, 3) uint8
    rows = []
    for r in range(len(images)):
        row = [Cell(inputs[r], "input")]
        for subject, found in columns:
            pred = subject.classes[int(found.predicted[r])]
            label = f"{subject.label}\n{pred} ({100 * found.confidence[r]:.0f} %)"
            row.append(Cell(found.overlays[r], label))
        rows.append(row)
    title = f"{method} at each model's last layer, for its prediction"
    return mosaic_figure(rows, title, cell_inches=1.9, fontsize=9)


# --- the report section -------------------------------------------------------------------------


def render_gradcam(folder: AnalysisFolder) -> Markup:
    """How to read the grids, a table of CAM area at the shallowest and deepest layer per model,
    the area-against-depth plot and each model's grid."""
    try:
        result = json.loads(folder.result.read_text())
        models = list(result["models"])
        method, target = str(result["method"]), str(result["target"])
        rows = [_row(m, int(result["num_images"])) for m in models]
    except FileNotFoundError:
        return note(
            f"No Grad-CAM results: {folder.result} is missing (run `cnnvit explain RUN "
            "...`, or add `gradcam` to the study's `analysis` list)."
        )
    except (ValueError, KeyError, TypeError, IndexError) as err:
        return note(f"The Grad-CAM results in {folder.result} are damaged ({err}); run it again.")
    explained = "its true class" if target == "label" else "the class it predicts"
    parts = [
        tag(
            "p",
            f"Each row is one of {int(result['num_images'])} images ({result.get('images', '')}), "
            f"each column a depth of the model, shallow to deep; the colour ({method}; red high, "
            f"blue low, each map scaled to its own peak) marks where that layer's features hold "
            f"evidence for {explained}. Maps that stay compact on the object mean local "
            "evidence; maps that spread over the image mean evidence gathered from everywhere. "
            "CAM area, in the table and the plot, is the share of the image at or above half a "
            "map's peak; the shallowest layers' maps are noisy (the gradient reaching them is "
            "far from the class score), so read their shape more than their area.",
        ),
        table(
            ["model", "family", "layers", "CAM area, shallowest", "CAM area, deepest", "correct"],
            rows,
            classes=["name", "", "num", "num", "num", "num"],
        ),
        folder_figure(
            folder.path,
            str(result.get("area_figure", AREA_PNG)),
            "CAM area against relative depth",
            "CAM area against relative depth (layer / number of layers), mean over "
            "the images, per model.",
        ),
    ]
    for m in models:
        caption = (
            f"{m['label']}: {method} at each depth; first column the input with its true class "
            "→ the model's prediction (red when wrong)."
        )
        parts.append(
            folder_figure(
                folder.path, str(m.get("figure", "")), f"Grad-CAM grid of {m['label']}", caption
            )
        )
    return join(parts)


def _area(value: object) -> str:
    return "-" if value is None else f"{100 * float(value):.0f}%"


def _row(model: dict, num_images: int) -> list[object]:
    areas = list(model["cam_area"])
    return [
        model["label"],
        model.get("family", ""),
        len(model["layers"]),
        f"{_area(areas[0])} ({model['layers'][0]})",
        f"{_area(areas[-1])} ({model['layers'][-1]})",
        f"{int(model['correct'])} / {num_images}",
    ]


# --- the analysis ------------------------------------------------------------------------------


@analysis(
    name="gradcam",
    title="Grad-CAM by depth",
    command=EXPLAIN,
    options=GradcamOptions,
    write=write_gradcam,
    render=render_gradcam,
    order=10,
)
def compute_gradcam(inputs: Inputs, options: GradcamOptions) -> GradcamResult:
    """CAMs of ``options.num_images`` stratified images of ``options.images`` test images
    (None: all) at every depth of each model."""
    # The CAMs run the models (torch); imported when the analysis runs, so that the registry
    # and the report stay free of torch.
    from cnnvit.analyze.cam import BATCH_SIZE, grid_cams

    images = inputs.val(options.images)
    subjects = inputs.subjects
    run = grid_cams(
        subjects,
        images,
        num_images=options.num_images,
        method=options.method,
        layers=options.layers,
        target=options.target,
        progress=inputs.progress,
    )
    models = [
        GradcamModel(s.label, s.family, str(s.device), s.image_size, list(s.classes), cams)
        for s, cams in zip(subjects, run.models, strict=True)
    ]
    return GradcamResult(
        method=options.method,
        target=options.target,
        layers=options.layers,
        batch_size=BATCH_SIZE,
        images=images.name,
        classes=list(images.classes),
        indices=run.indices,
        labels=run.labels,
        models=models,
    )
