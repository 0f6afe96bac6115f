"""The analyses, in one registry: the study stage, the CLI verbs, the report's sections and the
terminal summary all iterate over it.

An analysis is one module that calls :func:`analysis` on its compute function::

    @analysis(
        name="cka",                       # study key, folder analysis/cka/, file cka.json
        title="Representation similarity (CKA)",
        command=SIMILARITY,               # the CLI verb that runs it
        options=CkaOptions,               # typed options: study analysis_options.cka, CLI flags
        write=write_cka,                  # result -> cka.json, CSVs, PNGs (no torch)
        render=render_cka,                # analysis folder -> the report section's HTML
        columns={...}, headline=...,      # numbers for the verdict and the terminal summary
    )
    def compute_cka(inputs: Inputs, options: CkaOptions) -> CkaResult: ...  # numbers only

The built-in analyses are the modules of :mod:`cnnvit.analyze.analyses`, found and imported on
first use of the registry; anything else registers by calling :func:`analysis` (a plugin, a
test). This module and the analysis modules import no torch: the report renders analyses
without it. Their compute functions import the maths they need when they run.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from cnnvit.config import StrictModel
from cnnvit.folders import AnalysisFolder
from cnnvit.markup import Markup

if TYPE_CHECKING:
    from cnnvit.analyze.images import ImageSet
    from cnnvit.analyze.subject import Subject

__all__ = [
    "Analysis",
    "AnalysisOptions",
    "Column",
    "Command",
    "Inputs",
    "Result",
    "all_analyses",
    "analysis",
    "commands",
    "get_analysis",
    "unregister",
]


class AnalysisOptions(StrictModel):
    """Base of every analysis's options. A field's ``json_schema_extra`` may name its CLI flag
    (``{"flag": "--k"}``) and argparse action (``{"action": "append"}``); by default the flag is
    the field name with dashes and a list field takes several values (``--severities 1 3 5``)."""


class Inputs(Protocol):
    """What a compute function gets: the models and the images, loaded on first use."""

    progress: bool

    @property
    def subjects(self) -> list[Subject]: ...

    def val(self, count: int | None = None) -> ImageSet:
        """Validation images: a stratified subset of ``count`` (None: all)."""
        ...

    def train(self, count: int | None = None) -> ImageSet:
        """Training images (kNN's index): a stratified subset of ``count`` (None: all)."""
        ...


class Result(Protocol):
    """What a compute function returns: numbers (and the pictures figures need)."""

    def to_json(self) -> dict[str, Any]:
        """Everything the analysis's ``<name>.json`` holds."""
        ...


@dataclass(frozen=True)
class Command:
    """A CLI verb that runs one or more analyses (``explain`` runs three).

    ``defaults``: option values where the verb's default differs from a study's (``explain``
    looks at 256 test images, a study's Grad-CAM at all of them)."""

    name: str
    help: str
    defaults: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Column:
    """A column of the analyses' terminal summary: its header and how to print it."""

    header: str
    kind: Literal["pct", "num", "px"]


@dataclass(frozen=True)
class Analysis:
    """One registered analysis (see the module docstring)."""

    name: str
    title: str
    command: Command
    options: type[AnalysisOptions]
    compute: Callable[[Inputs, Any], Result]
    write: Callable[[Any, AnalysisFolder], None]
    render: Callable[[AnalysisFolder], Markup]
    section_id: str = ""  # the report section's anchor; default: the name, dashed
    columns: Mapping[str, Column] = field(default_factory=dict)
    # <name>.json -> {model label: {column: value}}; the columns of the terminal summary
    headline: Callable[[dict[str, Any]], dict[str, dict[str, float]]] | None = None
    columns_note: str = ""  # how to read its summary columns, in the summary's title
    # <name>.json -> one sentence for the report's verdict, or None
    verdict: Callable[[dict[str, Any]], str | None] | None = None
    order: int = 100  # position in the report, the study and the summaries; lower first

    @property
    def anchor(self) -> str:
        return self.section_id or self.name.replace("_", "-")

    def default_options(self) -> AnalysisOptions:
        return self.options()


_REGISTERED: dict[str, Analysis] = {}
_BUILTINS_LOADED = False


def analysis(
    *,
    name: str,
    title: str,
    command: Command,
    options: type[AnalysisOptions],
    write: Callable[[Any, AnalysisFolder], None],
    render: Callable[[AnalysisFolder], Markup],
    **more: Any,
) -> Callable[[Callable[[Inputs, Any], Result]], Callable[[Inputs, Any], Result]]:
    """Register the decorated compute function as the analysis ``name`` (module docstring);
    ``more``: :class:`Analysis`'s optional fields. A name registered twice is an error."""

    def register(compute: Callable[[Inputs, Any], Result]) -> Callable[[Inputs, Any], Result]:
        if name in _REGISTERED:
            raise ValueError(f"an analysis named {name!r} is registered already")
        _REGISTERED[name] = Analysis(
            name=name,
            title=title,
            command=command,
            options=options,
            compute=compute,
            write=write,
            render=render,
            **more,
        )
        return compute

    return register


def unregister(name: str) -> None:
    """Forget an analysis registered by :func:`analysis` (tests, plugins)."""
    _REGISTERED.pop(name, None)


def _load_builtins() -> None:
    # The built-ins are the modules of cnnvit.analyze.analyses: adding one adds an analysis.
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    # Imported here, not at the top: each of those modules registers itself through this one.
    package = importlib.import_module("cnnvit.analyze.analyses")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def all_analyses() -> list[Analysis]:
    """Every registered analysis, in report order."""
    _load_builtins()
    return sorted(_REGISTERED.values(), key=lambda a: (a.order, a.name))


def get_analysis(name: str) -> Analysis:
    """The analysis called ``name``; KeyError naming the known ones otherwise."""
    found = {a.name: a for a in all_analyses()}
    if name not in found:
        raise KeyError(f"unknown analysis {name!r}; known analyses: {', '.join(found)}")
    return found[name]


def commands() -> dict[str, list[Analysis]]:
    """CLI verb -> the analyses it runs, in report order."""
    verbs: dict[str, list[Analysis]] = {}
    for item in all_analyses():
        verbs.setdefault(item.command.name, []).append(item)
    return verbs
