"""The report's embedding-quality section: the kNN retrieval scores that
:func:`cnnvit.analyze.knn.run_knn` wrote to a folder (``knn.json``, ``knn.png``).

Only that folder is read, so a rebuild gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from cnnvit.markup import Markup, img, join, note, table, tag

KNN_JSON = "knn.json"
KNN_PNG = "knn.png"


def render_knn(folder: Path) -> Markup:
    """One table row per model (head top-1, kNN accuracy and recall@k for each k), the plot,
    and how to read them."""
    folder = Path(folder)
    try:
        result = json.loads((folder / KNN_JSON).read_text())
        settings, models = result["settings"], list(result["models"])
        ks = [int(k) for k in settings["ks"]]
        rows = [_row(m, ks) for m in models]
    except FileNotFoundError:
        return note(
            f"No kNN results: {folder / KNN_JSON} is missing (run `cnnvit knn RUN ...`, or add "
            "`knn` to the study's `analysis` list)."
        )
    except (ValueError, KeyError, TypeError) as err:
        return note(f"The kNN results in {folder / KNN_JSON} are damaged ({err}); run it again.")
    headers = [
        "model",
        "feature dims",
        "head top-1",
        *[f"kNN acc. k={k}" for k in ks],
        *[f"recall@{k}" for k in ks],
    ]
    parts = [
        tag(
            "p",
            f"Each model's penultimate (pre-logits) features of the {settings['index_size']:,} "
            f"training images are the index; each of the {settings['query_size']:,} validation "
            "images is classified by a majority vote of its k most similar training images "
            "(cosine similarity). kNN accuracy near the head's own top-1 means the feature space "
            "itself groups the classes, so the features would serve search as well as "
            "classification; recall@k is the share of queries with at least one image of their "
            "class among the k nearest.",
        ),
        table(headers, rows, classes=["name", *["num"] * (len(headers) - 1)]),
    ]
    png = folder / KNN_PNG
    if png.is_file():
        caption = "kNN accuracy (the head's top-1 dashed) and recall@k against k, per model."
        parts.append(img(png.read_bytes(), "kNN accuracy and recall against k", caption))
    else:
        parts.append(note(f"The kNN plot is missing ({png.name})."))
    search = sorted({str(m.get("search", "exact matmul")) for m in models})
    method = f"Search: {', '.join(search)} (exact); a tied vote goes to the smallest class, as "
    parts.append(note(method + "scikit-learn's KNeighborsClassifier does.", "note"))
    return join(parts)


def _percent(value: object) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"


def _row(model: dict, ks: list[int]) -> list[object]:
    return [
        model["label"],
        model["dims"],
        _percent(model.get("head_top1")),
        *[_percent(model["knn_accuracy"].get(str(k))) for k in ks],
        *[_percent(model["recall_at_k"].get(str(k))) for k in ks],
    ]
