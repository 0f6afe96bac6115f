"""Attention maps and attention distance: how far each layer looks (``cnnvit explain``).

For each ViT (or hybrid): per-block class-token attention maps, attention rollout and the mean
attention distance per block and head; for each CNN, the counterpart, the effective receptive
field of each stage, on the same pixel scale (:mod:`cnnvit.analyze.attention` has the maths).
Files: ``attention.json``, ``attention_distance.png`` (distance against relative depth, every
model), ``attention_distance.csv`` and a grid ``attention_<model>.png`` per ViT (rows: images;
columns: the input, each block's class-token map, the rollout).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from pydantic import Field

from cnnvit.analyze.analyses.gradcam import EXPLAIN
from cnnvit.analyze.files import file_stems
from cnnvit.analyze.registry import AnalysisOptions, Column, Inputs, analysis
from cnnvit.folders import AnalysisFolder
from cnnvit.formatting import json_number
from cnnvit.markup import Markup, img, join, note, table, tag
from cnnvit.plotting import model_colors, plain, save_png, style

if TYPE_CHECKING:
    from cnnvit.analyze.attention import ReceptiveFields, VitAttention

__all__ = [
    "AttentionOptions",
    "AttentionResult",
    "attention_headline",
    "attention_verdict",
    "compute_attention",
    "distance_figure",
    "render_attention",
    "write_attention",
]

DISTANCE_PNG = "attention_distance.png"
DISTANCE_CSV = "attention_distance.csv"


class AttentionOptions(AnalysisOptions):
    images: int = Field(
        500, gt=0, description="test images for the attention distances (stratified)"
    )
    grid_images: int = Field(6, gt=0, description="rows of each ViT's attention grid")


@dataclass
class AttentionModel:
    """One model's reach (and who it is): a ViT's attention or a CNN's receptive fields."""

    label: str
    family: str
    device: str
    image_size: int
    classes: list[str]
    found: VitAttention | ReceptiveFields  # numbers and pictures (numpy), cnnvit.analyze.attention

    @property
    def is_vit(self) -> bool:
        return self.found.kind == "attention"


@dataclass
class AttentionResult:
    """Every model's reach, and the images it was measured on."""

    images: int  # test images given
    distance_images: int
    erf_images: int
    batch_size: int
    mass_fraction: float  # the share of the gradient the receptive field radius holds
    dataset: str  # the image set's name
    classes: list[str]  # the image set's class names
    grid_labels: np.ndarray  # (G,) classes of the grids' images
    models: list[AttentionModel]

    def figure(self, index: int) -> str | None:
        """The grid file of model ``index`` (None for a CNN: no attention to draw)."""
        if not self.models[index].is_vit:
            return None
        return f"attention_{file_stems([m.label for m in self.models])[index]}.png"

    def to_json(self) -> dict[str, Any]:
        models = [
            _vit_entry(m, self.figure(i)) if m.is_vit else _cnn_entry(m)
            for i, m in enumerate(self.models)
        ]
        return {
            "analysis": "attention",
            "settings": {
                "images": self.images,
                "distance_images": self.distance_images,
                "erf_images": self.erf_images,
                "grid_images": len(self.grid_labels),
                "batch_size": self.batch_size,
                "erf_mass_fraction": self.mass_fraction,
                "devices": {m.label: m.device for m in self.models},
                "dataset": self.dataset,
            },
            "models": models,
            "figures": {
                "distance": DISTANCE_PNG,
                "grids": {m["label"]: m["figure"] for m in models if m.get("figure")},
            },
            "tables": {"distance": DISTANCE_CSV},
        }


def write_attention(result: AttentionResult, folder: AnalysisFolder) -> None:
    """A grid per ViT, the distance plot and table, then attention.json."""
    folder.path.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    for model, entry in zip(result.models, data["models"], strict=True):
        if model.is_vit:
            figure = grid_figure(model, result.grid_labels, result.classes)
            save_png(figure, folder.file(entry["figure"]))
    save_png(distance_figure(data["models"]), folder.file(DISTANCE_PNG))
    _write_csv(data["models"], folder.file(DISTANCE_CSV))
    folder.write_result(data)


# --- numbers for attention.json -----------------------------------------------------------------


