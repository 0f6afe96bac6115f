"""The report's agreement section: pairs of models on the same test images, per seed.

For each pair of models (the verdict's head-to-head pair first, then every other pair in study
order), at the largest training size where both have predictions, every seed's two cells are
compared with :func:`cnnvit.evaluate.agreement.compare_predictions`: counts, kappas, McNemar's
exact test and a paired bootstrap interval. The two cells of a seed share the data config and
its split seed, so they were tested on the same images; ``compare_predictions`` checks it anyway
(same indices, same labels) and a pair that fails the check is reported, not compared.

Only files are read (predictions.parquet, metrics.json, and for the grid of disagreements the
images the study saved under ``agreement/``; a study whose images were not saved shows the
table without the grid, and says why). Bootstrap seed and figure are fixed, so a rebuild gives
the same bytes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cnnvit.evaluate.agreement import (
    GRID_IMAGES,
    Agreement,
    AgreementError,
    compare_predictions,
    disagreement_figure,
    format_p,
    largest_common,
    read_disagreement_images,
)
from cnnvit.folders import RunFolder, StudyFolder
from cnnvit.formatting import as_number, count
from cnnvit.markup import Markup, esc, img, join, note, table, tag
from cnnvit.report.collect import StudyData
from cnnvit.report.verdict import head_to_head

if TYPE_CHECKING:
    from cnnvit.report.context import ReportContext

TABLE = "agreement"
FIGURE = "disagreements"
ALPHA = 0.05
N_BOOT = 10_000
BOOT_SEED = 0  # fixed: the report must rebuild to the same bytes
MAX_SHOWN = GRID_IMAGES
COLUMNS = [
    "model_a",
    "model_b",
    "head_to_head",
    "trainable_blocks",
    "fraction",
    "num_train_images",
    "seed",
    "cell_a",
    "cell_b",
    "num_images",
    "both_right",
    "only_a",
    "only_b",
    "both_wrong",
    "same_prediction",
    "accuracy_a",
    "accuracy_b",
    "difference",
    "ci_low",
    "ci_high",
    "kappa",
    "error_consistency",
    "mcnemar_p",
    "verdict",
    "problem",
]
METHOD_NOTE = (
    "How this is decided: for each seed, the two models' predictions on the same test "
    "images are paired. McNemar's exact test (a two-sided binomial test of the images only A "
    "gets right among those exactly one of the two gets right) gives the p-value; the verdict "
    f"is “indistinguishable at α={ALPHA:g}” when p ≥ {ALPHA:g}, otherwise the model with more "
    "images only it gets right is better. The interval is a paired bootstrap 95 % percentile "
    f"interval of accuracy A − B ({N_BOOT:,} resamples of the images, seed {BOOT_SEED}). Kappa "
    "is Cohen's kappa between the two predicted classes; error consistency is Cohen's kappa "
    "between the two right/wrong indicators (Geirhos et al. 2020): 0 means the two models err "
    "on the same images only as often as chance would have it. Each seed is tested on its own "
    "here, without a correction for testing several; the verdict pools the seeds into one "
    "test per size and corrects over the sizes."
)


@dataclass(frozen=True)
class PairSeed:
    """One pair of models, one seed: two cells and what comparing them gave."""

    a: str
    b: str
    head_to_head: bool
    trainable_blocks: int | None
    fraction: float
    num_train_images: float
    seed: int
    cell_a: str
    cell_b: str
    agreement: Agreement | None
    problem: str | None = None  # why the two could not be compared


@dataclass
class StudyAgreement:
    """Every compared pair and seed, plus what the grid of disagreements needs."""

    data: StudyData
    rows: list[PairSeed] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # pairs with no size in common

    @property
    def compared(self) -> list[PairSeed]:
        return [r for r in self.rows if r.agreement is not None]

    def grid_row(self) -> PairSeed | None:
        """The pair and seed the grid shows: the head-to-head pair's first seed that has a
        disagreement (the first compared pair where no head-to-head pair could be compared)."""
        rows = [r for r in self.compared if r.agreement and len(r.agreement.disagreements)]
        heads = [r for r in rows if r.head_to_head]
        return (heads or rows or [None])[0]

    @cached_property
    def grid(self) -> tuple[Figure | None, str]:
        """The grid of disagreements and its caption, or None and the reason there is none."""
        row = self.grid_row()
        if row is None:
            return None, "No compared pair disagrees on any image, so there is no grid to show."
        agreement = row.agreement
        assert agreement is not None
        path = StudyFolder(self.data.info.root).disagreement_images(row.cell_a, row.cell_b)
        saved = read_disagreement_images(path)
        if saved is None:
            return None, (
                f"No grid of disagreements: the study has not saved the images where {row.a} "
                f"and {row.b} disagree ({path}; `cnnvit compare` saves them after training)."
            )
        indices, images = saved
        fig = disagreement_figure(images, agreement, max_images=MAX_SHOWN, indices=indices)
        depth = "" if row.trainable_blocks is None else f", last {row.trainable_blocks} blocks"
        caption = (
            f"{row.a} (A) against {row.b} (B), seed {row.seed}, {_images(row.num_train_images)}"
            f"{depth}: "
            f"up to {MAX_SHOWN} test images the two label differently, taken in turn from "
            "those only A gets right, only B gets right and both get wrong."
        )
        return fig, caption


# --- building -------------------------------------------------------------------------------


def study_agreement(data: StudyData, families: Mapping[str, str] | None = None) -> StudyAgreement:
    """Compare every pair of models with predictions, per trainable_blocks value and seed."""
    out = StudyAgreement(data)
    cells = _cells_with_predictions(data)
    if cells.empty:
        return out
    cache: dict[str, pd.DataFrame] = {}
    for blocks, group in cells.groupby("trainable_blocks", sort=False, dropna=False):
        blocks = None if pd.isna(blocks) else int(blocks)
        for a, b, head in _pairs(data, group, blocks, families):
            rows = _pair_rows(data, group, a, b, head, blocks, cache)
            if rows:
                out.rows.extend(rows)
            else:
                out.notes.append(f"{a} and {b} have no training size with predictions in common.")
    return out


def _cells_with_predictions(data: StudyData) -> pd.DataFrame:
    runs = data.info.run_dirs
    done = data.results[data.results["status"] == "completed"]
    has = [c in runs and RunFolder(runs[c]).predictions.is_file() for c in done["cell"]]
    return done[np.asarray(has, dtype=bool)] if len(done) else done


def _pairs(
    data: StudyData, group: pd.DataFrame, blocks: int | None, families: Mapping[str, str] | None
) -> list[tuple[str, str, bool]]:
    """(a, b, is head-to-head): the verdict's pair first, in its order, then the rest."""
    models = [m for m in data.models if m in set(group["model"])]
    summary, depth = data.summary, data.summary["trainable_blocks"]
    mine = depth.isna() if blocks is None else (depth == blocks).fillna(False)
    head = head_to_head(summary[mine.to_numpy(dtype=bool)], data.models, families)
    pairs = []
    if head is not None and all(m in models for m in head):
        pairs.append((head[0], head[1], True))
    for a, b in itertools.combinations(models, 2):
        if head is None or {a, b} != set(head):
            pairs.append((a, b, False))
    return pairs


