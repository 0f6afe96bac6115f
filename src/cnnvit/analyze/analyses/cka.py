"""CKA: how alike two models' layers represent the same images (``cnnvit similarity``).

Linear CKA between every layer of every pair of models, and of each model with itself
(:mod:`cnnvit.analyze.cka` has the estimator). Files: ``cka.json``, and per matrix
``cka_<a>__<b>.csv`` and ``.png`` (A's layers on the y axis, input at the bottom).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from cnnvit.analyze.files import file_stems
from cnnvit.analyze.registry import AnalysisOptions, Command, Inputs, analysis
from cnnvit.folders import AnalysisFolder
from cnnvit.markup import Markup, img, join, note, table, tag
from cnnvit.plotting import plain, save_png, style

__all__ = ["CkaOptions", "CkaResult", "cka_heatmap", "compute_cka", "render_cka", "write_cka"]

SIMILARITY = Command(
    "similarity", "CKA between every pair of layers of two models (and each with itself)"
)


class CkaOptions(AnalysisOptions):
    layers: Literal["stages", "blocks", "all"] = Field(
        "blocks",
        description="blocks (default), stages, or all (every conv, linear, norm and activation "
        "layer)",
    )
    batch_size: int = Field(
        64, ge=4, description="minibatch size, at least 4 (the estimator needs n > 3)"
    )
    images: int = Field(1000, gt=0, description="test images (stratified)")


@dataclass
class CkaResult:
    """Every CKA matrix of one run of the analysis, and what it was computed on."""

    labels: list[str]
    families: list[str]
    layers: list[list[str]]  # per model
    matrices: dict[tuple[int, int], np.ndarray]  # (i, j) -> (L_i, L_j): pairs, then selves
    settings: dict[str, Any] = field(default_factory=dict)

    def stem(self, i: int, j: int) -> str:
        stems = file_stems(self.labels)
        return f"cka_{stems[i]}__{stems[j]}"

    def to_json(self) -> dict[str, Any]:
        entries = [
            _pair_entry(m, self.layers[i], self.layers[j], self.labels[i], self.labels[j], s)
            for (i, j), m in self.matrices.items()
            for s in [self.stem(i, j)]
        ]
        return {
            "analysis": "cka",
            "estimator": "minibatch linear CKA, unbiased HSIC_1 (Nguyen et al. 2021)",
            "settings": self.settings,
            "models": [
                {"label": label, "family": family, "layers": names}
                for label, family, names in zip(
                    self.labels, self.families, self.layers, strict=True
                )
            ],
            "pairs": entries,
        }


def write_cka(result: CkaResult, folder: AnalysisFolder) -> None:
    """cka.json, and per matrix its CSV table and PNG heatmap."""
    folder.path.mkdir(parents=True, exist_ok=True)
    for (i, j), matrix in result.matrices.items():
        stem = result.stem(i, j)
        rows, cols = result.layers[i], result.layers[j]
        frame = pd.DataFrame(matrix, index=rows, columns=cols)
        frame.to_csv(folder.file(f"{stem}.csv"), index_label="layer")
        heatmap = cka_heatmap(matrix, rows, cols, result.labels[i], result.labels[j])
        save_png(heatmap, folder.file(f"{stem}.png"))
    folder.write_result(result.to_json())


# --- numbers for cka.json -----------------------------------------------------------------------


def _number(value: float) -> float | None:
    """JSON has no NaN: a constant layer's undefined CKA becomes null."""
    return round(float(value), 6) if np.isfinite(value) else None


def _best_matches(matrix: np.ndarray, rows: list[str], cols: list[str]) -> list[dict]:
    """For each row layer, the column layer with the highest CKA (None when all are NaN)."""
    out = []
    for r, name in enumerate(rows):
        values = matrix[r]
        if not np.isfinite(values).any():
            out.append({"layer": name, "match": None, "cka": None})
            continue
        c = int(np.nanargmax(values))
        out.append({"layer": name, "match": cols[c], "cka": _number(values[c])})
    return out


def _pair_entry(
    matrix: np.ndarray, rows: list[str], cols: list[str], a: str, b: str, stem: str
) -> dict:
    self_pair = a == b
    entry: dict = {
        "a": a,
        "b": b,
        "self": self_pair,
        "layers_a": rows,
        "layers_b": cols,
        "matrix": [[_number(v) for v in row] for row in matrix],
        "csv": f"{stem}.csv",
        "png": f"{stem}.png",
        "mean": _number(np.nanmean(matrix)) if np.isfinite(matrix).any() else None,
        "last_layers": _number(matrix[-1, -1]),
    }
    if self_pair:
        # How much each layer changes the representation of the one before it.
        entry["adjacent"] = [_number(matrix[k, k + 1]) for k in range(len(rows) - 1)]
    else:
        entry["best_match_a"] = _best_matches(matrix, rows, cols)
        entry["best_match_b"] = _best_matches(matrix.T, cols, rows)
    return entry


# --- the heatmap --------------------------------------------------------------------------------


