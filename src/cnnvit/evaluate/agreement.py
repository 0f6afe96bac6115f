"""Two models on the same images: how often they agree, and whether one is really better.

Seed 002 called 80.4 % against 80.3 % "statistically identical" without a test; here the claim
is decided by one: McNemar's exact test on the discordant pairs (the images exactly one of the
two gets right), with a paired bootstrap interval for the accuracy difference beside it. The
statistics are scipy's and scikit-learn's; this module only arranges them.

Inputs are two ``predictions.parquet`` frames (see :func:`cnnvit.metrics.
predictions_frame`), aligned on ``index``, the image's position in the test split.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import binomtest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import cohen_kappa_score

from cnnvit.errors import UserError
from cnnvit.folders import json_ready
from cnnvit.formatting import pct
from cnnvit.plotting import plain

GRID_IMAGES = 16  # images in a grid of disagreements
AGREEMENT_JSON = "agreement.json"
PER_CLASS_CSV = "per_class_agreement.csv"
DISAGREEMENTS_PNG = "disagreements.png"
REQUIRED_COLUMNS = ("index", "label", "prediction")
PER_CLASS_COLUMNS = [
    "class",
    "support",
    "accuracy_a",
    "accuracy_b",
    "difference",
    "only_a",
    "only_b",
]


class AgreementError(UserError, ValueError):
    """Two prediction sets or runs that cannot be compared; the message says why."""


@dataclass(frozen=True, eq=False)
class Agreement:
    """How two models (A and B) relate on the same images, and what the test says.

    Counts partition the images: ``both_right + only_a + only_b + both_wrong == n``.
    ``difference_ci`` is the paired bootstrap ``1 - alpha`` interval of accuracy A − B;
    ``verdict`` is decided by McNemar's test alone.
    """

    names: tuple[str, str]
    classes: list[str]
    n: int
    both_right: int
    only_a: int
    only_b: int
    both_wrong: int
    same_prediction: int
    accuracy_a: float
    accuracy_b: float
    kappa: float  # Cohen's kappa between the two models' predicted classes
    error_consistency: float  # Cohen's kappa between their right/wrong indicators
    mcnemar_p: float
    difference_ci: tuple[float, float]
    alpha: float
    n_boot: int
    seed: int
    verdict: str
    per_class: pd.DataFrame = field(repr=False)  # PER_CLASS_COLUMNS, one row per class
    # One row per image the two label differently: index, label, prediction_a, confidence_a,
    # prediction_b, confidence_b, outcome (only_a, only_b or both_wrong), in index order.
    disagreements: pd.DataFrame = field(repr=False)

    @property
    def difference(self) -> float:
        """Accuracy A − B."""
        return self.accuracy_a - self.accuracy_b

    @property
    def significant(self) -> bool:
        return self.mcnemar_p < self.alpha

    def rates(self) -> dict[str, float]:
        """Each count as a share of the images."""
        keys = ("both_right", "only_a", "only_b", "both_wrong", "same_prediction")
        return {k: getattr(self, k) / self.n for k in keys}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (NaN, where a kappa is undefined, becomes null)."""
        out = {
            "model_a": self.names[0],
            "model_b": self.names[1],
            "num_images": self.n,
            "counts": {
                "both_right": self.both_right,
                "only_a": self.only_a,
                "only_b": self.only_b,
                "both_wrong": self.both_wrong,
                "same_prediction": self.same_prediction,
            },
            "rates": self.rates(),
            "accuracy_a": self.accuracy_a,
            "accuracy_b": self.accuracy_b,
            "difference": self.difference,
            "difference_ci": list(self.difference_ci),
            "ci_level": 1 - self.alpha,
            "bootstrap": {"resamples": self.n_boot, "seed": self.seed},
            "kappa": self.kappa,
            "error_consistency": self.error_consistency,
            "mcnemar": {
                "test": "exact (two-sided binomial on the discordant pairs)",
                "discordant": self.only_a + self.only_b,
                "p_value": self.mcnemar_p,
            },
            "alpha": self.alpha,
            "verdict": self.verdict,
            "classes": list(self.classes),
            "per_class": self.per_class.to_dict(orient="records"),
        }
        return json_ready(out)

    def summary(self) -> list[str]:
        """A few plain lines for a terminal: counts, kappas, the test and the verdict."""
        a, b = self.names
        lo, hi = self.difference_ci
        level = f"{100 * (1 - self.alpha):g} %"
        rates = self.rates()
        return [
            f"A = {a}: {pct(self.accuracy_a, 2)}; B = {b}: {pct(self.accuracy_b, 2)} "
            f"on {self.n:,} images",
            f"both right {self.both_right:,} ({pct(rates['both_right'], 2)}), only A right "
            f"{self.only_a:,}, only B right {self.only_b:,}, both wrong {self.both_wrong:,}; "
            f"same prediction {self.same_prediction:,} ({pct(rates['same_prediction'], 2)})",
            f"Cohen's kappa {_num(self.kappa)}; error consistency {_num(self.error_consistency)}",
            f"A − B = {_signed_points(self.difference)}, {level} bootstrap interval "
            f"[{_signed_points(lo)}, {_signed_points(hi)}] ({self.n_boot:,} resamples)",
            f"McNemar's exact test on {self.only_a + self.only_b:,} discordant images: "
            f"p = {format_p(self.mcnemar_p)}",
            f"verdict: {self.verdict}",
        ]

    def shown_disagreements(self, max_images: int = 16) -> pd.DataFrame:
        """Up to ``max_images`` disagreements, taken in turn from only-A-right, only-B-right and
        both-wrong images (each in index order), so a grid shows every kind there is."""
        groups = [
            self.disagreements[self.disagreements["outcome"] == kind].index.to_list()
            for kind in ("only_a", "only_b", "both_wrong")
        ]
        picked: list[int] = []
        for i in range(max(map(len, groups), default=0)):
            picked += [g[i] for g in groups if i < len(g)]
        return self.disagreements.loc[picked[: max(0, max_images)]]