def _pair_rows(
    data: StudyData,
    group: pd.DataFrame,
    a: str,
    b: str,
    head: bool,
    blocks: int | None,
    cache: dict[str, pd.DataFrame],
) -> list[PairSeed]:
    """One row per seed at the largest fraction where both models have predictions."""
    by_a = {(r.fraction, r.seed): r for r in group[group["model"] == a].itertuples()}
    by_b = {(r.fraction, r.seed): r for r in group[group["model"] == b].itertuples()}
    rows = []
    for key in largest_common(by_a, by_b):
        fraction = key[0]
        ra, rb = by_a[key], by_b[key]
        agreement, problem = _compare(data, ra.cell, rb.cell, a, b, cache)
        rows.append(
            PairSeed(
                a=a,
                b=b,
                head_to_head=head,
                trainable_blocks=blocks,
                fraction=fraction,
                num_train_images=as_number(ra.num_train_images),
                seed=int(key[1]),
                cell_a=ra.cell,
                cell_b=rb.cell,
                agreement=agreement,
                problem=problem,
            )
        )
    return rows


def _compare(
    data: StudyData, cell_a: str, cell_b: str, a: str, b: str, cache: dict[str, pd.DataFrame]
) -> tuple[Agreement | None, str | None]:
    classes_a, classes_b = _classes(data, cell_a), _classes(data, cell_b)
    if classes_a and classes_b and classes_a != classes_b:
        return None, "the two runs name their classes differently"
    try:
        pa, pb = _predictions(data, cell_a, cache), _predictions(data, cell_b, cache)
        classes = classes_a or classes_b or _numbered(pa, pb)
        agreement = compare_predictions(
            pa, pb, classes, names=(a, b), n_boot=N_BOOT, seed=BOOT_SEED, alpha=ALPHA
        )
    except (AgreementError, OSError, ValueError) as err:  # a corrupt file must not stop it
        return None, str(err)
    return agreement, None


