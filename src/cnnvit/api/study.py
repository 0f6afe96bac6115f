"""Studies from Python: :func:`compare` runs one, :class:`Study` reads its folder.

``cnnvit compare`` is :func:`compare_all` plus printing. Reading a study (results, summary,
verdict, figures) needs no torch; running one imports the training stack when it starts.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cnnvit.api.overrides import nested_values
from cnnvit.config import apply_overrides, validate_config
from cnnvit.folders import StudyFolder, StudyFolderError
from cnnvit.presets import deep_merge

if TYPE_CHECKING:
    from cnnvit.study.config import StudyConfig

__all__ = ["ACCURACY_FIGURE", "Study", "compare", "compare_all"]

ACCURACY_FIGURE = "accuracy_vs_images.png"  # the report's headline figure, under figures/


@dataclass(frozen=True)
class Study:
    """A study folder that ``cnnvit compare`` (or :func:`compare`) wrote.

    ``failed_cells``: the cells that failed in the :func:`compare` call that returned this
    (:meth:`load`: those whose results record ``failed``).
    """

    path: Path
    failed_cells: tuple[str, ...] | None = None

    @classmethod
    def load(cls, path: str | Path) -> Study:
        """A finished study folder; :class:`StudyFolderError` where it has no report yet."""
        folder = StudyFolder(Path(path))
        folder.require()
        if not folder.results_csv.is_file():
            raise StudyFolderError(
                f"{folder.path} has no {folder.results_csv.name} yet; write the report first "
                f"with `cnnvit report {folder.path}`"
            )
        return cls(folder.path)

    @property
    def folder(self) -> StudyFolder:
        return StudyFolder(self.path)

    @cached_property
    def name(self) -> str:
        return str((self.folder.read_info() or {}).get("name", self.path.name))

    @cached_property
    def results(self) -> pd.DataFrame:
        """One row per cell (``results.csv``): model, fraction, seed, status, accuracies, cost."""
        return pd.read_csv(self.folder.results_csv)

    @cached_property
    def summary(self) -> pd.DataFrame:
        """Per model and size, over seeds (``summary.csv``): means, spreads, counts."""
        return pd.read_csv(self.folder.summary_csv)

    @cached_property
    def verdict(self) -> list[str]:
        """The report's verdict, one sentence per item (the report's own function)."""
        from cnnvit.report.collect import load_study_data
        from cnnvit.report.context import ReportContext

        return list(ReportContext(load_study_data(self.path)).verdict)

    @property
    def failed(self) -> list[str]:
        """The failed cells' ids."""
        if self.failed_cells is not None:
            return list(self.failed_cells)
        return self.results.loc[self.results["status"] == "failed", "cell"].astype(str).tolist()

    @property
    def report_path(self) -> Path:
        return self.folder.report

    @property
    def accuracy_figure(self) -> Path:
        return self.folder.figures / ACCURACY_FIGURE

    def _repr_html_(self) -> str:
        """Jupyter's view: the name, the verdict and the accuracy figure (inline PNG)."""
        items = "".join(f"<li>{html.escape(line)}</li>" for line in self.verdict)
        parts = [f"<h3>Study {html.escape(self.name)}</h3>", f"<ul>{items}</ul>"]
        if self.accuracy_figure.is_file():
            data = base64.b64encode(self.accuracy_figure.read_bytes()).decode("ascii")
            alt = html.escape(f"test accuracy against training images, study {self.name}")
            parts.append(
                f'<img src="data:image/png;base64,{data}" alt="{alt}" style="max-width:100%">'
            )
        parts.append(f"<p>Report: <code>{html.escape(str(self.report_path))}</code></p>")
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"Study({str(self.path)!r})"


