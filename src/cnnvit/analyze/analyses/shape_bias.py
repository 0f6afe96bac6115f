"""Shape versus texture: each model's shape bias on cue-conflict images (``cnnvit shape-bias``).

A cue-conflict image's shape says one class and its texture another; shape bias = shape hits /
(shape + texture hits) over the images whose two classes differ (Geirhos et al. 2019). The
images are generated from the test images, or read from a folder in model-vs-human's
layout (:mod:`cnnvit.analyze.cue_conflict` makes or reads them and has the measure). Files:
``shape_bias.json``, ``shape_bias.csv`` (per model and shape class), ``shape_bias.png`` (per
model: overall and per shape class), ``cue_conflict_examples.png`` and, per model,
``texture_<label>.png``: the images it classified by texture.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from pydantic import Field

from cnnvit.analyze.files import file_stems
from cnnvit.analyze.registry import AnalysisOptions, Column, Command, Inputs, analysis
from cnnvit.folders import AnalysisFolder, json_ready
from cnnvit.formatting import json_number
from cnnvit.markup import Markup, folder_figure, join, note, table, tag
from cnnvit.plotting import model_colors, plain, save_png, style

if TYPE_CHECKING:
    from cnnvit.analyze.cue_conflict import CueConflictAnswers
    from cnnvit.analyze.images import ImageSet

__all__ = [
    "SEED",
    "PictureGrid",
    "ShapeBiasOptions",
    "ShapeBiasResult",
    "bias_figure",
    "compute_shape_bias",
    "image_grid",
    "render_shape_bias",
    "shape_bias_headline",
    "shape_bias_verdict",
    "write_shape_bias",
]

SHAPE_BIAS = Command(
    "shape-bias",
    "shape versus texture on cue-conflict images (generated from the data, or a "
    "model-vs-human folder)",
)

# The generated set's seed: a study and the command draw the same images from the same data.
SEED = 0
EXAMPLES = 16  # images in the examples figure (the first of the set)
TEXTURE_GRID_MAX = 24  # images in a model's classified-by-texture figure (the report says so)
CSV = "shape_bias.csv"
BIAS_PNG = "shape_bias.png"
EXAMPLES_PNG = "cue_conflict_examples.png"


class ShapeBiasOptions(AnalysisOptions):
    num_images: int = Field(200, gt=0, description="generated cue-conflict images")
    folder: Path | None = Field(
        None,
        description="cue-conflict images in model-vs-human's layout "
        "<shape>/<shape><n>-<texture><m>.png, instead of generated ones",
    )


@dataclass
class PictureGrid:
    """The cue-conflict images of one figure, each with the class of its shape and texture."""

    file: str
    title: str
    images: np.ndarray  # (n, C, H, W) uint8
    shapes: list[str]
    textures: list[str]


@dataclass
class ShapeBiasResult:
    """Every model's shape bias, the settings, and the pictures of the example figures."""

    settings: dict[str, Any]
    models: list[dict[str, Any]]  # per model: hits, shape bias (NaN without hits), per class
    grids: list[PictureGrid]  # the examples, then each model's images classified by texture
    seconds: float

    def to_json(self) -> dict[str, Any]:
        # json_ready: JSON has no NaN, a model without hits has a shape bias of null.
        return json_ready(
            {
                "analysis": "shape_bias",
                "settings": self.settings,
                "models": self.models,
                "figures": {"shape_bias": BIAS_PNG, "examples": EXAMPLES_PNG},
                "table": CSV,
                "seconds": round(self.seconds, 3),
            }
        )


def write_shape_bias(result: ShapeBiasResult, folder: AnalysisFolder) -> None:
    """shape_bias.json, its CSV table, the shape-bias plot and the picture grids."""
    folder.path.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    _write_csv(data["models"], folder.file(CSV))
    save_png(bias_figure(data), folder.file(BIAS_PNG))
    for grid in result.grids:
        save_png(image_grid(grid), folder.file(grid.file))
    folder.write_result(data)


def _write_csv(models: list[dict[str, Any]], path: Path) -> None:
    columns = ["shape_hits", "texture_hits", "neither", "conflicts", "shape_bias"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "shape_class", *columns])
        for m in models:
            rows = [("all", m), *m["per_class"].items()]
            for name, counts in rows:
                bias = counts["shape_bias"]
                cells = [counts[c] for c in columns[:-1]]
                writer.writerow([m["label"], name, *cells, "" if _nan(bias) else f"{bias:.6f}"])


