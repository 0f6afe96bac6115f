"""Shape versus texture: a cue-conflict test (Geirhos et al. 2019; seed 002's feather-cat).

A cue-conflict image's global shape says one class and its local texture another. For each
model, over the images whose two cues differ, **shape bias** = shape hits / (shape hits +
texture hits), where a hit is the model's top-1 answer, restricted to the set's classes, equal
to that cue's class: 1 = decides by shape, 0 = by texture.

Two sources of images:

**Generated from the study's own images** (:func:`make_cue_conflict`; no style-transfer network
is needed). For each ordered pair of different classes (a, b), a *shape image* S of class a and
a *texture image* T of class b are drawn (seeded), and:

1. each image's foreground is found without labels (:func:`foreground_mask`): the colour
   distance of every pixel from the border colour (median of the outermost pixels), thresholded
   by Otsu's method with hysteresis (pixels above a low threshold set by the border's own spread
   are kept when connected to pixels above Otsu's), then specks and small holes (< 1 % of the
   image) removed. On Fashion-MNIST (objects on black) this is the garment's silhouette, gaps
   between sleeves and body and a sandal's openings kept; on a colour photo, the region that
   stands out from the border colour;
2. T's *texture field* (:func:`texture_field`): square tiles (side = image side / 7, at least 3
   px; 4 px at 28, 32 px at 224) cut at every position lying wholly inside T's foreground
   (or, for a small object, the best-covered positions), pasted at random into a grid that
   covers the image. This keeps T's local statistics (grey level or colour, fine pattern,
   stitching) and destroys its shape: no tile holds T's outline;
3. the cue-conflict image is the texture field inside S's silhouette, and S's own pixels
   (its background) outside it. Only S's outline survives of S: its interior edges are left out
   on purpose, because at 28 px they are mostly local cues (stripes, seams) that belong to the
   texture.

Pairs are balanced: ``num_images`` is spread over all ordered (shape, texture) pairs of the
classes present (each pair the same count, the remainder to pairs drawn at random), and the
images within a pair drawn at random, all from ``seed``.

**A user folder in model-vs-human's layout** (:func:`read_cue_conflict_folder`):
``<shape-class>/[<prefix>_]<shape><n>-<texture><m>.png``, e.g. ``cat/cat7-elephant1.png``.
A model whose class names include the folder's classes answers among those classes; a model
with the 1000 ImageNet classes is mapped to model-vs-human's 16 categories by averaging the
softmax probabilities of each category's ImageNet indices (:data:`IMAGENET_16_CATEGORIES`).

This module has the images and the numbers (:func:`cue_conflict_answers` runs the models); the
analysis, its files and its report section are :mod:`cnnvit.analyze.analyses.shape_bias`.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from cnnvit.analyze.hooks import preserved
from cnnvit.analyze.images import ImageSet
from cnnvit.analyze.subject import Subject
from cnnvit.ui import progress_bar

__all__ = [
    "IMAGENET_16_CATEGORIES",
    "CueConflictAnswers",
    "CueConflictSet",
    "ModelAnswers",
    "aggregate_imagenet16",
    "compose",
    "cue_conflict_answers",
    "foreground_mask",
    "make_cue_conflict",
    "otsu_threshold",
    "read_cue_conflict_folder",
    "set_predictions",
    "shape_bias",
    "texture_field",
    "tile_side",
]

# model-vs-human's 16 entry-level categories and the ImageNet-1k indices that make each one,
# as published in bethgelab/model-vs-human, modelvshuman/helper/human_categories.py
# (HumanCategories.<category>_indices). A category's probability is the mean of its indices'.
IMAGENET_16_CATEGORIES: dict[str, tuple[int, ...]] = {
    "airplane": (404,),
    "bear": (294, 295, 296, 297),
    "bicycle": (444, 671),
    "bird": (
        *(8, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 24),
        *(80, 81, 82, 83, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 98, 99, 100),
        *(127, 128, 129, 130, 131, 132, 133, 135, 136, 137, 138, 139, 140, 141, 142, 143),
        *(144, 145),
    ),
    "boat": (472, 554, 625, 814, 914),
    "bottle": (440, 720, 737, 898, 899, 901, 907),
    "car": (436, 511, 817),
    "cat": (281, 282, 283, 284, 285, 286),
    "chair": (423, 559, 765, 857),
    "clock": (409, 530, 892),
    "dog": (
        *range(152, 192),  # 152..191
        *range(193, 204),  # 193..203
        *range(205, 227),  # 205..226
        *range(228, 242),  # 228..241
        *range(243, 251),  # 243..250
        *range(252, 258),  # 252..257
        259,
        *range(261, 264),  # 261..263
        *range(265, 269),  # 265..268
    ),
    "elephant": (385, 386),
    "keyboard": (508, 878),
    "knife": (499,),
    "oven": (766,),
    "truck": (555, 569, 656, 675, 717, 734, 864, 867),
}

# Specks and holes below this fraction of the image are cleaned from a foreground mask.
_CLEAN_FRACTION = 0.01
# A mask covering less or more than this of the image is a failed segmentation: redraw.
_MASK_RANGE = (0.05, 0.95)
_REDRAWS = 20
_MIN_TILES = 8
_BATCH = 256


@dataclass
class CueConflictSet:
    """uint8 ``images`` (N, C, H, W); int64 ``shape_labels`` and ``texture_labels`` (N,) indexing
    ``classes``; ``names`` the file names (folder) or generated ids (``<shape><i>-<texture><j>``
    with i, j the source images' indices)."""

    images: torch.Tensor
    shape_labels: torch.Tensor
    texture_labels: torch.Tensor
    classes: list[str]
    names: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"cue-conflict images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        n = len(self.images)
        if not (len(self.shape_labels) == len(self.texture_labels) == len(self.names) == n):
            raise ValueError(
                f"{n} images but {len(self.shape_labels)} shape labels, "
                f"{len(self.texture_labels)} texture labels and {len(self.names)} names"
            )

    def __len__(self) -> int:
        return len(self.names)


# --- the generated set -----------------------------------------------------------------------


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the cut maximising the between-class variance.

    Written out (twelve lines of NumPy) because scikit-image is not a dependency."""
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)  # pixels at or below each cut
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (m0[-1] - m0) / w1) ** 2
    return float(centers[np.argmax(np.nan_to_num(between))])


def _drop_small(mask: np.ndarray, limit: float) -> np.ndarray:
    """``mask`` without its connected components of ``limit`` pixels or fewer."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    return np.isin(labels, 1 + np.nonzero(sizes > limit)[0])


def _largest_component(mask: np.ndarray) -> int:
    labels, count = ndimage.label(mask)
    return int(np.bincount(labels.ravel())[1:].max()) if count else 0


def foreground_mask(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """bool (H, W): the pixels of uint8 ``image`` (C, H, W) that stand out from its border colour
    (Otsu with hysteresis, specks and small holes removed; see the module docstring)."""
    x = np.asarray(image, dtype=np.float32)  # (C, H, W)
    border = np.concatenate([x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]], axis=1)  # (C, P)
    background = np.median(border, axis=1)  # (C,)
    distance = np.sqrt(((x - background[:, None, None]) ** 2).sum(0))  # (H, W)
    border_spread = np.sqrt(((border - background[:, None]) ** 2).sum(0))  # (P,)
    high = otsu_threshold(distance)
    # The low threshold sits just above the background's own variation (the median border
    # distance: robust to an object touching the border), so dark parts of an object on a clean
    # background (a black bag on black) join the bright parts they touch.
    low = min(high, max(3 * float(np.median(border_spread)) + 1.0, 0.05 * high))
    labels, _ = ndimage.label(distance > low)
    seeds = np.unique(labels[distance > high])
    mask = np.isin(labels, seeds[seeds > 0])
    # A speck is small against the image and against the object's largest part (thin parts of
    # their own, like the bars of a grille, are kept).
    limit = min(_CLEAN_FRACTION * mask.size, 0.25 * _largest_component(mask))
    mask = _drop_small(mask, limit)
    holes = ndimage.binary_fill_holes(mask) & ~mask
    return mask | (holes & ~_drop_small(holes, limit))


def tile_side(image_side: int) -> int:
    """The texture tile's side for images of side ``image_side``: a seventh, at least 3 px."""
    return max(3, round(image_side / 7))


def texture_field(
    image: np.ndarray | torch.Tensor, mask: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """uint8 (C, H, W): tiles of ``image`` taken from inside ``mask`` (at least the
    ``_MIN_TILES`` best-covered positions), pasted at random in a grid over the whole image."""
    x = np.asarray(image)  # (C, H, W)
    c, h, w = x.shape
    side = min(tile_side(max(h, w)), h, w)
    # Fraction of each tile position (top-left corner) that lies in the mask.
    cover = _box_mean(mask.astype(np.float64), side)  # (h - side + 1, w - side + 1)
    inside = np.argwhere(cover >= 1.0 - 1e-9)
    if len(inside) < _MIN_TILES:
        best = np.argsort(-cover.ravel(), kind="stable")[:_MIN_TILES]
        inside = np.stack(np.unravel_index(best, cover.shape), axis=1)
    rows, cols = -(-h // side), -(-w // side)
    picks = inside[rng.integers(0, len(inside), size=rows * cols)]  # (rows * cols, 2)
    field = np.empty((c, rows * side, cols * side), dtype=x.dtype)
    for k, (top, left) in enumerate(picks):
        i, j = divmod(k, cols)
        field[:, i * side : (i + 1) * side, j * side : (j + 1) * side] = x[
            :, top : top + side, left : left + side
        ]
    return field[:, :h, :w]


def _box_mean(a: np.ndarray, side: int) -> np.ndarray:
    """Mean of ``a`` (H, W) over every side x side window, indexed by its top-left corner."""
    integral = np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1)  # (H + 1, W + 1)
    total = (
        integral[side:, side:]
        - integral[:-side, side:]
        - integral[side:, :-side]
        + integral[:-side, :-side]
    )
    return total / (side * side)


def compose(shape_image: np.ndarray, shape_mask: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """uint8 (C, H, W): ``texture`` inside ``shape_mask``, ``shape_image`` outside it."""
    return np.where(shape_mask[None], texture, shape_image)


def make_cue_conflict(images: ImageSet, *, num_images: int = 200, seed: int = 0) -> CueConflictSet:
    """A balanced, seeded cue-conflict set from ``images``: each image has one image's
    silhouette (shape class) filled with another's shuffled texture (texture class)."""
    if num_images < 1:
        raise ValueError(f"num_images must be positive, got {num_images}")
    labels = images.labels.numpy()
    present = [int(k) for k in np.unique(labels)]
    if len(present) < 2:
        raise ValueError(
            f"a cue-conflict set needs images of at least two classes; {images.name or 'the set'} "
            f"has {len(present)}"
        )
    rng = np.random.default_rng(seed)
    by_class = {k: np.nonzero(labels == k)[0] for k in present}
    masks: dict[int, np.ndarray] = {}
    out, shapes, textures, names = [], [], [], []
    for a, b in _balanced_pairs(present, num_images, rng):
        s = _draw(images, by_class[a], masks, rng)
        t = _draw(images, by_class[b], masks, rng)
        source_s, source_t = images.images[s].numpy(), images.images[t].numpy()
        texture = texture_field(source_t, masks[t], rng)
        out.append(compose(source_s, masks[s], texture))
        shapes.append(a)
        textures.append(b)
        names.append(f"{images.classes[a]}{s}-{images.classes[b]}{t}")
    return CueConflictSet(
        torch.from_numpy(np.stack(out)),  # (N, C, H, W)
        torch.tensor(shapes, dtype=torch.int64),
        torch.tensor(textures, dtype=torch.int64),
        list(images.classes),
        names,
    )


def _balanced_pairs(classes: list[int], count: int, rng: np.random.Generator) -> list[tuple]:
    """``count`` ordered pairs of different classes, each pair ``count // pairs`` times and the
    remainder spread over distinct pairs drawn at random; in a shuffled order."""
    pairs = [(a, b) for a in classes for b in classes if a != b]
    each, extra = divmod(count, len(pairs))
    chosen = pairs * each + [pairs[i] for i in rng.choice(len(pairs), extra, replace=False)]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def _draw(images: ImageSet, candidates: np.ndarray, masks: dict[int, np.ndarray], rng) -> int:
    """An image of ``candidates`` whose foreground mask is usable (redrawn a few times when the
    segmentation found next to nothing or nearly everything, else the one nearest to usable);
    its mask cached in ``masks``."""
    low, high = _MASK_RANGE
    best, best_miss = -1, math.inf
    for _ in range(_REDRAWS):
        index = int(rng.choice(candidates))
        if index not in masks:
            masks[index] = foreground_mask(images.images[index].numpy())
        area = float(masks[index].mean())
        miss = max(low - area, area - high, 0.0)
        if miss < best_miss:
            best, best_miss = index, miss
        if miss == 0.0:
            break
    return best


# --- a model-vs-human folder -----------------------------------------------------------------

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def read_cue_conflict_folder(folder: str | Path, image_size: int = 224) -> CueConflictSet:
    """The images of a folder in model-vs-human's cue-conflict layout,
    ``<shape-class>/[<prefix>_]<shape><n>-<texture><m>.png``, decoded as RGB and resized
    (shorter side, centre crop) to ``image_size``. Classes: the sorted union of the shape and
    texture class names (trailing digits stripped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"cue-conflict folder {folder} does not exist")
    entries = []  # (path, shape class, texture class)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(sub.iterdir()):
            if path.suffix.lower() in _IMAGE_SUFFIXES:
                entries.append((path, sub.name, _texture_of(path, sub.name)))
    if not entries:
        raise ValueError(
            f"{folder} holds no images in model-vs-human's layout "
            "(<shape-class>/<shape><n>-<texture><m>.png, e.g. cat/cat7-elephant1.png)"
        )
    classes = sorted({e[1] for e in entries} | {e[2] for e in entries})
    index = {c: i for i, c in enumerate(classes)}
    images = torch.stack([_load(path, image_size) for path, _, _ in entries])  # (N, 3, S, S)
    return CueConflictSet(
        images,
        torch.tensor([index[e[1]] for e in entries], dtype=torch.int64),
        torch.tensor([index[e[2]] for e in entries], dtype=torch.int64),
        classes,
        [f"{e[0].parent.name}/{e[0].name}" for e in entries],
    )


def _texture_of(path: Path, shape: str) -> str:
    # The shape class is the folder's name; the file name repeats it with a number, then the
    # texture class with a number, optionally after a prefix ending in '_'.
    pattern = rf"(?:^|_){re.escape(shape)}\d+-(?P<texture>.+?)\d+$"
    match = re.search(pattern, path.stem)
    if match is None:
        raise ValueError(
            f"{path}: the name does not follow <shape><n>-<texture><m> with shape {shape!r} "
            f"(the folder's name), e.g. {shape}7-elephant1{path.suffix}"
        )
    return match.group("texture")


def _load(path: Path, size: int) -> torch.Tensor:
    import torchvision.transforms.v2.functional as F
    from torchvision.io import ImageReadMode, decode_image

    try:
        with warnings.catch_warnings():
            # torchvision 0.29 announces a move of its codecs to TorchCodec; they still work.
            warnings.simplefilter("ignore", DeprecationWarning)
            image = decode_image(str(path), mode=ImageReadMode.RGB)  # (3, h, w) uint8
    except RuntimeError as err:
        raise ValueError(f"{path}: cannot be decoded as an image ({err})") from err
    image = F.resize(image, [size], antialias=True)
    return F.center_crop(image, [size, size])


# --- answers and the measure ----------------------------------------------------------------


def aggregate_imagenet16(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1000) ImageNet logits -> (B, 16) probabilities of model-vs-human's categories (in the
    order of :data:`IMAGENET_16_CATEGORIES`): the mean softmax probability of each category's
    ImageNet indices."""
    if logits.ndim != 2 or logits.shape[1] != 1000:
        raise ValueError(f"expected ImageNet logits (B, 1000), got {tuple(logits.shape)}")
    probs = logits.float().softmax(dim=1)  # (B, 1000)
    columns = [probs[:, list(ids)].mean(dim=1) for ids in IMAGENET_16_CATEGORIES.values()]
    return torch.stack(columns, dim=1)  # (B, 16)


def _class_mapper(model_classes: Sequence[str], set_classes: Sequence[str]):
    """(how, function: model logits (B, K) -> scores over ``set_classes`` (B, len(set)))."""
    lookup = {c: i for i, c in enumerate(model_classes)}
    folded = {c.lower(): i for i, c in enumerate(model_classes)}
    columns = [lookup.get(c, folded.get(c.lower())) for c in set_classes]
    if all(i is not None for i in columns):
        return "direct", lambda logits: logits[:, columns]
    categories = list(IMAGENET_16_CATEGORIES)
    if len(model_classes) == 1000 and all(c.lower() in categories for c in set_classes):
        picked = [categories.index(c.lower()) for c in set_classes]
        return "imagenet16", lambda logits: aggregate_imagenet16(logits)[:, picked]
    unmatched = [c for c, i in zip(set_classes, columns, strict=True) if i is None]
    raise ValueError(
        f"the cue-conflict classes {unmatched} are not among the model's classes "
        f"({', '.join(list(model_classes)[:10])}{', ...' if len(model_classes) > 10 else ''}); "
        "give a folder whose class names are the model's, or a model with the 1000 ImageNet "
        f"classes for model-vs-human's 16 categories ({', '.join(categories)})"
    )


@torch.inference_mode()
def set_predictions(subject: Subject, cue_set: CueConflictSet) -> tuple[str, torch.Tensor]:
    """The mapping used and the model's top-1 answers (N,) as indices into ``cue_set.classes``."""
    how, mapper = _class_mapper(subject.classes, cue_set.classes)
    answers = []
    for start in range(0, len(cue_set), _BATCH):
        batch = cue_set.images[start : start + _BATCH]  # (b, C, H, W) uint8
        logits = subject.model(subject.prepare(batch)).float().cpu()  # (b, K)
        answers.append(mapper(logits).argmax(dim=1))  # (b,)
    return how, torch.cat(answers)


def shape_bias(
    predictions: torch.Tensor | np.ndarray | Sequence[int],
    shape_labels: torch.Tensor | np.ndarray | Sequence[int],
    texture_labels: torch.Tensor | np.ndarray | Sequence[int],
    *,
    classes: Sequence[str] | None = None,
) -> dict:
    """Shape and texture hits over the images whose shape and texture classes differ.

    Returns ``shape_hits``, ``texture_hits``, ``neither`` (conflicting images answered with a
    third class), ``conflicts`` (images counted), ``shape_bias`` = shape / (shape + texture)
    hits (NaN without hits) and ``per_class``: the same by shape class, keyed by its name (from
    ``classes``) or index.
    """
    pred, shape, texture = (
        np.asarray(v, dtype=np.int64).ravel() for v in (predictions, shape_labels, texture_labels)
    )
    if not (len(pred) == len(shape) == len(texture)):
        raise ValueError(
            f"{len(pred)} predictions, {len(shape)} shape labels, {len(texture)} texture labels"
        )
    conflict = shape != texture
    result = _counts(pred[conflict], shape[conflict], texture[conflict])
    per_class = {}
    for k in np.unique(shape[conflict]):
        rows = conflict & (shape == k)
        key = str(classes[k]) if classes is not None else str(int(k))
        per_class[key] = _counts(pred[rows], shape[rows], texture[rows])
    result["per_class"] = per_class
    return result


def _counts(pred: np.ndarray, shape: np.ndarray, texture: np.ndarray) -> dict:
    shape_hits, texture_hits = int((pred == shape).sum()), int((pred == texture).sum())
    hits = shape_hits + texture_hits
    return {
        "shape_hits": shape_hits,
        "texture_hits": texture_hits,
        "neither": int(len(pred) - hits),
        "conflicts": len(pred),
        "shape_bias": shape_hits / hits if hits else math.nan,
    }


# --- every model's answers on one set -------------------------------------------------------


@dataclass
class ModelAnswers:
    """One model's answers on a cue-conflict set, and the measure on them."""

    mapping: str  # "direct" (the set's classes are the model's) or "imagenet16"
    predictions: np.ndarray  # (N,) int64: top-1 answers, indices into the set's classes
    counts: dict[str, Any]  # :func:`shape_bias` of the answers: hits, shape bias, per class


@dataclass
class CueConflictAnswers:
    """A cue-conflict set as arrays, where it came from, and each model's answers on it."""

    images: np.ndarray  # (N, C, H, W) uint8
    shape_labels: np.ndarray  # (N,) int64, indices into ``classes``
    texture_labels: np.ndarray  # (N,) int64, indices into ``classes``
    classes: list[str]
    names: list[str]
    source: dict[str, Any]  # source, folder, dataset; num_images and tile when generated
    answers: list[ModelAnswers]  # one per subject, in order
    batch_size: int
    seed: int
    seconds: float


def cue_conflict_answers(
    subjects: Sequence[Subject],
    images: ImageSet | None,
    *,
    folder: str | Path | None = None,
    num_images: int = 200,
    seed: int = 0,
    progress: bool = True,
) -> CueConflictAnswers:
    """Each model's answers and shape bias on the cue-conflict images of ``folder`` when given,
    otherwise on a set of ``num_images`` generated from ``images`` with ``seed``
    (:func:`make_cue_conflict`). Every model is left as it was found."""
    start = time.perf_counter()
    cue_set, source = _cue_set(subjects, images, folder, num_images, seed)
    answers = []
    with ExitStack() as stack, progress_bar(progress) as bar:
        task = bar.add_task("shape bias", total=len(subjects), rate="") if bar else None
        for subject in subjects:
            stack.enter_context(preserved(subject.model))
            subject.model.eval()
            how, pred = set_predictions(subject, cue_set)  # pred: (N,)
            counts = shape_bias(
                pred, cue_set.shape_labels, cue_set.texture_labels, classes=cue_set.classes
            )
            answers.append(ModelAnswers(how, pred.numpy(), counts))
            if bar is not None:
                bar.update(task, advance=1, rate=subject.label)
    return CueConflictAnswers(
        images=cue_set.images.numpy(),  # (N, C, H, W)
        shape_labels=cue_set.shape_labels.numpy(),  # (N,)
        texture_labels=cue_set.texture_labels.numpy(),  # (N,)
        classes=list(cue_set.classes),
        names=list(cue_set.names),
        source=source,
        answers=answers,
        batch_size=_BATCH,
        seed=seed,
        seconds=time.perf_counter() - start,
    )


def _cue_set(subjects, images, folder, num_images, seed) -> tuple[CueConflictSet, dict]:
    if folder is not None:
        size = max(s.image_size for s in subjects)
        cue_set = read_cue_conflict_folder(folder, image_size=size)
        return cue_set, {"source": "folder", "folder": str(folder), "dataset": None}
    if images is None:
        raise ValueError(
            "shape bias needs images to generate a cue-conflict set from, or a folder in "
            "model-vs-human's layout (folder=...)"
        )
    for s in subjects:
        _class_mapper(s.classes, images.classes)  # a clear error before any work
    cue_set = make_cue_conflict(images, num_images=num_images, seed=seed)
    settings = {
        "source": "generated",
        "folder": None,
        "dataset": images.name,
        "num_images": num_images,
        "tile": tile_side(int(images.images.shape[-1])),
    }
    return cue_set, settings