def _vit_entry(model: AttentionModel, figure: str | None) -> dict[str, Any]:
    vit = model.found
    size = model.image_size
    depth = len(vit.layers)
    return {
        "label": model.label,
        "family": model.family,
        "kind": "attention",
        "image_size": size,
        "grid": list(vit.grid),
        "num_prefix": vit.num_prefix,
        "patch": list(vit.patch),
        "layers": vit.layers,
        "relative_depth": [(i + 1) / depth for i in range(depth)],
        "heads": int(vit.distance.shape[1]),
        "batch_size": vit.batch_size,
        "distance_px": vit.distance.tolist(),
        "mean_distance_px": vit.distance.mean(1).tolist(),
        "uniform_distance_px": vit.uniform_distance,
        "half_diagonal_px": size * math.sqrt(2) / 2,
        "figure": figure,
    }


def _cnn_entry(model: AttentionModel) -> dict[str, Any]:
    stages = model.found.stages
    stages = [{**s, "relative_depth": (i + 1) / len(stages)} for i, s in enumerate(stages)]
    return {
        "label": model.label,
        "family": model.family,
        "kind": "receptive_field",
        "image_size": model.image_size,
        "layers": [s["layer"] for s in stages],
        "stages": stages,
        "half_diagonal_px": model.image_size * math.sqrt(2) / 2,
        "figure": None,
    }


def _write_csv(models: list[dict[str, Any]], path: Path) -> None:
    header = ["model", "kind", "layer", "relative_depth", "head", "distance_px", "radius90_px",
              "theoretical_rf_px"]  # fmt: skip
    rows = []
    for m in models:
        if m["kind"] == "attention":
            for layer, depth, heads in zip(
                m["layers"], m["relative_depth"], m["distance_px"], strict=True
            ):
                rows += [
                    [m["label"], "attention", layer, depth, h, d, "", ""]
                    for h, d in enumerate(heads)
                ]
        else:
            for s in m["stages"]:
                rf = "" if s["theoretical_rf_px"] is None else s["theoretical_rf_px"]
                rows.append([m["label"], "receptive_field", s["layer"], s["relative_depth"], "",
                             s["erf_distance_px"], s["erf_radius90_px"], rf])  # fmt: skip
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


# --- the verdict and the terminal summary -------------------------------------------------------


