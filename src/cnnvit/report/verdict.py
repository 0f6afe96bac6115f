"""A short verdict in plain words, decided by tests and read off fitted curves.

Rules (printed in the report too, so a reader can check them):

* **Better, indistinguishable, or too few seeds** at a training size: the head-to-head pair is
  paired by seed (same training subset, same test images) and decided by
  :data:`cnnvit.stats.paired.RULE`: McNemar's exact test on the test images only one model got
  right, pooled over seeds (the paired t-test of the seeds' accuracies where per-image
  predictions are missing), Holm-adjusted over the sizes, with the interval over seeds on the
  winner's side of zero.
* **Learning curves**: test error against training images per model, with a seed bootstrap
  (:mod:`cnnvit.report.learning_fit`): the data-efficiency exponent, where the curves cross and
  how many images the weaker model needs to match the stronger, up to 10× the largest size.
* **Not converged**: a comparison that rests on runs whose selection score was still rising
  when training stopped (:data:`cnnvit.stats.convergence.RULE`) says so, with what to change.
* **Cheaper to train**: the lower mean total training time at the largest size both models
  finished; peak memory and parameter counts alongside, with a "but" where they disagree.

With more than two models every size also gets a ranking, and the head-to-head compares the
best CNN with the best ViT (or hybrid), families as the runs recorded them (results.json).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from cnnvit.formatting import pct
from cnnvit.report.collect import StudyData
from cnnvit.report.learning_fit import curve_sentences, fit_pair
from cnnvit.report.pairing import SizePair, size_pairs
from cnnvit.stats.curves import CurveComparison
from cnnvit.stats.paired import RULE, SizeVerdict, compare_at_size, decide, sentence

METRIC = "test_top1"
ALPHA = 0.05
COST_RULE = (
    "The cheaper model is the one with the lower mean total training time at the largest size "
    "both finished."
)
METHOD_NOTE = f"{RULE} {COST_RULE}"


@dataclass(frozen=True)
class HeadToHead:
    """The verdict's pair at one unfrozen depth: every size paired by seed, the decision of
    each size where both have a seed in common (``verdicts``, aligned with :attr:`compared`),
    and the fitted learning curves (None and ``curve_problem`` where none could be fitted)."""

    blocks: int | None
    a: str
    b: str
    sizes: tuple[SizePair, ...]
    verdicts: tuple[SizeVerdict, ...]
    curves: CurveComparison | None
    curve_problem: str | None

    @property
    def compared(self) -> list[SizePair]:
        return [p for p in self.sizes if p.seeds]


# --- public ----------------------------------------------------------------------------------


def head_to_head(
    summary: pd.DataFrame, models: Sequence[str], families: Mapping[str, str] | None = None
) -> tuple[str, str] | None:
    """The pair the verdict compares: the only two models, or the best CNN and the best ViT.

    ``None`` when fewer than two models have completed cells.
    """
    present = [m for m in models if m in set(summary["model"])]
    if len(present) < 2:
        return None
    if len(present) == 2:
        return present[0], present[1]
    score = summary.groupby("model")[f"{METRIC}_mean"].mean()
    families = families or {}
    cnns = [m for m in present if families.get(m) == "cnn"]
    vits = [m for m in present if families.get(m) in ("vit", "hybrid")]
    if cnns and vits:
        best_cnn = max(cnns, key=lambda m: score[m])
        best_vit = max(vits, key=lambda m: score[m])
        return best_cnn, best_vit
    ranked = sorted(present, key=lambda m: -score[m])
    return ranked[0], ranked[1]


def head_to_heads(
    data: StudyData, families: Mapping[str, str] | None = None
) -> dict[object, HeadToHead | None]:
    """The verdict's pair at every unfrozen depth (key: None = all trainable, else the number
    of trainable blocks), None where fewer than two models completed a cell."""
    out: dict[object, HeadToHead | None] = {}
    for blocks, group in data.summary.groupby("trainable_blocks", sort=False, dropna=False):
        key = None if pd.isna(blocks) else int(blocks)
        pair = head_to_head(group, data.models, families)
        out[key] = None if pair is None else compare_pair(data, *pair, key)
    return out


def compare_pair(data: StudyData, a: str, b: str, blocks: int | None) -> HeadToHead:
    """Pair ``a`` and ``b`` by seed at every size, decide the sizes together, fit the curves."""
    sizes = tuple(size_pairs(data, a, b, blocks))
    comparisons = [
        compare_at_size(a, b, p.acc_a, p.acc_b, p.discordant, alpha=ALPHA) for p in sizes if p.seeds
    ]
    verdicts = tuple(decide(comparisons, alpha=ALPHA)) if comparisons else ()
    curves, problem = fit_pair(data, a, b, blocks)
    return HeadToHead(blocks, a, b, sizes, verdicts, curves, problem)


def verdict(
    data: StudyData,
    families: Mapping[str, str] | None = None,
    pairs: Mapping[object, HeadToHead | None] | None = None,
) -> list[str]:
    """Plain-language findings, one sentence per list item.

    ``families`` maps a label to ``cnn``, ``vit`` or ``hybrid`` (it picks the head-to-head pair
    among more than two models); ``pairs`` are :func:`head_to_heads`' (computed when absent).
    """
    summary = data.summary
    if summary.empty:
        return ["No cell completed, so there is nothing to compare yet."]
    pairs = head_to_heads(data, families) if pairs is None else pairs
    out = legacy_lines(data.results)
    groups = list(summary.groupby("trainable_blocks", sort=False, dropna=False))
    for blocks, group in groups:
        key = None if pd.isna(blocks) else int(blocks)
        lines = _group_verdict(data, group, pairs.get(key))
        if len(groups) > 1:
            lines.insert(0, f"With {_blocks_text(blocks)}:")
        out.extend(lines)
    return out


def legacy_lines(results: pd.DataFrame) -> list[str]:
    """What the verdict says of runs written before the three-way split (none: nothing)."""
    done = results[results["status"] == "completed"]
    old = int((done["selected_on"] == "test").sum())
    if not old:
        return []
    which = f"All {old}" if old == len(done) else f"{old} of {len(done)}"
    return [
        f"{which} completed runs were written before the three-way split: they had no selection "
        "split, so their best epochs were chosen on the test split itself, and their test "
        "accuracies are slightly optimistic (the same images chose the epoch and scored it)."
    ]


def size_text(images: float) -> str:
    """A training size as the sentences write it: '12,000'."""
    return "an unknown number of" if math.isnan(images) else f"{round(images):,}"


# --- one trainable_blocks group ------------------------------------------------------------


def _group_verdict(data: StudyData, group: pd.DataFrame, pair: HeadToHead | None) -> list[str]:
    models = data.models
    present = [m for m in models if m in set(group["model"])]
    lines = []
    absent = [m for m in models if m not in present]
    if absent:
        lines.append(f"No completed runs for {_join(absent)}.")
    if len(present) > 2:
        lines.extend(_rankings(group))
    if pair is None:
        lines.extend(_single_model(group, present))
        return lines
    if len(present) > 2:
        lines.append(f"Head to head, {pair.a} against {pair.b}:")
    lines.extend(_size_lines(data, pair))
    lines.extend(_curve_lines(data, pair))
    cost = _cost_sentence(group, pair.a, pair.b)
    if cost:
        lines.append(cost)
    return lines


def _single_model(group: pd.DataFrame, present: list[str]) -> list[str]:
    if not present:
        return []
    model = present[0]
    rows = group[group["model"] == model].sort_values("num_train_images")
    sizes = ", ".join(
        f"{pct(r[f'{METRIC}_mean'])} at {_images(_float(r['num_train_images']))}"
        for _, r in rows.iterrows()
    )
    return [
        f"Only {model} has completed runs (test top-1 {sizes}); there is nothing to compare it "
        "with."
    ]


def _rankings(group: pd.DataFrame) -> list[str]:
    lines = []
    for _, rows in group.groupby("fraction", sort=True):
        rows = rows.sort_values(f"{METRIC}_mean", ascending=False)
        ranked = ", ".join(
            f"{r.model} {pct(getattr(r, f'{METRIC}_mean'))}" for r in rows.itertuples()
        )
        images = _float(pd.to_numeric(rows["num_train_images"], errors="coerce").median())
        lines.append(f"Ranking at {_images(images)} (test top-1, mean over seeds): {ranked}.")
    return lines


def _size_lines(data: StudyData, pair: HeadToHead) -> list[str]:
    lines = []
    decided = dict(zip((p.fraction for p in pair.compared), pair.verdicts, strict=True))
    for p in pair.sizes:
        if p.only is not None:
            mean = data.summary.loc[
                (data.summary["model"] == p.only) & (data.summary["fraction"] == p.fraction),
                f"{METRIC}_mean",
            ]
            lines.append(
                f"At {_images(p.images)} only {p.only} has completed runs "
                f"(test top-1 {pct(mean.iloc[0])}); no comparison there."
            )
            continue
        if not p.seeds:
            lines.append(
                f"At {_images(p.images)} {pair.a} and {pair.b} completed no seed in common, so "
                "they cannot be paired there."
            )
            continue
        lines.append(_size_sentence(p, decided[p.fraction], pair))
        caution = convergence_caution(data, pair, p)
        if caution:
            lines.append(caution)
    return lines


def _size_sentence(p: SizePair, v: SizeVerdict, pair: HeadToHead) -> str:
    n = len(p.seeds)
    means = (
        f" Test top-1, mean over {n} seed{'s' if n != 1 else ''}: {pair.a} "
        f"{pct(sum(p.acc_a) / n)}, {pair.b} {pct(sum(p.acc_b) / n)}."
    )
    text = sentence(v, size_text(p.images)) + means
    if p.discordant is None:
        why = f" ({p.problem})" if p.problem else ""
        text += f" No per-image comparison{why}: the paired t-test over seeds decided this size."
    return text


def convergence_caution(data: StudyData, pair: HeadToHead, p: SizePair) -> str | None:
    """A warning where a size's comparison rests on runs still improving when they stopped,
    with what to change (the convergence check's advice); None where every run had levelled
    off or could not be told."""
    results = data.results
    mine = results[
        (results["status"] == "completed")
        & (results["fraction"] == p.fraction)
        & _depth_mask(results, pair.blocks)
    ]
    parts, advice, flagged_runs = [], [], 0
    for model in (pair.a, pair.b):
        cells = mine[mine["model"] == model]
        flagged = cells[cells["still_improving"].fillna(False).astype(bool)]
        if flagged.empty:
            continue
        flagged_runs += len(flagged)
        parts.append(f"{len(flagged)} of {len(cells)} {model} runs")
        for cell in flagged["cell"]:
            text = str((data.convergence.get(cell) or {}).get("advice") or "")
            if text and text not in advice:
                advice.append(text)
    if not parts:
        return None
    change = "; ".join(advice) or "train longer"
    verb = "was" if flagged_runs == 1 else "were"
    return (
        f"Not converged: at {_images(p.images)}, {_join(parts)} {verb} still improving when "
        f"training stopped, so this comparison rests on runs that had not converged and may "
        f"change with a longer budget; to settle it, {change}."
    )


def _curve_lines(data: StudyData, pair: HeadToHead) -> list[str]:
    if pair.curves is None:
        return [f"No learning curves: {pair.curve_problem}."] if pair.curve_problem else []
    lines = curve_sentences(pair.curves)
    unsettled = [
        _images(p.images) for p in pair.compared if convergence_caution(data, pair, p) is not None
    ]
    if unsettled:
        lines.append(
            f"The curves include runs that were still improving (at {_join(unsettled)}), so the "
            "exponents, the crossover and the images to match may move with a longer budget."
        )
    return lines


def _cost_sentence(group: pd.DataFrame, a: str, b: str) -> str | None:
    both = sorted(
        set(group.loc[group["model"] == a, "fraction"])
        & set(group.loc[group["model"] == b, "fraction"])
    )
    if not both:
        return None
    rows = group[group["fraction"] == both[-1]].set_index("model")
    ra, rb = rows.loc[a], rows.loc[b]
    size = _images(_float(pd.to_numeric(rows["num_train_images"], errors="coerce").median()))
    ta, tb = float(ra["train_seconds"]), float(rb["train_seconds"])
    if math.isnan(ta) or math.isnan(tb) or ta == tb:
        return None
    (cheap, rc), rd = ((a, ra), rb) if ta < tb else ((b, rb), ra)
    sentence_ = (
        f"{cheap} is cheaper to train: {format_seconds(rc['train_seconds'])} against "
        f"{format_seconds(rd['train_seconds'])} of training at {size} "
        f"({rd['train_seconds'] / rc['train_seconds']:.1f}× faster)"
    )
    clauses = [
        _cost_clause(rc["peak_memory_mb"], rd["peak_memory_mb"], _mb, "peak memory"),
        _cost_clause(rc["params_total"], rd["params_total"], _params, "parameters"),
    ]
    if not (
        rc["params_trainable"] == rc["params_total"]
        and rd["params_trainable"] == rd["params_total"]
    ):
        clauses.append(
            _cost_clause(
                rc["params_trainable"], rd["params_trainable"], _params, "trainable parameters"
            )
        )
    good = [text for text, cheaper in filter(None, clauses) if cheaper]
    bad = [text for text, cheaper in filter(None, clauses) if not cheaper]
    if good:
        sentence_ += ", with " + _join(good)
    if bad:
        sentence_ += ", but it needs more: " + _join(bad)
    return sentence_ + "."


def _cost_clause(mine: float, theirs: float, fmt, what: str) -> tuple[str, bool] | None:
    mine, theirs = float(mine), float(theirs)
    if math.isnan(mine) or math.isnan(theirs):
        return None
    return f"{fmt(mine)} against {fmt(theirs)} {what}", mine <= theirs


# --- wording -------------------------------------------------------------------------------


def _depth_mask(results: pd.DataFrame, blocks: int | None) -> pd.Series:
    depth = results["trainable_blocks"]
    return (depth.isna() if blocks is None else (depth == blocks).fillna(False)).astype(bool)


def _float(x: object) -> float:
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _blocks_text(blocks: object) -> str:
    return "all layers trainable" if pd.isna(blocks) else f"the last {int(blocks)} blocks trainable"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _images(n: float) -> str:
    return f"{size_text(n)} training images"


def format_seconds(s: float) -> str:
    """Seconds for people: '12.3 s', '4.5 min', '2.1 h'."""
    if s < 100:
        return f"{s:.1f} s"
    if s < 6000:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _mb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def _params(p: float) -> str:
    return f"{p / 1e6:.2f} M" if p < 10e6 else f"{p / 1e6:.1f} M"