def cka_heatmap(matrix: np.ndarray, rows: list[str], cols: list[str], a: str, b: str) -> Figure:
    """A's layers on the y axis (input at the bottom), B's on the x axis, colour 0..1; ticks
    stay readable up to ~60 layers (smaller type, then every k-th name)."""
    longest = max(len(n) for n in [*rows, *cols])
    size = 8.0 if max(len(rows), len(cols)) <= 24 else 6.5
    label_in = longest * size * 0.6 / 72  # tick-label length in inches
    width = min(16.0, max(4.5, 0.15 * len(cols) + label_in + 2.2))
    height = min(16.0, max(3.8, 0.15 * len(rows) + label_in + 1.4))
    with style(**{"axes.grid": False}):
        fig = Figure(figsize=(width, height), layout="constrained")
        ax = fig.add_subplot()
        shown = np.ma.masked_invalid(matrix)
        image = ax.imshow(
            shown,
            origin="lower",
            vmin=0.0,
            vmax=1.0,
            cmap="magma",
            aspect="auto",
            interpolation="nearest",
        )
        _ticks(ax.set_yticks, rows, size)
        _ticks(ax.set_xticks, cols, size, rotation=90)
        if matrix.size <= 64:
            _annotate(ax, matrix)
        title = f"{plain(a)}: self-similarity" if a == b else f"{plain(a)} vs {plain(b)}"
        ax.set_title(f"Linear CKA, {title}")
        ax.set_ylabel(f"{plain(a)} layer (input at the bottom)")
        ax.set_xlabel(f"{plain(b)} layer")
        fig.colorbar(image, ax=ax, shrink=0.8, label="CKA")
    return fig


def _ticks(setter, names: list[str], size: float, rotation: float = 0) -> None:
    step = max(1, math.ceil(len(names) / 60))  # beyond ~60 names, every k-th one
    positions = list(range(0, len(names), step))
    setter(positions, [plain(names[p]) for p in positions], fontsize=size, rotation=rotation)


def _annotate(ax, matrix: np.ndarray) -> None:
    for (r, c), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            color = "black" if value > 0.6 else "white"
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)


# --- the report section -------------------------------------------------------------------------


def render_cka(folder: AnalysisFolder) -> Markup:
    """Heatmaps (model pairs first, then each model against itself), how to read them, and for
    each model pair the best-matching layer of B for every layer of A."""
    if not folder.result.is_file():
        return note(
            f"No CKA results: {folder.result} is missing (run `cnnvit similarity RUN_A "
            "RUN_B`, or add `cka` to the study's `analysis` list)."
        )
    result = folder.read_result()
    try:
        settings, pairs = result["settings"], list(result["pairs"])  # type: ignore[index]
    except (KeyError, TypeError) as err:  # TypeError: not JSON at all (read_result gave None)
        return note(f"The CKA results in {folder.result} are damaged ({err!r}); run it again.")
    parts = [_explain(settings)]
    for pair in sorted(pairs, key=lambda p: bool(p.get("self"))):
        parts.append(_pair(folder, pair, settings))
    return join(parts)


def _explain(settings: dict) -> Markup:
    dropped = settings.get("dropped_images") or 0
    tail = f" ({dropped} images of a short last batch left out)" if dropped else ""
    return join(
        [
            tag(
                "p",
                "Each cell is the linear CKA between two layers' representations of the same "
                "images: 1 means the layers encode the images alike up to a rotation and a "
                "scale, 0 that they share no linear structure. In a map between two models, a "
                "bright band along the diagonal means both build their representations in the "
                "same order; in a model's map against itself, bright blocks are runs of layers "
                "that change the representation little.",
            ),
            note(
                f"Minibatch linear CKA with the unbiased HSIC estimator (Nguyen et al. 2021) "
                f"over {settings.get('num_images', '?')} images{tail}, batches of "
                f"{settings.get('batch_size', '?')}, layers: {_layers(settings.get('layers'))}. "
                "Rows are the first model's layers, input at the bottom.",
                "note",
            ),
        ]
    )


def _layers(layers: object) -> str:
    if isinstance(layers, list):
        return f"{len(layers)} named modules"
    return str(layers)


def _pair(folder: AnalysisFolder, pair: dict, settings: dict) -> Markup:
    a, b = str(pair.get("a", "?")), str(pair.get("b", "?"))
    title = f"{a} against itself" if pair.get("self") else f"{a} (rows) against {b} (columns)"
    png = folder.file(str(pair.get("png", "")))
    if not pair.get("png") or not png.is_file():
        figure = note(f"The heatmap for {title} is missing ({png.name or 'no file named'}).")
    else:
        caption = f"Linear CKA, {title}, {settings.get('num_images', '?')} images."
        figure = img(png.read_bytes(), f"CKA heatmap, {title}", caption)
    parts = [tag("h3", title), figure]
    matches = pair.get("best_match_a")
    if matches:
        rows = [
            [m["layer"], m["match"] or "-", "-" if m["cka"] is None else f"{m['cka']:.3f}"]
            for m in matches
        ]
        headers = [f"{a} layer", f"most similar {b} layer", "CKA"]
        parts.append(table(headers, rows, classes=["name", "name", "num"]))
    return join(parts)


# --- the analysis ------------------------------------------------------------------------------


@analysis(
    name="cka",
    title="Representation similarity (CKA)",
    command=SIMILARITY,
    options=CkaOptions,
    write=write_cka,
    render=render_cka,
    order=40,
)
def compute_cka(inputs: Inputs, options: CkaOptions) -> CkaResult:
    """CKA of every pair of models and each model with itself, on ``options.images``
    test images."""
    # The estimator runs the models (torch); imported when the analysis runs, so that the
    # registry and the report stay free of torch.
    from cnnvit.analyze.cka import all_pairs_cka

    images = inputs.val(options.images)
    subjects = inputs.subjects
    run = all_pairs_cka(
        subjects,
        images,
        layers=options.layers,
        batch_size=options.batch_size,
        progress=inputs.progress,
    )
    return CkaResult(
        labels=[s.label for s in subjects],
        families=[s.family for s in subjects],
        layers=run.layers,
        matrices=run.matrices,
        settings={
            "layers": options.layers,
            "batch_size": options.batch_size,
            "num_images": run.num_images,
            "dropped_images": run.dropped,
            "images": images.name,
            "devices": {s.label: str(s.device) for s in subjects},
            "seconds": round(run.seconds, 3),
        },
    )