def _reach(data: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Model label -> (distance at its first layer, at its last), px; models without a number
    left out."""
    models = data.get("models")
    out = {}
    for m in models if isinstance(models, list) else []:
        if not isinstance(m, dict):
            continue
        if m.get("kind") == "attention":
            distances = m.get("mean_distance_px") or []
        else:
            distances = [s.get("erf_distance_px") for s in m.get("stages") or []]
        if distances:
            out[str(m.get("label"))] = (json_number(distances[0]), json_number(distances[-1]))
    return out


def attention_headline(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each model's reach at its first and last layer (ViT: mean attention distance; CNN:
    effective receptive field), px."""
    return {
        label: {"first_distance_px": first, "last_distance_px": last}
        for label, (first, last) in _reach(data).items()
    }


def attention_verdict(data: dict[str, Any]) -> str | None:
    """One sentence: how far each model looks at its first and its last layer."""
    reach = {
        label: (first, last)
        for label, (first, last) in _reach(data).items()
        if not (math.isnan(first) or math.isnan(last))
    }
    if not reach:
        return None
    parts = [
        f"{label} {first:.1f} px at its first layer, {last:.1f} px at its last"
        for label, (first, last) in reach.items()
    ]
    return (
        "How far each model looks (ViT: mean attention distance; CNN: effective receptive "
        "field): " + "; ".join(parts) + "."
    )


# --- figures ------------------------------------------------------------------------------------


def grid_figure(model: AttentionModel, labels: np.ndarray, classes: list[str]) -> Figure:
    """Rows: images; columns: the input (true class, prediction), each block's class-token map,
    the rollout; maps overlaid on the input."""
    vit = model.found
    panels = vit.panels  # (L + 1, G, S, S)
    titles = [f"block {i + 1}" for i in range(len(panels) - 1)] + ["rollout"]
    rows, cols = len(labels), 1 + len(panels)
    with style():
        fig = Figure(figsize=(1.35 * cols, 1.5 * rows + 0.5), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        for r in range(rows):
            truth = classes[int(labels[r])]
            guess = model.classes[int(vit.predicted[r])]
            _show(axes[r, 0], vit.inputs[r], None, "input" if r == 0 else "")
            axes[r, 0].set_xlabel(plain(f"{truth}\n→ {guess}"), fontsize=7)
            for c, panel in enumerate(panels, start=1):
                _show(axes[r, c], vit.inputs[r], panel[r], titles[c - 1] if r == 0 else "")
        fig.suptitle(plain(f"{model.label}: class-token attention per block and rollout"))
    return fig


def _show(ax, image: np.ndarray, heat: np.ndarray | None, title: str) -> None:
    ax.imshow(image, interpolation="nearest")
    if heat is not None:
        ax.imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize=8)


def distance_figure(models: list[dict[str, Any]]) -> Figure:
    """Mean attention distance per head (dots) and mean (line) against relative depth per ViT,
    each CNN's effective receptive field distance per stage (squares, dashed), half the image
    diagonal for scale (from the JSON entries)."""
    colors = model_colors([m["label"] for m in models])
    with style():
        fig = Figure(figsize=(7.0, 4.4), layout="constrained")
        ax = fig.add_subplot()
        for m in models:
            color = colors[m["label"]]
            if m["kind"] == "attention":
                depth = np.asarray(m["relative_depth"])
                heads = np.asarray(m["distance_px"])  # (L, heads)
                for h in range(heads.shape[1]):
                    ax.scatter(depth, heads[:, h], s=14, color=color, alpha=0.45, lw=0)
                ax.plot(depth, heads.mean(1), "-o", color=color, ms=4,
                        label=plain(f"{m['label']}: attention distance"))  # fmt: skip
                ax.axhline(m["uniform_distance_px"], color=color, ls=":", lw=1,
                           label=plain(f"{m['label']}: uniform attention"))  # fmt: skip
            else:
                depth = [s["relative_depth"] for s in m["stages"]]
                erf = [s["erf_distance_px"] for s in m["stages"]]
                ax.plot(depth, erf, "--s", color=color, ms=5,
                        label=plain(f"{m['label']}: effective receptive field"))  # fmt: skip
        for half in sorted({m["half_diagonal_px"] for m in models}):
            ax.axhline(half, color="0.55", lw=1)
            ax.annotate(f"half the image diagonal ({half:.1f} px)", (0.01, half),
                        xycoords=("axes fraction", "data"), va="bottom", fontsize=8,
                        color="0.4")  # fmt: skip
        ax.set_xlim(0, 1.05)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("relative depth (block or stage / number of them)")
        ax.set_ylabel("mean distance (pixels of the model's input)")
        ax.set_title("How far each layer looks")
        ax.legend(fontsize=8, loc="lower right")
    return fig


# --- the report section -------------------------------------------------------------------------


def render_attention(folder: AnalysisFolder) -> Markup:
    """The distance plot and how to read it, the distances per block (ViT) and stage (CNN),
    and each ViT's attention grid; a note that says what is missing or damaged."""
    path = folder.result
    if not path.is_file():
        return note(
            f"No attention analysis in {folder.path} ({path.name} is missing): enable "
            "`attention` in the study's `analysis` list, or run the attention analysis on the "
            "run folders."
        )
    try:
        data = json.loads(path.read_text())
        models = list(data["models"])
        parts = [_distance_part(folder, data), *_tables(models), *_grids(folder, models)]
    except (ValueError, KeyError, TypeError, IndexError) as err:
        return note(f"{path} is damaged ({type(err).__name__}: {err}); re-run the analysis.")
    return join(parts)


def _distance_part(folder: AnalysisFolder, data: dict[str, Any]) -> Markup:
    settings = data.get("settings", {})
    explain = tag(
        "p",
        "How far each layer looks, in pixels of the model's input. For a ViT, a dot is one "
        "attention head's mean attention distance (how far a patch looks, weighted by its "
        "attention, averaged over patches and "
        f"{settings.get('distance_images', '?')} images) and the line their mean; the dotted "
        "line is the distance uniform attention would give. A ViT attends globally already in "
        "early layers if the distance is high at shallow depth; a CNN's effective receptive "
        "field (dashed, squares: gradient-weighted distance from a centre unit, "
        f"{settings.get('erf_images', '?')} images) can only grow stage by stage. The grey line, "
        "half the image diagonal, gives the scale.",
    )
    figure = data.get("figures", {}).get("distance")
    if not figure or not folder.file(figure).is_file():
        return join([explain, note(f"The distance plot ({figure or 'no name'}) is missing.")])
    alt = "mean attention distance and effective receptive field against relative depth"
    return join([explain, img(folder.file(figure).read_bytes(), alt, "Distance against depth")])


def _tables(models: list[dict[str, Any]]) -> list[Markup]:
    vit_rows, cnn_rows = [], []
    for m in models:
        if m["kind"] == "attention":
            for layer, depth, heads in zip(
                m["layers"], m["relative_depth"], m["distance_px"], strict=True
            ):
                mean = sum(heads) / len(heads)
                vit_rows.append(
                    [m["label"], layer, f"{depth:.2f}", f"{mean:.1f}", f"{min(heads):.1f}",
                     f"{max(heads):.1f}", f"{m['uniform_distance_px']:.1f}"]
                )  # fmt: skip
        else:
            for s in m["stages"]:
                rf = s.get("theoretical_rf_px")
                cnn_rows.append(
                    [m["label"], s["layer"], f"{s['relative_depth']:.2f}",
                     "×".join(str(v) for v in s["output_size"]), f"{s['erf_distance_px']:.1f}",
                     f"{s['erf_radius90_px']:.1f}", "—" if rf is None else f"{rf}×{rf}"]
                )  # fmt: skip
    out = []
    if vit_rows:
        headers = ["model", "block", "relative depth", "mean distance (px)", "nearest head",
                   "farthest head", "uniform attention"]  # fmt: skip
        out.append(table(headers, vit_rows, classes=["", "", *["num"] * 5]))
    if cnn_rows:
        headers = ["model", "stage", "relative depth", "output map", "ERF mean distance (px)",
                   "radius with 90 % of the gradient (px)", "theoretical field (px)"]  # fmt: skip
        out.append(table(headers, cnn_rows, classes=["", "", "num", "num", "num", "num", "num"]))
    return out


def _grids(folder: AnalysisFolder, models: list[dict[str, Any]]) -> list[Markup]:
    vits = [m for m in models if m["kind"] == "attention"]
    if not vits:
        return []
    out = [
        tag(
            "p",
            "Where the class token looks. Each row is an image (true class → prediction); then, "
            "per transformer block, the class token's attention over the patches (heads "
            "averaged, the residual added), and the attention rollout through all blocks. Each "
            "map is scaled to its own range: bright patches are the ones attended most.",
        )
    ]
    for m in vits:
        figure = m.get("figure")
        if not figure or not folder.file(figure).is_file():
            out.append(
                note(f"The attention grid of {m['label']} ({figure or 'no name'}) is missing.")
            )
            continue
        out.append(
            img(
                folder.file(figure).read_bytes(),
                f"attention maps of {m['label']}",
                f"{m['label']}: class-token attention per block and rollout",
            )
        )
    return out


# --- the analysis ------------------------------------------------------------------------------


@analysis(
    name="attention",
    title="Attention maps and attention distance",
    command=EXPLAIN,
    options=AttentionOptions,
    write=write_attention,
    render=render_attention,
    columns={
        "first_distance_px": Column("reach, first layer", "px"),
        "last_distance_px": Column("reach, last layer", "px"),
    },
    columns_note="reach = attention distance or effective receptive field, px",
    headline=attention_headline,
    verdict=attention_verdict,
    order=20,
)
def compute_attention(inputs: Inputs, options: AttentionOptions) -> AttentionResult:
    """Attention distances, maps and rollout for each ViT and the effective receptive field of
    each CNN's stages, on ``options.images`` test images."""
    # The attention and gradients come from running the models (torch); imported when the
    # analysis runs, so that the registry and the report stay free of torch.
    from cnnvit.analyze.attention import attention_run

    images = inputs.val(options.images)
    subjects = inputs.subjects
    run = attention_run(subjects, images, num_images=options.grid_images, progress=inputs.progress)
    models = [
        AttentionModel(s.label, s.family, str(s.device), s.image_size, list(s.classes), found)
        for s, found in zip(subjects, run.models, strict=True)
    ]
    return AttentionResult(
        images=len(images),
        distance_images=run.distance_images,
        erf_images=run.erf_images,
        batch_size=run.batch_size,
        mass_fraction=run.mass_fraction,
        dataset=images.name,
        classes=list(images.classes),
        grid_labels=run.grid_labels,
        models=models,
    )