def _nan(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# --- the figures --------------------------------------------------------------------------------


def bias_figure(result: dict[str, Any]) -> Figure:
    """Shape bias from 0 (texture) to 1 (shape) from ``shape_bias.json``: a row for all images,
    then one per shape class; a marker per model (Geirhos et al.'s layout)."""
    models = result["models"]
    classes = [c for c in result["settings"]["classes"] if any(c in m["per_class"] for m in models)]
    rows = ["all images", *classes]
    colors = model_colors([m["label"] for m in models])
    with style():
        fig = Figure(figsize=(7.5, 1.0 + 0.32 * len(rows)), layout="constrained")
        ax = fig.subplots()
        offsets = np.linspace(-0.18, 0.18, len(models)) if len(models) > 1 else [0.0]
        for m, dy in zip(models, offsets, strict=True):
            per_class = [m["per_class"].get(c, {}).get("shape_bias") for c in classes]
            for y, v in enumerate([m["shape_bias"], *per_class]):
                if _nan(v):
                    continue
                big = y == 0  # the model over all images: a large, outlined marker
                ax.scatter(
                    v,
                    y + dy,
                    s=70 if big else 26,
                    color=colors[m["label"]],
                    edgecolor="black" if big else "none",
                    zorder=3,
                    label=plain(m["label"]) if big else None,
                )
        ax.axhline(0.5, color="#888", lw=0.8)
        ax.axvline(0.5, color="#bbb", lw=0.8, ls="--")
        ax.set_yticks(range(len(rows)), [plain(r) for r in rows])
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlim(-0.03, 1.03)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1], ["0\ntexture", "0.25", "0.5", "0.75", "1\nshape"])
        ax.set_xlabel("shape bias = shape hits / (shape + texture hits)")
        if ax.get_legend_handles_labels()[0]:  # none when no model had a hit
            fig.legend(loc="outside upper center", ncols=max(1, len(models)))
    return fig


