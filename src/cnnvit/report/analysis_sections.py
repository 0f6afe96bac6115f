"""The report's analysis sections: one per analysis in ``DIR/analysis/<name>/``.

Each analysis module has its own renderer that reads only its folder; this module decides what
to show around it: the cells analysed and how long it took (``run.json``), the error of a failed
analysis (``error.txt``), or how to enable an analysis the study did not run.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from cnnvit.markup import Markup, join, note, tag

if TYPE_CHECKING:
    from cnnvit.report.sections import ReportContext

ANALYSIS_DIR = "analysis"

# analysis name -> (section id, title, renderer "module:function")
ANALYSIS_SECTIONS: dict[str, tuple[str, str, str]] = {
    "gradcam": ("gradcam", "Grad-CAM by depth", "gradcam_section:render_gradcam"),
    "attention": (
        "attention",
        "Attention maps and attention distance",
        "attention_section:render_attention",
    ),
    "featuremaps": ("featuremaps", "CNN feature maps", "featuremaps_section:render_featuremaps"),
    "cka": ("cka", "Representation similarity (CKA)", "cka_section:render_cka"),
    "knn": ("knn", "Embedding quality (kNN retrieval)", "knn_section:render_knn"),
    "shape_bias": ("shape-bias", "Shape versus texture", "shape_bias_section:render_shape_bias"),
    "robustness": (
        "robustness",
        "Corruption robustness",
        "robustness_section:render_robustness",
    ),
}


def enabled_analyses(ctx: ReportContext) -> list[str]:
    listed = ctx.data.info.config.get("analysis") or []
    return [str(a) for a in listed] if isinstance(listed, list) else []


def _folder(ctx: ReportContext, name: str) -> Path:
    return ctx.data.info.root / ANALYSIS_DIR / name


def analysis_shown(name: str):
    """A section for an analysis the study enables, or that has a folder (run by hand)."""

    def shown(ctx: ReportContext) -> bool:
        return name in enabled_analyses(ctx) or _folder(ctx, name).is_dir()

    return shown


def _not_run(ctx: ReportContext) -> list[str]:
    return [name for name in ANALYSIS_SECTIONS if not analysis_shown(name)(ctx)]


def any_not_run(ctx: ReportContext) -> bool:
    return bool(_not_run(ctx))


def render_not_run(ctx: ReportContext) -> Markup:
    rows = [
        tag(
            "li",
            join(
                [
                    tag("code", name),
                    f" ({ANALYSIS_SECTIONS[name][1]}): ",
                    tag("code", f"cnnvit {_command(name)}"),
                    " on run folders",
                ]
            ),
        )
        for name in _not_run(ctx)
    ]
    return join(
        [
            tag(
                "p",
                "This study did not enable these analyses (they take time its budget did not "
                "allow, or were not asked for). Add them to the study's `analysis:` list and run "
                "`cnnvit compare` again — trained cells are kept and only the analyses run — "
                "or run the command on two run folders:",
            ),
            tag("ul", join(rows)),
        ]
    )


def analysis_renderer(name: str):
    """``render(ctx) -> Markup`` for the section of analysis ``name``."""
    _, _, target = ANALYSIS_SECTIONS[name]
    module_name, function = target.split(":")

    def render(ctx: ReportContext) -> Markup:
        folder = _folder(ctx, name)
        error = folder / "error.txt"
        if error.is_file():
            last = error.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
            return note(f"This analysis failed: {last[0]} (traceback in {error}).")
        if not folder.is_dir():
            return note(
                f"Enabled but not run yet: {folder} is missing (the analyses run after the "
                "cells have trained)."
            )
        module = importlib.import_module(f"cnnvit.report.{module_name}")
        body = getattr(module, function)(folder)
        return join([_provenance(folder), body])

    return render


def _command(name: str) -> str:
    return {
        "gradcam": "explain",
        "attention": "explain",
        "featuremaps": "explain",
        "cka": "similarity",
        "knn": "knn",
        "shape_bias": "shape-bias",
        "robustness": "robustness",
    }[name]


def _provenance(folder: Path) -> Markup:
    try:
        run = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return Markup("")
    cells = ", ".join(str(c) for c in run.get("cells") or [])
    seconds = run.get("seconds")
    took = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    return tag("p", f"Analysed cells: {cells}{took}.", class_="provenance")