def compare(
    study_or_path: str | Path | StudyConfig | None = None,
    out: str | Path | None = None,
    *,
    executor: str | None = None,
    address: str | None = None,
    progress: bool = True,
    **overrides: Any,
) -> Study:
    """Run (or continue) a study and write its report; returns the :class:`Study`.

    ``study_or_path``: a study YAML of one study, a :class:`~cnnvit.study.config.StudyConfig`,
    or None for the built-in study. ``out``: the study folder (default ``runs/<name>``).
    ``executor``: ``local`` (default), ``ray`` or ``slurm``; ``address``: a Ray cluster.
    ``overrides``: config keys with ``__`` for dots (``recipe__train__epochs=2``).
    """
    studies = compare_all(
        study_or_path, out, executor=executor, address=address, progress=progress, **overrides
    )
    if len(studies) > 1:
        raise StudyFolderError(
            f"{study_or_path} holds {len(studies)} studies; run them with compare_all()"
        )
    return studies[0]


def compare_all(
    study_or_path: str | Path | StudyConfig | None = None,
    out: str | Path | None = None,
    *,
    executor: str | None = None,
    address: str | None = None,
    progress: bool = True,
    settings: Sequence[str] = (),
    command: str | None = None,
    each: Callable[[Study], object] | None = None,
    **overrides: Any,
) -> list[Study]:
    """Every study of a YAML file (one per ``---`` document), each run and reported.

    With several, each goes to ``OUT/<name>`` (default ``OUT``: ``runs/<file name>``).
    ``settings``: ``KEY=VALUE`` strings applied last (the CLI's ``--set``); ``command``: what
    ``study.json`` records as the command (default: this call); ``each``: called with each
    study as it finishes (the CLI prints its summary).
    """
    from cnnvit.data.readers import check_spec
    from cnnvit.report import write_report
    from cnnvit.study.run import run_study

    values = _compare_values(executor, address, progress, overrides)
    studies = _load(study_or_path, values, list(settings))
    for study in studies:  # a missing data folder stops here, not once per cell
        check_spec(study.data.spec)
    done = []
    for study in studies:
        folder = _study_dir(study.name, study_or_path, out, several=len(studies) > 1)
        outcomes = run_study(
            study,
            folder,
            command=command or f"cnnvit.compare({study_or_path!r})",
            progress=progress,
            then=write_report,
        )
        failed = tuple(o.cell.id for o in outcomes if o.status == "failed")
        done.append(Study(folder, failed_cells=failed))
        if each is not None:
            each(done[-1])
    return done


def _compare_values(
    executor: str | None, address: str | None, progress: bool, overrides: dict[str, Any]
) -> dict[str, Any]:
    """The nested values a compare call sets: its overrides, executor and progress."""
    values = nested_values(overrides)
    if not progress:
        values = deep_merge(values, {"recipe": {"train": {"progress": False}}})
    chosen = {"kind": executor or ("ray" if address else None), "address": address}
    if any(v is not None for v in chosen.values()):
        given = {k: v for k, v in chosen.items() if v is not None}
        values = deep_merge(values, {"executor": given})
    return values


def _load(
    study_or_path: str | Path | StudyConfig | None, values: dict[str, Any], settings: list[str]
) -> list[StudyConfig]:
    import torch  # the default study depends on whether there is a GPU

    from cnnvit.study.config import StudyConfig, load_studies

    if isinstance(study_or_path, StudyConfig):
        data = apply_overrides(deep_merge(study_or_path.model_dump(mode="json"), values), settings)
        return [validate_config(StudyConfig, data)]
    path = None if study_or_path is None else Path(study_or_path)
    return load_studies(path, settings, values=values, cuda=torch.cuda.is_available())


def _study_dir(
    name: str, study_or_path: str | Path | StudyConfig | None, out: str | Path | None, several: bool
) -> Path:
    """``out`` (default ``runs/<name>``); with several studies ``OUT/<name>``, where ``OUT``
    defaults to ``runs/<file name>``."""
    if not several:
        return Path(out) if out is not None else Path("runs") / name
    assert isinstance(study_or_path, (str, Path))  # only a file holds several studies
    return (Path(out) if out is not None else Path("runs") / Path(study_or_path).stem) / name
