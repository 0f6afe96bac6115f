"""Embedding quality: k-nearest-neighbour retrieval on penultimate features (``cnnvit knn``).

Each model's pre-logits features of the training images are the index, those of the test
images the queries, compared by cosine similarity (:mod:`cnnvit.analyze.knn` has the search and
the scores). Files: ``knn.json``, ``knn.csv`` (one row per model and k) and ``knn.png`` (kNN
accuracy and recall@k against k).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
from pydantic import Field

from cnnvit.analyze.registry import AnalysisOptions, Column, Command, Inputs, analysis
from cnnvit.folders import AnalysisFolder
from cnnvit.formatting import json_number, pct
from cnnvit.markup import Markup, img, join, note, table, tag
from cnnvit.plotting import model_colors, plain, save_png, style
from cnnvit.ui import console

if TYPE_CHECKING:
    from cnnvit.analyze.knn import ModelScores

__all__ = [
    "KNN",
    "KnnOptions",
    "KnnResult",
    "compute_knn",
    "knn_figure",
    "knn_headline",
    "knn_verdict",
    "render_knn",
    "write_knn",
]

# The CLI indexes every training image unless told otherwise; a study caps its index (below).
KNN = Command(
    "knn",
    "k-nearest-neighbour retrieval on penultimate features: training images as the index, "
    "test images as queries",
    defaults={"max_index": None},
)


class KnnOptions(AnalysisOptions):
    ks: list[int] = Field(
        default_factory=lambda: [1, 5, 20],
        description="neighbour counts k (at most the index size)",
        json_schema_extra={"flag": "--k"},
    )
    max_index: int | None = Field(
        50000,
        gt=0,
        description="training images in the index (stratified); null = all",
        json_schema_extra={"flag": "--index-images"},
    )
    max_queries: int | None = Field(None, gt=0, description="test queries; null = all")
    batch_size: int = Field(256, gt=0, description="images per forward pass")


@dataclass
class KnnResult:
    """Every model's retrieval scores of one run of the analysis, and what they were computed
    on."""

    labels: list[str]
    families: list[str]
    scores: list[ModelScores]  # per model
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "analysis": "knn",
            "settings": self.settings,
            "models": [
                _model_entry(label, family, scores)
                for label, family, scores in zip(
                    self.labels, self.families, self.scores, strict=True
                )
            ],
        }


def _model_entry(label: str, family: str, scores: ModelScores) -> dict[str, Any]:
    # knn.json's keys are strings: k becomes "1", "5", ...
    return {
        "label": label,
        "family": family,
        "dims": scores.dims,
        "head_top1": scores.head_top1,
        "search": scores.search,
        "ks": scores.ks,
        "knn_accuracy": {str(k): scores.accuracy[k] for k in scores.ks},
        "recall_at_k": {str(k): scores.recall[k] for k in scores.ks},
    }


def write_knn(result: KnnResult, folder: AnalysisFolder) -> None:
    """knn.json, knn.csv (one row per model and k) and knn.png (the scores against k)."""
    folder.path.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    pd.DataFrame(_csv_rows(data)).to_csv(folder.file("knn.csv"), index=False)
    save_png(knn_figure(data), folder.file("knn.png"))
    folder.write_result(data)


def _csv_rows(result: dict) -> list[dict]:
    settings = result["settings"]
    return [
        {
            "model": m["label"],
            "k": k,
            "knn_accuracy": m["knn_accuracy"][str(k)],
            "recall_at_k": m["recall_at_k"][str(k)],
            "head_top1": m["head_top1"],
            "dims": m["dims"],
            "index_size": settings["index_size"],
            "query_size": settings["query_size"],
        }
        for m in result["models"]
        for k in m["ks"]
    ]


# --- the plot -----------------------------------------------------------------------------------


def knn_figure(result: dict) -> Figure:
    """kNN accuracy (the head's top-1 dashed) and recall@k against k, one colour per model;
    ``result``: what knn.json holds."""
    models = result["models"]
    colors = model_colors([m["label"] for m in models])
    with style():
        fig = Figure(figsize=(9.0, 3.8), layout="constrained")
        acc_ax, rec_ax = fig.subplots(1, 2)
        for m in models:
            ks, color = m["ks"], colors[m["label"]]
            acc = [m["knn_accuracy"][str(k)] for k in ks]
            rec = [m["recall_at_k"][str(k)] for k in ks]
            acc_ax.plot(ks, acc, "o-", color=color, label=plain(m["label"]))
            rec_ax.plot(ks, rec, "o-", color=color, label=plain(m["label"]))
            if m["head_top1"] is not None:
                acc_ax.axhline(m["head_top1"], color=color, ls="--", lw=1)
        titles = {
            acc_ax: "kNN accuracy (dashed: the head's top-1)",
            rec_ax: "recall@k (same class among the k nearest)",
        }
        all_ks = sorted({k for m in models for k in m["ks"]})
        for ax, title in titles.items():
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator(all_ks))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
            ax.xaxis.set_minor_locator(NullLocator())
            # A fresh formatter per axis: matplotlib binds a formatter to its axis.
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{100 * y:.4g}%"))
            ax.set_xlabel("k (neighbours, cosine similarity)")
            ax.set_title(title)
        acc_ax.legend(loc="lower right")
    return fig


# --- the report section -------------------------------------------------------------------------


def render_knn(folder: AnalysisFolder) -> Markup:
    """One table row per model (head top-1, kNN accuracy and recall@k for each k), the plot,
    and how to read them. Only the folder is read, so a rebuild gives the same bytes."""
    # Read here rather than through folder.read_result(): a damaged file's note quotes the
    # parser's own error.
    try:
        result = json.loads(folder.result.read_text())
        settings, models = result["settings"], list(result["models"])
        ks = [int(k) for k in settings["ks"]]
        rows = [_row(m, ks) for m in models]
    except FileNotFoundError:
        return note(
            f"No kNN results: {folder.result} is missing (run `cnnvit knn RUN ...`, or add "
            "`knn` to the study's `analysis` list)."
        )
    except (ValueError, KeyError, TypeError) as err:
        return note(f"The kNN results in {folder.result} are damaged ({err}); run it again.")
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
            f"training images are the index; each of the {settings['query_size']:,} test "
            "images is classified by a majority vote of its k most similar training images "
            "(cosine similarity). kNN accuracy near the head's own top-1 means the feature space "
            "itself groups the classes, so the features would serve search as well as "
            "classification; recall@k is the share of queries with at least one image of their "
            "class among the k nearest.",
        ),
        table(headers, rows, classes=["name", *["num"] * (len(headers) - 1)]),
    ]
    png = folder.file("knn.png")
    if png.is_file():
        caption = "kNN accuracy (the head's top-1 dashed) and recall@k against k, per model."
        parts.append(img(png.read_bytes(), "kNN accuracy and recall against k", caption))
    else:
        parts.append(note(f"The kNN plot is missing ({png.name})."))
    search = sorted({str(m.get("search", "exact matmul")) for m in models})
    method = f"Search: {', '.join(search)} (exact); a tied vote goes to the smallest class, as "
    parts.append(note(method + "scikit-learn's KNeighborsClassifier does.", "note"))
    return join(parts)


def _row(model: dict, ks: list[int]) -> list[object]:
    return [
        model["label"],
        model["dims"],
        pct(model.get("head_top1"), sep="", missing="-"),
        *[pct(model["knn_accuracy"].get(str(k)), sep="", missing="-") for k in ks],
        *[pct(model["recall_at_k"].get(str(k)), sep="", missing="-") for k in ks],
    ]


# --- the summary: headline numbers and the verdict ----------------------------------------------


def knn_headline(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    """knn.json -> {model label: {"knn_top1", "head_top1"}}; knn_top1 is the 1-NN accuracy, so
    NaN unless the smallest k is 1; anything not a number is NaN."""
    models = data.get("models")
    rows: dict[str, dict[str, float]] = {}
    for m in models if isinstance(models, list) else []:
        if not isinstance(m, dict):
            continue
        accuracy = m.get("knn_accuracy") or {}
        first_k = min(accuracy, key=int) if accuracy else None
        rows.setdefault(str(m.get("label")), {}).update(
            knn_top1=json_number(accuracy.get(first_k)) if first_k == "1" else math.nan,
            head_top1=json_number(m.get("head_top1")),
        )
    return rows


def knn_verdict(data: dict[str, Any]) -> str | None:
    """knn.json -> the models ranked by 1-NN top-1, each with its head's top-1; None unless two
    or more models have a 1-NN figure."""
    rows = knn_headline(data)
    top1 = pd.Series({m: r["knn_top1"] for m, r in rows.items()}, dtype="float64").dropna()
    if len(top1) < 2:
        return None
    parts = [
        f"{m} {100 * v:.1f} % (its classifier head {100 * rows[m]['head_top1']:.1f} %)"
        for m, v in top1.sort_values(ascending=False).items()
    ]
    return (
        "Nearest-neighbour retrieval on penultimate features (1-NN top-1): "
        + "; ".join(parts)
        + "."
    )


# --- the analysis ------------------------------------------------------------------------------


def _within_index(ks: list[int], size: int) -> list[int]:
    """The ks up to the index size (the whole index when none is): a tiny training set cannot
    give more neighbours than it has images."""
    kept = [k for k in ks if k <= size] or [size]
    if kept != list(ks):
        console.print(f"[yellow]kNN: {size} training images, so k = {kept}[/]")
    return kept


@analysis(
    name="knn",
    title="Embedding quality (kNN retrieval)",
    command=KNN,
    options=KnnOptions,
    write=write_knn,
    render=render_knn,
    columns={"knn_top1": Column("1-NN", "pct"), "head_top1": Column("head", "pct")},
    columns_note="top-1 of 1-NN retrieval and of the head",
    headline=knn_headline,
    verdict=knn_verdict,
    order=50,
)
def compute_knn(inputs: Inputs, options: KnnOptions) -> KnnResult:
    """kNN retrieval of ``options.max_queries`` test images against an index of
    ``options.max_index`` training images (stratified; None: all), for each k."""
    # The search runs the models (torch); imported when the analysis runs, so that the
    # registry and the report stay free of torch.
    from cnnvit.analyze.knn import knn_retrieval

    index = inputs.train(options.max_index)
    ks = _within_index(options.ks, len(index))
    subjects = inputs.subjects
    queries = inputs.val(options.max_queries)
    run = knn_retrieval(
        subjects,
        index,
        queries,
        ks=ks,
        batch_size=options.batch_size,
        progress=inputs.progress,
    )
    return KnnResult(
        labels=[s.label for s in subjects],
        families=[s.family for s in subjects],
        scores=run.models,
        settings={
            "ks": run.models[0].ks,
            "metric": "cosine",
            "vote": "uniform, ties to the smallest class (as scikit-learn)",
            "features": "pre-logits (forward_head(..., pre_logits=True))",
            "index": index.name,
            "queries": queries.name,
            "index_size": len(index),
            "query_size": len(queries),
            "batch_size": options.batch_size,
            "devices": {s.label: str(s.device) for s in subjects},
            "seconds": round(run.seconds, 3),
        },
    )