def image_grid(grid: PictureGrid) -> Figure:
    """The grid's images, 8 a row, titled with their shape and texture classes."""
    count = len(grid.images)
    cols = min(8, max(1, count))
    rows = max(1, math.ceil(count / cols))
    with style():
        fig = Figure(figsize=(1.45 * cols, 1.6 * rows + 0.4), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax in axes:
            ax.set_axis_off()
        pictures = zip(grid.images, grid.shapes, grid.textures, strict=True)
        for ax, (image, shape, texture) in zip(axes, pictures, strict=False):
            # image: (C, H, W); grey as one channel, colour as (H, W, 3)
            shown = image[0] if image.shape[0] == 1 else np.transpose(image[:3], (1, 2, 0))
            ax.imshow(shown, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(plain(f"shape {shape}\ntexture {texture}"), fontsize=7.5)
        fig.suptitle(plain(grid.title), fontsize=10)
    return fig


# --- the report section -------------------------------------------------------------------------


def render_shape_bias(folder: AnalysisFolder) -> Markup:
    """Per model shape bias with its counts, the shape-bias plot, sample cue-conflict images and
    the images each model classified by texture; a note when the files are missing or damaged."""
    try:
        # Read here rather than by folder.read_result: the note names what went wrong.
        result = json.loads(folder.result.read_text())
        models = list(result["models"])
        settings = dict(result["settings"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return note(
            f"No shape-bias results in {folder.path} ({folder.result.name} missing or damaged: "
            f"{type(err).__name__}); run `cnnvit shape-bias` or enable shape_bias in the study."
        )
    parts = [_source(settings), _table(models)]
    figures = result.get("figures") or {}
    parts.append(
        folder_figure(
            folder.path,
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
            folder.path,
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
                    folder.path,
                    name,
                    f"{m.get('label')}: classified by texture",
                    f"{m.get('label')}: cue-conflict images it answered with the texture's class "
                    f"(the first {TEXTURE_GRID_MAX}).",
                )
            )
    return join(parts)


def _source(settings: dict) -> Markup:
    if settings.get("source") == "folder":
        where = f"the cue-conflict images of {settings.get('folder')}"
    else:
        where = (
            f"{settings.get('images')} cue-conflict images generated from the test images "
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
    rows = [
        [
            m.get("label", "?"),
            _fmt(m.get("shape_bias")),
            m.get("shape_hits", "-"),
            m.get("texture_hits", "-"),
            m.get("neither", "-"),
            m.get("conflicts", "-"),
        ]
        for m in models
    ]
    headers = ["model", "shape bias", "shape hits", "texture hits", "neither", "images"]
    return table(headers, rows, classes=["name", "num", "num", "num", "num", "num"])


def _fmt(value: object) -> str:
    if isinstance(value, (int, float)) and not math.isnan(value):
        return f"{value:.2f}"
    return "- (no hits)"


# --- the summary --------------------------------------------------------------------------------


def shape_bias_headline(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``shape_bias.json`` -> {model label: {"shape_bias": value}}; NaN where a model had no
    hits (or the value is not a number)."""
    models = result.get("models")
    rows: dict[str, dict[str, float]] = {}
    for m in models if isinstance(models, list) else []:
        if isinstance(m, dict):
            rows.setdefault(str(m.get("label")), {})["shape_bias"] = json_number(
                m.get("shape_bias")
            )
    return rows


def shape_bias_verdict(result: dict[str, Any]) -> str | None:
    """The models from the most shape-biased down, in one sentence; None without a number."""
    found = {
        label: values["shape_bias"]
        for label, values in shape_bias_headline(result).items()
        if not math.isnan(values["shape_bias"])
    }
    if not found:
        return None
    # sorted() is stable, reverse too: ties keep the order of the file.
    ranked = sorted(found.items(), key=lambda item: item[1], reverse=True)
    parts = [f"{label} {value:.2f}" for label, value in ranked]
    return (
        "Shape bias on cue-conflict images (1 = decides by shape, 0 = by texture): "
        + ", ".join(parts)
        + "."
    )


# --- the analysis ------------------------------------------------------------------------------


@analysis(
    name="shape_bias",
    title="Shape versus texture",
    command=SHAPE_BIAS,
    options=ShapeBiasOptions,
    write=write_shape_bias,
    render=render_shape_bias,
    section_id="shape-bias",
    columns={"shape_bias": Column("shape bias", "num")},
    headline=shape_bias_headline,
    verdict=shape_bias_verdict,
    order=60,
)
def compute_shape_bias(inputs: Inputs, options: ShapeBiasOptions) -> ShapeBiasResult:
    """Shape bias of each model on the cue-conflict images of ``options.folder`` when given,
    otherwise on ``options.num_images`` generated from all the test images."""
    # The models answer through torch; imported when the analysis runs, so that the registry
    # and the report stay free of torch.
    from cnnvit.analyze.cue_conflict import cue_conflict_answers

    subjects = inputs.subjects
    images = None if options.folder is not None else _validation_images(inputs)
    run = cue_conflict_answers(
        subjects,
        images,
        folder=options.folder,
        num_images=options.num_images,
        seed=SEED,
        progress=inputs.progress,
    )
    labels = [s.label for s in subjects]
    files = [f"texture_{stem}.png" for stem in file_stems(labels)]
    examples = _grid(run, range(min(EXAMPLES, len(run.names))), EXAMPLES_PNG, "cue-conflict images")
    conflict = run.shape_labels != run.texture_labels  # (N,)
    models, grids = [], [examples]
    for subject, answers, file in zip(subjects, run.answers, files, strict=True):
        by_texture = np.nonzero((answers.predictions == run.texture_labels) & conflict)[0]
        shown = by_texture[:TEXTURE_GRID_MAX]
        models.append(
            {
                "label": subject.label,
                "family": subject.family,
                "mapping": answers.mapping,
                **answers.counts,
                "texture_figure": file if len(shown) else None,
                "texture_images": [run.names[i] for i in by_texture],
            }
        )
        if len(shown):
            title = f"{subject.label}: images classified by texture"
            grids.append(_grid(run, shown, file, title))
    settings = {
        **run.source,
        "images": len(run.names),
        "conflicts": int(conflict.sum()),
        "image_size": int(run.images.shape[-1]),
        "classes": run.classes,
        "seed": run.seed,
        "batch_size": run.batch_size,
        "devices": {s.label: str(s.device) for s in subjects},
    }
    return ShapeBiasResult(settings, models, grids, run.seconds)


def _validation_images(inputs: Inputs) -> ImageSet:
    try:
        return inputs.val()
    except ValueError as err:
        # Without test images a folder of cue-conflict images still works: say so. A
        # note, so that the error keeps its type (a ConfigError, a DataError) and message.
        err.add_note(
            "shape bias can also read a folder of cue-conflict images in model-vs-human's "
            "layout instead (folder=..., --folder DIR)"
        )
        raise


def _grid(run: CueConflictAnswers, indices: Sequence[int], file: str, title: str) -> PictureGrid:
    """The pictures of one figure, copied out of the set (which is dropped after the run)."""
    picked = np.asarray(list(indices), dtype=np.int64)  # (n,)
    return PictureGrid(
        file=file,
        title=title,
        images=run.images[picked],  # (n, C, H, W), a copy
        shapes=[run.classes[int(k)] for k in run.shape_labels[picked]],
        textures=[run.classes[int(k)] for k in run.texture_labels[picked]],
    )