def _predictions(data: StudyData, cell: str, cache: dict[str, pd.DataFrame]) -> pd.DataFrame:
    if cell not in cache:
        # One lookup, not a mapping of every cell per call: that made the section quadratic.
        cache[cell] = RunFolder(data.info.run_dirs[cell]).read_predictions()
    return cache[cell]


def _classes(data: StudyData, cell: str) -> list[str] | None:
    classes = (data.metrics.get(cell) or {}).get("classes")
    return [str(c) for c in classes] if isinstance(classes, list) and classes else None


def _numbered(*frames: pd.DataFrame) -> list[str]:
    top = max(int(f[["label", "prediction"]].to_numpy().max()) for f in frames)
    return [str(i) for i in range(top + 1)]


# --- the table (CSV) ------------------------------------------------------------------------


def agreement_table(study: StudyAgreement) -> pd.DataFrame:
    """One row per pair and seed, plain numbers (the CSV); NaN where a pair was not compared."""
    rows = []
    for r in study.rows:
        row = {
            "model_a": r.a,
            "model_b": r.b,
            "head_to_head": r.head_to_head,
            "trainable_blocks": r.trainable_blocks,
            "fraction": r.fraction,
            "num_train_images": r.num_train_images,
            "seed": r.seed,
            "cell_a": r.cell_a,
            "cell_b": r.cell_b,
            "problem": r.problem,
        }
        g = r.agreement
        if g is not None:
            row.update(
                num_images=g.n,
                both_right=g.both_right,
                only_a=g.only_a,
                only_b=g.only_b,
                both_wrong=g.both_wrong,
                same_prediction=g.same_prediction,
                accuracy_a=g.accuracy_a,
                accuracy_b=g.accuracy_b,
                difference=g.difference,
                ci_low=g.difference_ci[0],
                ci_high=g.difference_ci[1],
                kappa=g.kappa,
                error_consistency=g.error_consistency,
                mcnemar_p=g.mcnemar_p,
                verdict=g.verdict,
            )
        rows.append(row)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("trainable_blocks", "num_train_images", "num_images", *COLUMNS[10:15]):
        frame[column] = frame[column].astype("Int64")
    return frame


# --- the section ----------------------------------------------------------------------------


def agreement_tables(ctx: ReportContext) -> dict[str, pd.DataFrame]:
    return {TABLE: agreement_table(ctx.agreement)}


def agreement_figures(ctx: ReportContext) -> dict[str, Figure | None]:
    return {FIGURE: ctx.agreement.grid[0]}


