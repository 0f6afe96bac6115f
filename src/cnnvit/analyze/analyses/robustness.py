"""Corruption robustness: top-1 accuracy clean and under common corruptions (``cnnvit
robustness``).

Gaussian noise, blur, contrast, brightness, JPEG, pixelation and rotation at severities 1..5,
after ImageNet-C (:mod:`cnnvit.analyze.robustness` has the corruptions and the measurement).
Files: ``robustness.json``, ``robustness.csv`` (one row per model, corruption, severity; the
clean accuracy as corruption ``clean``, severity 0), ``robustness.png`` (accuracy against
severity, a panel per corruption) and ``corruption_examples.png``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from pydantic import Field

from cnnvit.analyze.registry import AnalysisOptions, Column, Command, Inputs, analysis
from cnnvit.folders import AnalysisFolder
from cnnvit.formatting import json_number, pct
from cnnvit.markup import Markup, folder_figure, join, note, table, tag
from cnnvit.plotting import model_colors, plain, save_png, style

__all__ = [
    "RobustnessOptions",
    "RobustnessResult",
    "accuracy_figure",
    "compute_robustness",
    "examples_figure",
    "render_robustness",
    "robustness_headline",
    "robustness_verdict",
    "write_robustness",
]

ROBUSTNESS = Command(
    "robustness",
    "accuracy under noise, blur, contrast, brightness, JPEG, pixelation and rotation at five "
    "severities",
)


class RobustnessOptions(AnalysisOptions):
    images: int = Field(500, gt=0, description="test images")
    corruptions: list[str] | None = Field(
        None,
        description="null = all of them",
        json_schema_extra={"flag": "--corruption", "action": "append"},
    )
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    batch_size: int = Field(256, ge=1, description="images per batch")
    seed: int = Field(0, description="seed of the noise, drawn afresh for each severity")


@dataclass
class RobustnessResult:
    """The accuracies of one run of the analysis, and what they were measured on."""

    labels: list[str]
    families: list[str]
    devices: list[str]
    # per model: {(corruption, severity): top-1 accuracy}, the clean images as ("clean", 0)
    accuracy: list[dict[tuple[str, int], float]]
    examples: np.ndarray  # (corruptions, 1 + severities, C, H, W) uint8: the first image
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        names, sevs = self.settings["corruptions"], self.settings["severities"]
        models = [
            _model_entry(label, family, device, hits, names, sevs)
            for label, family, device, hits in zip(
                self.labels, self.families, self.devices, self.accuracy, strict=True
            )
        ]
        return {
            "analysis": "robustness",
            "settings": self.settings,
            "models": models,
            "figures": {"accuracy": "robustness.png", "examples": "corruption_examples.png"},
            "table": "robustness.csv",
            "seconds": round(self.seconds, 3),
        }


def _model_entry(
    label: str,
    family: str,
    device: str,
    hits: dict[tuple[str, int], float],
    names: Sequence[str],
    sevs: Sequence[int],
) -> dict[str, Any]:
    clean = hits[("clean", 0)]
    accuracy = {name: {str(sev): hits[(name, sev)] for sev in sevs} for name in names}
    by_corruption = {name: float(np.mean(list(accuracy[name].values()))) for name in names}
    mean = float(np.mean(list(by_corruption.values())))
    return {
        "label": label,
        "family": family,
        "clean_accuracy": clean,
        "accuracy": accuracy,
        "mean_by_corruption": by_corruption,
        "mean_corruption_accuracy": mean,
        # None when undefined: a model with no clean hits.
        "relative_accuracy": mean / clean if clean > 0 else None,
        "device": device,
    }


def write_robustness(result: RobustnessResult, folder: AnalysisFolder) -> None:
    """robustness.json, the CSV table, the accuracy plot and the corruption examples."""
    folder.path.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    _write_csv(data, folder.file("robustness.csv"))
    save_png(accuracy_figure(data), folder.file("robustness.png"))
    sevs = result.settings["severities"]
    figure = examples_figure(result.examples, result.settings["corruptions"], sevs)
    save_png(figure, folder.file("corruption_examples.png"))
    folder.write_result(data)


def _write_csv(data: dict[str, Any], path: Path) -> None:
    n = data["settings"]["images"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "corruption", "severity", "accuracy", "correct", "images"])
        for m in data["models"]:
            rows = [("clean", 0, m["clean_accuracy"])]
            rows += [
                (name, int(sev), acc)
                for name, by_sev in m["accuracy"].items()
                for sev, acc in by_sev.items()
            ]
            for name, sev, acc in rows:
                writer.writerow([m["label"], name, sev, f"{acc:.6f}", round(acc * n), n])


# --- the figures -------------------------------------------------------------------------------


def accuracy_figure(data: dict[str, Any]) -> Figure:
    """A panel per corruption: accuracy against severity (0 = clean), a line per model;
    ``data``: what robustness.json holds."""
    names = data["settings"]["corruptions"]
    sevs = data["settings"]["severities"]
    with style():
        colors = model_colors([m["label"] for m in data["models"]])
        cols = min(4, max(1, len(names)))
        rows = max(1, math.ceil(len(names) / cols))
        fig = Figure(figsize=(3.2 * cols, 2.7 * rows + 0.6), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
        for ax, name in zip(axes, names, strict=False):
            for m in data["models"]:
                ys = [m["clean_accuracy"]] + [m["accuracy"][name][str(s)] for s in sevs]
                ax.plot([0, *sevs], ys, marker="o", ms=3.5, color=colors[m["label"]])
            ax.set_title(name.replace("_", " "))
            ax.set_xticks([0, *sevs])
            ax.set_ylim(0, 1.02)
            ax.grid(True, alpha=0.3)
        for ax in axes[len(names) :]:
            ax.set_visible(False)
        for ax in axes[::cols]:
            ax.set_ylabel("top-1 accuracy")
        for ax in axes[-cols:]:
            ax.set_xlabel("severity (0 = clean)")
        handles = [_legend_line(colors[m["label"]], plain(m["label"])) for m in data["models"]]
        fig.legend(handles=handles, loc="outside upper center", ncols=max(1, len(handles)))
    return fig


def _legend_line(color: str, label: str) -> Line2D:
    return Line2D([], [], color=color, marker="o", ms=3.5, label=label)


def examples_figure(examples: np.ndarray, names: Sequence[str], sevs: Sequence[int]) -> Figure:
    """``examples`` uint8 (corruptions, 1 + severities, C, H, W): one image under each
    corruption (rows) at severity 0 (clean) and each of ``sevs`` (columns)."""
    # matplotlib's own rc, not STYLE: the tiles keep their frames, as this figure always had.
    columns = [0, *sevs]
    fig = Figure(figsize=(1.3 * len(columns) + 1.2, 1.35 * len(names) + 0.4), layout="constrained")
    axes = fig.subplots(len(names), len(columns), squeeze=False)
    for r, name in enumerate(names):
        for c, severity in enumerate(columns):
            ax = axes[r, c]
            shown = _display(examples[r, c])
            ax.imshow(shown, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"severity {severity}" if severity else "clean", fontsize=9)
            if c == 0:
                ax.set_ylabel(name.replace("_", " "), fontsize=9)
    return fig


def _display(image: np.ndarray) -> np.ndarray:
    """uint8 (C, H, W) -> (H, W) grey or (H, W, 3) RGB for imshow."""
    return image[0] if image.shape[0] == 1 else np.transpose(image[:3], (1, 2, 0))


# --- the report section ------------------------------------------------------------------------


def render_robustness(folder: AnalysisFolder) -> Markup:
    """Clean and mean corrupted accuracy per model, the per-corruption means, the accuracy plot
    and the corruption examples; a note when the files are missing or damaged."""
    try:
        # Read here, not through folder.read_result: the note names what went wrong.
        result = json.loads(folder.result.read_text())
        models = list(result["models"])
        settings = dict(result["settings"])
        names = list(settings["corruptions"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return note(
            f"No robustness results in {folder.path} ({folder.result.name} missing or damaged: "
            f"{type(err).__name__}); run `cnnvit robustness` or enable robustness in the study."
        )
    intro = tag(
        "p",
        f"Top-1 accuracy on {settings.get('images')} test images, clean and under "
        f"{len(names)} corruptions at severities {_severities(settings)} (parameters after "
        "ImageNet-C, Hendrycks & Dietterich 2019). Every model sees the same corrupted pixels. "
        "Relative accuracy = mean corrupted accuracy / clean accuracy: 100 % means the "
        "corruptions cost nothing; compare it between models rather than raw accuracy when "
        "their clean accuracies differ.",
    )
    headers = ["model", "clean", "mean corrupted", "relative", *[_title(n) for n in names]]
    rows = [_row(m, names) for m in models]
    parts = [intro, table(headers, rows, classes=["name", *["num"] * (3 + len(names))])]
    parts.append(
        tag(
            "p",
            "The corruption columns are the mean accuracy over the severities. In the plot, each "
            "panel is one corruption: accuracy (y) as the severity grows (x, 0 = clean), one "
            "line per model; a flatter line is a more robust model.",
            class_="note",
        )
    )
    figures = result.get("figures") or {}
    parts.append(
        folder_figure(
            folder.path,
            figures.get("accuracy"),
            "accuracy against severity",
            "Accuracy by corruption severity.",
        )
    )
    parts.append(
        folder_figure(
            folder.path,
            figures.get("examples"),
            "corruption examples",
            "One test image under each corruption (rows) at each severity (columns).",
        )
    )
    return join(parts)


def _severities(settings: dict) -> str:
    sevs = settings.get("severities") or []
    return ", ".join(str(s) for s in sevs) or "-"


def _title(name: str) -> str:
    return str(name).replace("_", " ")


def _row(m: dict, names: list) -> list:
    by = m.get("mean_by_corruption") or {}
    return [
        m.get("label", "?"),
        pct(m.get("clean_accuracy"), sep="", missing="-"),
        pct(m.get("mean_corruption_accuracy"), sep="", missing="-"),
        pct(m.get("relative_accuracy"), sep="", missing="-"),
        *[pct(by.get(n), sep="", missing="-") for n in names],
    ]


# --- the summary -------------------------------------------------------------------------------


def robustness_headline(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    """robustness.json -> {model label: mean corrupted accuracy and its share of the clean
    accuracy}; NaN where a value is not a number."""
    models = data.get("models")
    rows: dict[str, dict[str, float]] = {}
    for m in models if isinstance(models, list) else []:
        if isinstance(m, dict):
            rows.setdefault(str(m.get("label")), {}).update(
                corruption_accuracy=json_number(m.get("mean_corruption_accuracy")),
                relative_robustness=json_number(m.get("relative_accuracy")),
            )
    return rows


def robustness_verdict(data: dict[str, Any]) -> str | None:
    """One sentence ranking the models by the share of their clean accuracy they keep under
    the corruptions; None with fewer than two models measured."""
    headline = robustness_headline(data)
    shares = {m: v["relative_robustness"] for m, v in headline.items()}
    robust = pd.Series(shares, dtype="float64").dropna()
    if len(robust) < 2:
        return None
    settings = data.get("settings") or {}
    kinds = len(settings.get("corruptions") or []) or "the"
    levels = len(settings.get("severities") or []) or "several"
    # Highest share first. Ranked with pandas: its order of tied models is the one this
    # sentence has always shown (Python's stable sorted would keep the file's order instead).
    parts = [
        f"{m} keeps {100 * r:.0f} % of its clean accuracy "
        f"({100 * headline[str(m)]['corruption_accuracy']:.1f} % on average)"
        for m, r in robust.sort_values(ascending=False).items()
    ]
    return f"Under {kinds} corruptions at {levels} severities, " + "; ".join(parts) + "."


# --- the analysis ------------------------------------------------------------------------------


@analysis(
    name="robustness",
    title="Corruption robustness",
    command=ROBUSTNESS,
    options=RobustnessOptions,
    write=write_robustness,
    render=render_robustness,
    section_id="robustness",
    columns={
        "corruption_accuracy": Column("corrupted", "pct"),
        "relative_robustness": Column("kept", "pct"),
    },
    columns_note="mean top-1 under corruption and its share of clean",
    headline=robustness_headline,
    verdict=robustness_verdict,
    order=70,
)
def compute_robustness(inputs: Inputs, options: RobustnessOptions) -> RobustnessResult:
    """Each model's top-1 accuracy on ``options.images`` test images, clean and under
    each corruption x severity."""
    # The corruptions and the models run in torch; imported when the analysis runs, so that
    # the registry and the report stay free of torch.
    from cnnvit.analyze.robustness import measure_robustness

    images = inputs.val(options.images)
    subjects = inputs.subjects
    run = measure_robustness(
        subjects,
        images,
        corruptions=options.corruptions,
        severities=options.severities,
        batch_size=options.batch_size,
        seed=options.seed,
        progress=inputs.progress,
    )
    return RobustnessResult(
        labels=[s.label for s in subjects],
        families=[s.family for s in subjects],
        devices=[str(s.device) for s in subjects],
        accuracy=[run.accuracy[s.label] for s in subjects],
        examples=run.examples,
        settings={
            "dataset": images.name,
            "images": run.num_images,
            "image_size": run.image_size,
            "corruptions": run.corruptions,
            "severities": run.severities,
            "parameters": run.parameters,
            "batch_size": options.batch_size,
            "seed": options.seed,
            "corruption_device": run.device,
        },
        seconds=run.seconds,
    )