# --- the statistics ---------------------------------------------------------------------------


def compare_predictions(
    a: pd.DataFrame,
    b: pd.DataFrame,
    classes: Sequence[str],
    *,
    names: tuple[str, str] = ("A", "B"),
    n_boot: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Agreement:
    """Compare two models' predictions on the same images (``predictions.parquet`` frames).

    Refuses (:class:`AgreementError`) frames that do not hold the same images, or whose labels
    differ for the same image: such predictions come from different test sets.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    classes = [str(c) for c in classes]
    joined = align_predictions(a, b, len(classes), names)
    label = joined["label"].to_numpy()  # (N,)
    pred_a, pred_b = joined["prediction_a"].to_numpy(), joined["prediction_b"].to_numpy()
    right_a, right_b = pred_a == label, pred_b == label  # (N,) bool each
    n = len(label)
    only_a = int((right_a & ~right_b).sum())
    only_b = int((right_b & ~right_a).sum())
    p = mcnemar_exact(only_a, only_b)
    return Agreement(
        names=(str(names[0]), str(names[1])),
        classes=classes,
        n=n,
        both_right=int((right_a & right_b).sum()),
        only_a=only_a,
        only_b=only_b,
        both_wrong=int((~right_a & ~right_b).sum()),
        same_prediction=int((pred_a == pred_b).sum()),
        accuracy_a=float(right_a.mean()),
        accuracy_b=float(right_b.mean()),
        kappa=_kappa(pred_a, pred_b, list(range(len(classes)))),
        # Error consistency (Geirhos et al. 2020) is (c_obs - c_exp) / (1 - c_exp) with
        # c_exp = p_a p_b + (1 - p_a)(1 - p_b): exactly Cohen's kappa of the two right/wrong
        # vectors, whose chance agreement is that same sum over the two categories.
        error_consistency=_kappa(right_a, right_b, [False, True]),
        mcnemar_p=p,
        difference_ci=paired_bootstrap_ci(right_a, right_b, n_boot=n_boot, seed=seed, alpha=alpha),
        alpha=alpha,
        n_boot=n_boot,
        seed=seed,
        verdict=decide(p, only_a, only_b, names, alpha),
        per_class=_per_class(label, right_a, right_b, classes),
        disagreements=_disagreements(joined, right_a, right_b),
    )


def align_predictions(
    a: pd.DataFrame, b: pd.DataFrame, num_classes: int, names: tuple[str, str] = ("A", "B")
) -> pd.DataFrame:
    """One row per image, in index order: index, label, prediction_a/b, confidence_a/b."""
    for frame, name in ((a, names[0]), (b, names[1])):
        _check_frame(frame, name, num_classes)
    only_a = np.setdiff1d(a["index"].to_numpy(), b["index"].to_numpy())
    only_b = np.setdiff1d(b["index"].to_numpy(), a["index"].to_numpy())
    if len(only_a) or len(only_b):
        raise AgreementError(
            f"the two prediction sets do not hold the same images: {len(only_a)} image(s) only "
            f"in {names[0]}'s (indices {some(only_a)}) and {len(only_b)} only in {names[1]}'s "
            f"(indices {some(only_b)}); compare runs validated on the same images"
        )
    keep = ["index", "label", "prediction", "confidence"]
    joined = pd.merge(
        a.reindex(columns=keep), b.reindex(columns=keep), on="index", suffixes=("_a", "_b")
    ).sort_values("index", kind="stable", ignore_index=True)
    differ = joined["label_a"].to_numpy() != joined["label_b"].to_numpy()
    if differ.any():
        raise AgreementError(
            f"the labels differ for {int(differ.sum())} of {len(joined)} images (indices "
            f"{some(joined.loc[differ, 'index'].to_numpy())}): the two prediction sets come "
            "from different test images or a different class order"
        )
    joined = joined.drop(columns="label_b").rename(columns={"label_a": "label"})
    return joined.astype({"index": np.int64, "label": np.int64})


def _check_frame(frame: pd.DataFrame, name: str, num_classes: int) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise AgreementError(f"{name}'s predictions lack the column(s) {', '.join(missing)}")
    if frame.empty:
        raise AgreementError(f"{name}'s predictions hold no images")
    index = frame["index"].to_numpy()
    if len(np.unique(index)) != len(index):
        raise AgreementError(f"{name}'s predictions list an image index more than once")
    for column in ("label", "prediction"):
        values = frame[column].to_numpy()
        if values.min() < 0 or values.max() >= num_classes:
            raise AgreementError(
                f"{name}'s {column}s run from {values.min()} to {values.max()}, outside the "
                f"{num_classes} classes given"
            )


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of ``only_a`` of the discordant pairs
    against 1/2. With no discordant pair there is no evidence either way: p = 1."""
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    return float(binomtest(only_a, discordant, 0.5, alternative="two-sided").pvalue)


def paired_bootstrap_ci(
    right_a: np.ndarray, right_b: np.ndarray, *, n_boot: int, seed: int, alpha: float
) -> tuple[float, float]:
    """Percentile interval of accuracy A − B over ``n_boot`` resamples of the images.

    Resampling n images with replacement and taking mean(right_a - right_b) only depends on how
    many drawn images are only-A-right (+1), only-B-right (-1) or neither (0): those three
    counts are one multinomial draw with the observed shares. Drawing the counts directly gives
    the very same distribution as drawing n indices, in O(n_boot) memory instead of
    O(n_boot * n) (10,000 resamples of 50,000 ImageNet images would be 4 GB of indices).
    """
    d = right_a.astype(np.int8) - right_b.astype(np.int8)  # (N,) in {-1, 0, 1}
    n = len(d)
    shares = np.array([(d == 1).sum(), (d == -1).sum(), (d == 0).sum()], dtype=np.float64) / n
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, shares, size=n_boot)  # (n_boot, 3)
    diffs = (counts[:, 0] - counts[:, 1]) / n  # (n_boot,)
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def decide(p: float, only_a: int, only_b: int, names: Sequence[str], alpha: float) -> str:
    """The verdict from the test alone: indistinguishable unless p < alpha, then the model with
    more images only it gets right is the better one."""
    if p >= alpha:
        return f"indistinguishable at α={alpha:g}"
    better = names[0] if only_a > only_b else names[1]
    return f"{better} better at α={alpha:g}"