def render_agreement(ctx: ReportContext) -> str:
    study = ctx.agreement
    if len(ctx.data.models) < 2:
        return note("The study has a single model, so there is no pair to compare.")
    if not study.rows:
        return note(
            "No two models have completed runs with predictions (predictions.parquet) at a "
            "common training size and seed, so there is nothing to compare yet."
        )
    parts: list[object] = [tag("p", line) for line in _findings(study)]
    parts.append(_html_table(ctx, study))
    parts += [note(text) for text in study.notes]
    fig, caption = study.grid
    if FIGURE in ctx.figures:
        parts.append(img(ctx.figures[FIGURE], "images where the two models disagree", caption))
    elif fig is None:
        parts.append(note(caption))
    parts.append(note(METHOD_NOTE, "note"))
    return join(parts)


def _findings(study: StudyAgreement) -> list[str]:
    """Per pair, what McNemar's test said over the seeds (never read off the accuracies)."""
    lines = []
    keyed: dict[tuple, list[PairSeed]] = {}
    for r in study.rows:
        keyed.setdefault((r.a, r.b, r.trainable_blocks), []).append(r)
    for (a, b, blocks), rows in keyed.items():
        done = [r.agreement for r in rows if r.agreement is not None]
        depth = "" if blocks is None else f", last {blocks} blocks trainable"
        head = f"{a} against {b} at {_images(rows[0].num_train_images)}{depth}: "
        if not done:
            lines.append(head + "could not be compared (see the table).")
            continue
        counts: dict[str, int] = {}
        for g in done:
            counts[g.verdict] = counts.get(g.verdict, 0) + 1
        n = len(done)
        said = [
            f"{verdict} in {k} of {n} seed{'s' if n != 1 else ''}" for verdict, k in counts.items()
        ]
        lines.append(head + "McNemar's exact test says " + "; ".join(said) + ".")
    return lines


def _html_table(ctx: ReportContext, study: StudyAgreement) -> Markup:
    headers = [
        "A against B",
        "training images",
        "seed",
        "images",
        "both right",
        "only A right",
        "only B right",
        "both wrong",
        "same prediction",
        "kappa",
        "error consistency",
        "McNemar p",
        "A − B, points (95 % CI)",
        "verdict",
    ]
    rows = []
    for r in study.rows:
        pair = join(
            [
                ctx.swatch(r.a),
                esc(r.a),
                " – ",
                ctx.swatch(r.b),
                esc(r.b),
            ]
        )
        if r.trainable_blocks is not None:
            pair = join([pair, esc(f" (last {r.trainable_blocks} blocks)")])
        g = r.agreement
        if g is None:
            rows.append([pair, count(r.num_train_images), r.seed, *["—"] * 10, r.problem or ""])
            continue
        rows.append(
            [
                pair,
                count(r.num_train_images),
                r.seed,
                f"{g.n:,}",
                *(_count(k, g.n) for k in (g.both_right, g.only_a, g.only_b, g.both_wrong)),
                _count(g.same_prediction, g.n),
                _kappa(g.kappa),
                _kappa(g.error_consistency),
                format_p(g.mcnemar_p),
                f"{_points(g.difference)} ({_points(g.difference_ci[0])} to "
                f"{_points(g.difference_ci[1])})",
                g.verdict,
            ]
        )
    classes = ["name", *["num"] * 12, ""]
    return table(headers, rows, classes=classes)


def _count(k: int, n: int) -> str:
    return f"{k:,} ({100 * k / n:.1f} %)"


def _kappa(x: float) -> str:
    return "undefined" if math.isnan(x) else f"{x:.3f}"


def _points(x: float) -> str:
    return f"{100 * x:+.2f}"


def _images(n: float) -> str:
    return "an unknown training size" if math.isnan(n) else f"{int(n):,} training images"


__all__ = [
    "StudyAgreement",
    "agreement_figures",
    "agreement_table",
    "agreement_tables",
    "render_agreement",
    "study_agreement",
]
