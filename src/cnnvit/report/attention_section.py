"""The report's attention section: what :func:`cnnvit.analyze.attention.run_attention` wrote in
a folder (``attention.json``, the distance plot, one attention grid per ViT), read back as is.

Only files are read, so a rebuild gives the same bytes; missing or damaged files become a note
that says what is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnnvit.markup import Markup, img, join, note, table, tag

__all__ = ["render_attention"]

ATTENTION_JSON = "attention.json"  # the name run_attention writes (kept here: no torch import)


def render_attention(folder: Path) -> Markup:
    """The attention section for the files ``run_attention`` wrote in ``folder``."""
    folder = Path(folder)
    path = folder / ATTENTION_JSON
    if not path.is_file():
        return note(
            f"No attention analysis in {folder} ({ATTENTION_JSON} is missing): enable "
            "`attention` in the study's `analysis` list, or run the attention analysis on the "
            "run folders."
        )
    try:
        data = json.loads(path.read_text())
        models = list(data["models"])
        parts = [_distance_part(folder, data, models), *_tables(models), *_grids(folder, models)]
    except (ValueError, KeyError, TypeError, IndexError) as err:
        return note(f"{path} is damaged ({type(err).__name__}: {err}); re-run the analysis.")
    return join(parts)


def _distance_part(folder: Path, data: dict[str, Any], models: list[dict[str, Any]]) -> Markup:
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
    if not figure or not (folder / figure).is_file():
        return join([explain, note(f"The distance plot ({figure or 'no name'}) is missing.")])
    alt = "mean attention distance and effective receptive field against relative depth"
    return join([explain, img((folder / figure).read_bytes(), alt, "Distance against depth")])


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


def _grids(folder: Path, models: list[dict[str, Any]]) -> list[Markup]:
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
        if not figure or not (folder / figure).is_file():
            out.append(
                note(f"The attention grid of {m['label']} ({figure or 'no name'}) is missing.")
            )
            continue
        out.append(
            img(
                (folder / figure).read_bytes(),
                f"attention maps of {m['label']}",
                f"{m['label']}: class-token attention per block and rollout",
            )
        )
    return out