def _kappa(x: np.ndarray, y: np.ndarray, labels: list) -> float:
    # Undefined (NaN) when chance agreement is already certain, e.g. both models right on
    # every image; sklearn warns about it, the report and JSON say "undefined" instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(cohen_kappa_score(x, y, labels=labels))


def _per_class(
    label: np.ndarray, right_a: np.ndarray, right_b: np.ndarray, classes: list[str]
) -> pd.DataFrame:
    k = len(classes)
    support = np.bincount(label, minlength=k)  # (K,)
    hits_a = np.bincount(label, weights=right_a, minlength=k)
    hits_b = np.bincount(label, weights=right_b, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc_a, acc_b = hits_a / support, hits_b / support  # NaN for a class with no image
    return pd.DataFrame(
        {
            "class": classes,
            "support": support.astype(np.int64),
            "accuracy_a": acc_a,
            "accuracy_b": acc_b,
            "difference": acc_a - acc_b,
            "only_a": np.bincount(label, weights=right_a & ~right_b, minlength=k).astype(np.int64),
            "only_b": np.bincount(label, weights=right_b & ~right_a, minlength=k).astype(np.int64),
        },
        columns=PER_CLASS_COLUMNS,
    )


def _disagreements(joined: pd.DataFrame, right_a: np.ndarray, right_b: np.ndarray) -> pd.DataFrame:
    differ = joined["prediction_a"].to_numpy() != joined["prediction_b"].to_numpy()
    outcome = np.where(right_a, "only_a", np.where(right_b, "only_b", "both_wrong"))
    out = joined.assign(outcome=outcome)[differ]
    columns = ["index", "label", "prediction_a", "confidence_a", "prediction_b", "confidence_b"]
    return out[[*columns, "outcome"]].reset_index(drop=True)


# --- files ------------------------------------------------------------------------------------


def write_agreement(agreement: Agreement, out_dir: Path) -> None:
    """``out_dir``/agreement.json and per_class_agreement.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(agreement.to_dict(), indent=2, ensure_ascii=False)
    (out_dir / AGREEMENT_JSON).write_text(text + "\n")
    agreement.per_class.to_csv(out_dir / PER_CLASS_CSV, index=False)


def largest_common(
    keys_a: Iterable[tuple[float, int]], keys_b: Iterable[tuple[float, int]]
) -> list[tuple[float, int]]:
    """The (fraction, seed) cells two models both have at the largest fraction they share, by
    seed: where a study compares them."""
    common = set(keys_a) & set(keys_b)
    if not common:
        return []
    fraction = max(f for f, _ in common)
    return sorted((k for k in common if k[0] == fraction), key=lambda k: k[1])


def grid_indices(agreement: Agreement, max_images: int = GRID_IMAGES) -> np.ndarray:
    """The test indices a grid of disagreements of the two models may show, in either
    order (A against B, or B against A)."""
    shown = agreement.shown_disagreements(max_images)["index"].to_numpy()
    swapped = agreement.disagreements.assign(
        outcome=agreement.disagreements["outcome"].replace({"only_a": "only_b", "only_b": "only_a"})
    )
    other = replace(agreement, disagreements=swapped).shown_disagreements(max_images)
    return np.union1d(shown, other["index"].to_numpy()).astype(np.int64)


def write_disagreement_images(path: Path, indices: np.ndarray, images: np.ndarray) -> None:
    """The images (n, H, W, C) uint8 at test ``indices`` (n,), as one .npz file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, indices=np.asarray(indices, np.int64), images=images)
    tmp.replace(path)


