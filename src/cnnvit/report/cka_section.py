"""The report's CKA section: the heatmaps and best-matching layers that
:func:`cnnvit.analyze.cka.run_cka` wrote to a folder (``cka.json``, ``cka_<a>__<b>.png``).

Only that folder is read, so a rebuild gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from cnnvit.markup import Markup, img, join, note, table, tag

CKA_JSON = "cka.json"


def render_cka(folder: Path) -> Markup:
    """Heatmaps (model pairs first, then each model against itself), how to read them, and for
    each model pair the best-matching layer of B for every layer of A."""
    folder = Path(folder)
    try:
        result = json.loads((folder / CKA_JSON).read_text())
        settings, pairs = result["settings"], list(result["pairs"])
    except FileNotFoundError:
        return note(
            f"No CKA results: {folder / CKA_JSON} is missing (run `cnnvit similarity RUN_A "
            "RUN_B`, or add `cka` to the study's `analysis` list)."
        )
    except (ValueError, KeyError, TypeError) as err:
        return note(f"The CKA results in {folder / CKA_JSON} are damaged ({err}); run it again.")
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


def _pair(folder: Path, pair: dict, settings: dict) -> Markup:
    a, b = str(pair.get("a", "?")), str(pair.get("b", "?"))
    title = f"{a} against itself" if pair.get("self") else f"{a} (rows) against {b} (columns)"
    png = folder / str(pair.get("png", ""))
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
