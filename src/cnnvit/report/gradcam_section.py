"""The report's Grad-CAM section: what :func:`cnnvit.analyze.cam.run_gradcam` wrote to a folder
(``gradcam.json``, one ``gradcam_<model>.png`` grid per model, ``gradcam_area.png``).

Only that folder is read, so a rebuild gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from cnnvit.markup import Markup, folder_figure, join, note, table, tag

GRADCAM_JSON = "gradcam.json"


def render_gradcam(folder: Path) -> Markup:
    """How to read the grids, a table of CAM area at the shallowest and deepest layer per model,
    the area-against-depth plot and each model's grid."""
    folder = Path(folder)
    try:
        result = json.loads((folder / GRADCAM_JSON).read_text())
        models = list(result["models"])
        method, target = str(result["method"]), str(result["target"])
        rows = [_row(m, int(result["num_images"])) for m in models]
    except FileNotFoundError:
        return note(
            f"No Grad-CAM results: {folder / GRADCAM_JSON} is missing (run `cnnvit explain RUN "
            "...`, or add `gradcam` to the study's `analysis` list)."
        )
    except (ValueError, KeyError, TypeError, IndexError) as err:
        return note(
            f"The Grad-CAM results in {folder / GRADCAM_JSON} are damaged ({err}); run it again."
        )
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
    ]
    parts.append(
        folder_figure(
            folder,
            str(result.get("area_figure", "gradcam_area.png")),
            "CAM area against relative depth",
            "CAM area against relative depth (layer / number of layers), mean over "
            "the images, per model.",
        )
    )
    for m in models:
        caption = (
            f"{m['label']}: {method} at each depth; first column the input with its true class "
            "→ the model's prediction (red when wrong)."
        )
        parts.append(
            folder_figure(
                folder, str(m.get("figure", "")), f"Grad-CAM grid of {m['label']}", caption
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