def read_disagreement_images(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(indices, images) from :func:`write_disagreement_images`; None where there is no such
    file or it cannot be read (never unpickled)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            return saved["indices"], saved["images"]
    except (OSError, ValueError, KeyError):
        return None


# --- the grid of disagreements ----------------------------------------------------------------

_RIGHT, _WRONG = "#1a7f37", "#b42318"
_FIGURE_STYLE = {"font.family": "DejaVu Sans", "font.size": 8, "axes.titlesize": 8}


def disagreement_figure(
    images,
    agreement: Agreement,
    classes: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    max_images: int = 16,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
) -> Figure:
    """A grid of images the two models label differently, each titled with the true class and
    both predictions with their confidences (green right, red wrong).

    ``images`` is (N, H, W, C) or (N, C, H, W), uint8, numpy or torch. ``indices`` gives the
    test index of each image; without it, ``images[i]`` is the image of index ``i`` (the
    whole test split). Which disagreements are shown: :meth:`Agreement.shown_disagreements`.
    """
    classes = list(classes or agreement.classes)
    names = tuple(names or agreement.names)
    pixels = _hwc(images)  # (N, H, W, C)
    where = _positions(indices, len(pixels))
    shown = agreement.shown_disagreements(max_images)
    shown = shown[shown["index"].isin(list(where))]
    cols = max(1, min(4, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    with mpl.rc_context(_FIGURE_STYLE):
        # At least 6 inches wide, so that the title fits over a grid of one or two images.
        fig = Figure(figsize=(max(6.0, 2.35 * cols), 2.55 * rows + 0.7), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax in axes:
            ax.set_axis_off()
        for ax, r in zip(axes, shown.itertuples(), strict=False):
            image = pixels[where[int(r.index)]]  # (H, W, C)
            gray = image.shape[-1] == 1
            ax.imshow(
                image[..., 0] if gray else image,
                cmap="gray" if gray else None,
                vmin=0,
                vmax=255,
                interpolation="nearest",
            )
            _title(ax, r, classes, names)
        fig.suptitle(
            f"{plain(names[0])} (A) and {plain(names[1])} (B) disagree on "
            f"{len(agreement.disagreements):,} of {agreement.n:,} images\n{len(shown)} shown; "
            "green: right, red: wrong; % = the model's confidence"
        )
    return fig


def _title(ax, r, classes: list[str], names: Sequence[str]) -> None:
    lines = [
        (f"true: {plain(classes[r.label])}  (#{r.index})", "black"),
        (_prediction_line("A", r.prediction_a, r.confidence_a, classes), _color(r, "a")),
        (_prediction_line("B", r.prediction_b, r.confidence_b, classes), _color(r, "b")),
    ]
    # Three coloured lines stacked above the image (a title has one colour).
    for i, (text, color) in enumerate(reversed(lines)):
        ax.text(
            0.5,
            1.02 + 0.12 * i,
            text,
            transform=ax.transAxes,
            ha="center",
            va="bottom",
            color=color,
            fontsize=7.5,
            clip_on=False,
        )


def _prediction_line(who: str, pred: int, conf: float, classes: list[str]) -> str:
    share = "" if pd.isna(conf) else f" ({100 * float(conf):.0f} %)"
    return f"{who}: {plain(classes[int(pred)])}{share}"


def _color(r, which: str) -> str:
    return _RIGHT if r.outcome == f"only_{which}" else _WRONG


def _hwc(images) -> np.ndarray:
    if hasattr(images, "detach"):  # a torch tensor; torch itself need not be imported here
        images = images.detach().cpu().numpy()
    x = np.asarray(images)
    if x.ndim == 3:  # (N, H, W): grayscale without a channel axis
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C) or (N, C, H, W), got shape {x.shape}")
    if x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
        x = x.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
    if x.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels, got {x.dtype}")
    return x


def _positions(indices, n: int) -> dict[int, int]:
    """Validation index -> position in the images array."""
    if indices is None:
        return {i: i for i in range(n)}
    idx = [int(i) for i in np.asarray(indices).reshape(-1)]
    if len(idx) != n:
        raise ValueError(f"{n} images but {len(idx)} indices")
    return {v: i for i, v in enumerate(idx)}


# --- formatting ---------------------------------------------------------------------------------


def format_p(p: float) -> str:
    """A p-value for people: 0.43, 0.012, 3.1e-05."""
    if p >= 0.01:
        return f"{p:.2g}" if p < 0.1 else f"{p:.2f}"
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def _signed_points(x: float) -> str:
    return f"{100 * x:+.2f} points"


def _num(x: float) -> str:
    return "undefined" if math.isnan(x) else f"{x:.3f}"


def some(values, k: int = 5) -> str:
    """The first ``k`` values, and how many there are in all."""
    values = list(values)
    text = ", ".join(str(v) for v in values[:k])
    return text + (f", … ({len(values)} in all)" if len(values) > k else "")
