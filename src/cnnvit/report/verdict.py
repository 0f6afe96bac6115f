"""A short verdict in plain words, derived from the summary table alone.

Rules (stated in the report too, so a reader can check them):

* **More accurate** at a training size: the higher mean final top-1 over seeds.
* **Beyond the spread over seeds**: the difference of the two means is larger than the sum of
  the two standard deviations over seeds. With fewer than two seeds for either model there is
  no spread to compare with, and the verdict says so instead of guessing.
* **Crossing**: between two neighbouring measured sizes where the sign of the accuracy
  difference changes, at the point where the difference, linearly interpolated against
  log(training images), is zero.
* **Cheaper to train**: the lower mean total training time at the largest size both models
  finished; peak memory and parameter counts are reported alongside, with a "but" where they
  point the other way.

With more than two models every size also gets a ranking, and the head-to-head compares the
best CNN with the best ViT (or hybrid), families as the runs recorded them (results.json).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import pandas as pd

from cnnvit.formatting import pct

METRIC = "final_val_top1"
METHOD_NOTE = (
    "How this is decided: a model is more accurate at a size when its mean final top-1 over "
    "seeds is higher; the gap exceeds the spread over seeds when the difference of the means is "
    "larger than the sum of the two standard deviations over seeds (with one seed this cannot "
    "be told); curves cross where the accuracy difference, interpolated linearly against "
    "log(training images), changes sign; the cheaper model is the one with the lower mean "
    "total training time at the largest size both finished."
)


@dataclass(frozen=True)
class Crossing:
    """Where two accuracy curves cross: the estimate and the two measured sizes around it."""

    images: float
    low: float
    high: float
    below: str  # the model ahead below the crossing
    above: str  # the model ahead above it
    clear: bool = True  # the gaps on both sides exceed the spread over seeds


@dataclass(frozen=True)
class Point:
    """One model at one training size: mean and spread over seeds."""

    images: float
    mean: float
    std: float
    n: int


# --- public ----------------------------------------------------------------------------------


def verdict(
    summary: pd.DataFrame,
    models: Sequence[str],
    families: Mapping[str, str] | None = None,
) -> list[str]:
    """Plain-language findings, one sentence per list item.

    ``models`` are display labels in study order; ``families`` maps a label to ``cnn``, ``vit``
    or ``hybrid`` and is only needed to pick the head-to-head pair among more than two models.
    """
    if summary.empty:
        return ["No cell completed, so there is nothing to compare yet."]
    out = []
    groups = list(summary.groupby("trainable_blocks", sort=False, dropna=False))
    for blocks, group in groups:
        lines = _group_verdict(group, models, families)
        if len(groups) > 1:
            lines.insert(0, f"With {_blocks_text(blocks)}:")
        out.extend(lines)
    return out


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


def find_crossings(summary: pd.DataFrame, a: str, b: str) -> list[Crossing]:
    """Where the accuracy curves of ``a`` and ``b`` cross (one trainable_blocks group).

    Between two neighbouring sizes with gaps of opposite sign the crossing is interpolated;
    sizes where the two are exactly level are the crossing themselves when the lead changes
    across them (and nothing when it does not: the curves touch).
    """
    pairs = _paired(summary, a, b)
    points = [(pa.images, pa.mean - pb.mean) for pa, pb in pairs]
    crossings = []
    last = None  # index of the last size with a non-zero gap
    for i, (_, d) in enumerate(points):
        if d == 0:
            continue
        if last is not None and (points[last][1] > 0) != (d > 0):
            clear = _beyond_spread(*pairs[last]) and _beyond_spread(*pairs[i])
            crossings.append(replace(_crossing(points, last, i, a, b), clear=clear))
        last = i
    return crossings


def _beyond_spread(pa: Point, pb: Point) -> bool:
    """The rule of the module docstring; False when a spread is unknown (one seed)."""
    if min(pa.n, pb.n) < 2:
        return False
    return abs(pa.mean - pb.mean) > pa.std + pb.std


def _crossing(points: list[tuple[float, float]], i: int, j: int, a: str, b: str) -> Crossing:
    (x0, d0), (x1, d1) = points[i], points[j]
    below, above = (a, b) if d0 > 0 else (b, a)
    if j > i + 1:
        # Level at the sizes in between: the crossing is there (their geometric middle).
        level = [x for x, _ in points[i + 1 : j]]
        middle = (
            math.exp(sum(math.log(x) for x in level) / len(level)) if len(level) > 1 else level[0]
        )
        return Crossing(middle, level[0], level[-1], below, above)
    # Linear in log(images): the gap closes in proportion to the log distance travelled.
    lx0, lx1 = math.log(x0), math.log(x1)
    x = math.exp(lx0 + (lx1 - lx0) * d0 / (d0 - d1))
    return Crossing(x, x0, x1, below, above)


# --- one trainable_blocks group ------------------------------------------------------------


def _group_verdict(
    group: pd.DataFrame, models: Sequence[str], families: Mapping[str, str] | None
) -> list[str]:
    present = [m for m in models if m in set(group["model"])]
    lines = []
    absent = [m for m in models if m not in present]
    if absent:
        lines.append(f"No completed runs for {_join(absent)}.")
    if len(present) > 2:
        lines.extend(_rankings(group, present))
    pair = head_to_head(group, models, families)
    if pair is None:
        lines.extend(_single_model(group, present))
        return lines
    a, b = pair
    if len(present) > 2:
        lines.append(f"Head to head, {a} against {b}:")
    lines.extend(_size_comparisons(group, a, b))
    lines.append(_crossing_sentence(group, a, b))
    cost = _cost_sentence(group, a, b)
    if cost:
        lines.append(cost)
    return lines


def _single_model(group: pd.DataFrame, present: list[str]) -> list[str]:
    if not present:
        return []
    model = present[0]
    points = [_point(r) for _, r in group[group["model"] == model].iterrows()]
    sizes = ", ".join(f"{pct(p.mean)} at {_images(p.images)}" for p in _by_size(points))
    return [f"Only {model} has completed runs ({sizes}); there is nothing to compare it with."]


def _rankings(group: pd.DataFrame, present: list[str]) -> list[str]:
    lines = []
    for fraction, rows in group.groupby("fraction", sort=True):
        rows = rows.sort_values(f"{METRIC}_mean", ascending=False)
        ranked = ", ".join(
            f"{r.model} {pct(getattr(r, f'{METRIC}_mean'))}" for r in rows.itertuples()
        )
        images = _images(_size_of(rows, fraction))
        lines.append(f"Ranking at {images}: {ranked}.")
    return lines


def _size_comparisons(group: pd.DataFrame, a: str, b: str) -> list[str]:
    lines = []
    for fraction in sorted(set(group["fraction"])):
        rows = group[group["fraction"] == fraction]
        pa, pb = _point_of(rows, a), _point_of(rows, b)
        if pa is None or pb is None:
            only = a if pa is not None else b
            point = pa if pa is not None else pb
            assert point is not None
            lines.append(
                f"At {_images(point.images)} only {only} has completed runs "
                f"({pct(point.mean)}); no comparison there."
            )
            continue
        lines.append(_compare(pa, pb, a, b))
    return lines


def _compare(pa: Point, pb: Point, a: str, b: str) -> str:
    size = _images((pa.images + pb.images) / 2)
    diff = pa.mean - pb.mean
    if diff == 0:
        return f"At {size}, {a} and {b} are level at {pct(pa.mean)}."
    (win, pw), (lose, pl) = ((a, pa), (b, pb)) if diff > 0 else ((b, pb), (a, pa))
    head = (
        f"At {size}, {win} is more accurate than {lose}: {pct(pw.mean)} against "
        f"{pct(pl.mean)} (+{_points(abs(diff))}, {_seeds(pw.n, pl.n)})"
    )
    if min(pw.n, pl.n) < 2:
        return (
            head
            + "; with a single seed, whether this exceeds the spread over seeds cannot be told."
        )
    if _beyond_spread(pw, pl):
        return head + f"; the gap exceeds the spread over seeds (std {_std_sum(pw, pl)})."
    return (
        head + f"; the gap is within the spread over seeds (std {_std_sum(pw, pl)}), "
        "so the two are not told apart at this size."
    )


def _crossing_sentence(group: pd.DataFrame, a: str, b: str) -> str:
    pairs = _paired(group, a, b)
    if len(pairs) < 2:
        return "Both models finished at fewer than two common sizes, so no crossing can be located."
    crossings = find_crossings(group, a, b)
    lo, hi = _count(pairs[0][0].images), _images(pairs[-1][0].images)
    if not crossings:
        diffs = [pa.mean - pb.mean for pa, pb in pairs]
        if all(d == 0 for d in diffs):
            return f"The accuracy curves are level at every size from {lo} to {hi}."
        leader = a if max(diffs) > 0 else b
        level = " or level" if any(d == 0 for d in diffs) else ""
        return (
            f"The accuracy curves do not cross between {lo} and {hi}: "
            f"{leader} is ahead{level} at every measured size."
        )
    parts = [_crossing_text(c) for c in crossings]
    return "The accuracy curves cross " + "; and again ".join(parts) + "."


def _crossing_text(c: Crossing) -> str:
    if c.low == c.high:
        where = f"at {_images(c.images)}, where they are level"
    else:
        where = (
            f"between {_count(c.low)} and {_images(c.high)} "
            f"(about {_count(c.images)}, interpolated on a log scale)"
        )
    text = f"{where}: {c.below} is ahead below, {c.above} above"
    if not c.clear:
        text += (
            " (but a gap next to it is within the spread over seeds, so the crossing is uncertain)"
        )
    return text


def _cost_sentence(group: pd.DataFrame, a: str, b: str) -> str | None:
    both = sorted(
        set(group.loc[group["model"] == a, "fraction"])
        & set(group.loc[group["model"] == b, "fraction"])
    )
    if not both:
        return None
    rows = group[group["fraction"] == both[-1]].set_index("model")
    ra, rb = rows.loc[a], rows.loc[b]
    size = _images(_size_of(rows.reset_index(), both[-1]))
    ta, tb = float(ra["train_seconds"]), float(rb["train_seconds"])
    if math.isnan(ta) or math.isnan(tb) or ta == tb:
        return None
    (cheap, rc), rd = ((a, ra), rb) if ta < tb else ((b, rb), ra)
    sentence = (
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
        sentence += ", with " + _join(good)
    if bad:
        sentence += ", but it needs more: " + _join(bad)
    return sentence + "."


def _cost_clause(mine: float, theirs: float, fmt, what: str) -> tuple[str, bool] | None:
    mine, theirs = float(mine), float(theirs)
    if math.isnan(mine) or math.isnan(theirs):
        return None
    return f"{fmt(mine)} against {fmt(theirs)} {what}", mine <= theirs


# --- points and pairing --------------------------------------------------------------------


def _point(row: pd.Series) -> Point:
    images = row["num_train_images"]
    return Point(
        images=float("nan") if pd.isna(images) else float(images),
        mean=float(row[f"{METRIC}_mean"]),
        std=float(row[f"{METRIC}_std"]),
        n=int(row["n"]),
    )


def _point_of(rows: pd.DataFrame, model: str) -> Point | None:
    mine = rows[rows["model"] == model]
    return None if mine.empty else _point(mine.iloc[0])


def _paired(group: pd.DataFrame, a: str, b: str) -> list[tuple[Point, Point]]:
    """(a, b) points at every size both finished, ordered by number of images."""
    pairs = []
    for fraction in sorted(set(group["fraction"])):
        rows = group[group["fraction"] == fraction]
        pa, pb = _point_of(rows, a), _point_of(rows, b)
        if pa is not None and pb is not None and pa.images > 0:
            pairs.append((pa, pb))
    return sorted(pairs, key=lambda p: p[0].images)


def _by_size(points: list[Point]) -> list[Point]:
    return sorted(points, key=lambda p: p.images)


def _size_of(rows: pd.DataFrame, fraction: float) -> float:
    sizes = pd.to_numeric(rows.loc[rows["fraction"] == fraction, "num_train_images"], "coerce")
    return float(sizes.median())


# --- wording -------------------------------------------------------------------------------


def _blocks_text(blocks: object) -> str:
    return "all layers trainable" if pd.isna(blocks) else f"the last {int(blocks)} blocks trainable"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _images(n: float) -> str:
    return (
        "an unknown number of training images" if math.isnan(n) else f"{round(n):,} training images"
    )


def _count(n: float) -> str:
    return f"{round(n):,}"


def _points(d: float) -> str:
    # Small gaps need the second decimal, or "+0.0 points" says nothing.
    return f"{100 * d:.2f} points" if 100 * d < 1 else f"{100 * d:.1f} points"


def _std_sum(pa: Point, pb: Point) -> str:
    return f"{100 * pa.std:.2f} + {100 * pb.std:.2f} = {100 * (pa.std + pb.std):.2f} points"


def _seeds(n_a: int, n_b: int) -> str:
    if n_a == n_b:
        return f"{n_a} seed{'s' if n_a != 1 else ''} each"
    return f"{n_a} and {n_b} seeds"


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
