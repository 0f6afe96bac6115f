"""Accuracy under common corruptions (Hendrycks & Dietterich 2019, ImageNet-C; the CNN/ViT
comparison of Paul & Chen 2022): Gaussian noise, Gaussian blur, contrast, brightness, JPEG,
pixelation and rotation, each at severities 1..5.

Corruptions act on uint8 (B, C, H, W) batches, on whatever device the batch is on, *before*
``subject.prepare``: each batch is corrupted once and every model sees the same pixels. Severity
0 is the clean image, exactly. The parameters (``PARAMETERS``) follow ImageNet-C's
``make_imagenet_c.py`` where it defines the corruption:

=================  ==========================================  ==============================
corruption         parameter, severities 1..5                  source
=================  ==========================================  ==============================
gaussian_noise     std in [0, 1] units: .08 .12 .18 .26 .38    ImageNet-C
gaussian_blur      sigma (px) at the table's native size,      ImageNet-C (224 px): 1 2 3 4 6;
                   scaled by image side / native side; the     Tiny-ImageNet-C (64 px):
                   table of the nearest native size (log       .5 .75 1 1.25 1.5; CIFAR-10-C
                   scale)                                      (32 px): .4 .6 .7 .8 1
contrast           blend factor to the mean: .4 .3 .2 .1 .05   ImageNet-C
brightness         added to HSV value: .1 .2 .3 .4 .5          ImageNet-C
jpeg               quality: 25 18 15 10 7                      ImageNet-C
pixelate           side factor: .6 .5 .4 .3 .25                ImageNet-C
rotation           degrees, anticlockwise: 6 12 18 24 30       ours (ImageNet-C has none)
=================  ==========================================  ==============================

Blur is the only parameter in pixels. Scaling ImageNet-C's sigmas linearly down to 28 px would
make severities 1-2 invisible (sigma 0.125 px), and the authors themselves published milder
relative blurs for small images, so the table nearest in size is scaled instead: at 28 px the
sigmas are 0.35..0.875 px. Noise is drawn from a seeded ``torch.Generator`` on the batch's
device; the study re-seeds it for each (corruption, severity), so the same normal draw is scaled
by each severity's std and the noise grows monotonically.

Differences from ImageNet-C's NumPy/PIL code, all from using torchvision's batched ops:
contrast blends towards the per-image grey mean (``adjust_contrast``) rather than the
per-channel mean; pixelation shrinks with antialiased bilinear resizing (close to PIL's box
filter) and enlarges with exact nearest-neighbour; JPEG round-trips through ``torchvision.io``
on the CPU; rotation is bilinear with the uncovered corners filled black.
"""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import matplotlib as mpl
import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from matplotlib.figure import Figure
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from cnnvit.analyze.hooks import preserved
from cnnvit.analyze.images import ImageSet
from cnnvit.analyze.subject import Subject
from cnnvit.plotting import STYLE

__all__ = [
    "CORRUPTIONS",
    "PARAMETERS",
    "SEVERITIES",
    "blur_sigmas",
    "corrupt",
    "run_robustness",
]

SEVERITIES = (1, 2, 3, 4, 5)

# Severity 1..5 parameters (see the module docstring for units and sources).
PARAMETERS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "gaussian_blur": (1.0, 2.0, 3.0, 4.0, 6.0),  # ImageNet-C at 224 px; see blur_sigmas
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "jpeg": (25, 18, 15, 10, 7),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "rotation": (6.0, 12.0, 18.0, 24.0, 30.0),
}

# Hendrycks' published Gaussian-blur sigmas by the side they were made for: CIFAR-10-C,
# Tiny-ImageNet-C, ImageNet-C (hendrycks/robustness, ImageNet-C/create_c/make_*_c.py).
_BLUR_TABLES: dict[int, tuple[float, ...]] = {
    32: (0.4, 0.6, 0.7, 0.8, 1.0),
    64: (0.5, 0.75, 1.0, 1.25, 1.5),
    224: PARAMETERS["gaussian_blur"],
}

Corruption = Callable[[torch.Tensor, int, torch.Generator | None], torch.Tensor]


def blur_sigmas(side: int) -> tuple[float, ...]:
    """Gaussian-blur sigmas (px) for severities 1..5 at image side ``side``: the published table
    whose native side is nearest in log scale, scaled by side / native."""
    native = min(_BLUR_TABLES, key=lambda s: abs(math.log(side / s)))
    return tuple(c * side / native for c in _BLUR_TABLES[native])


def _param(name: str, severity: int) -> float:
    return PARAMETERS[name][severity - 1]


def _gaussian_noise(x: torch.Tensor, severity: int, generator: torch.Generator | None):
    std = _param("gaussian_noise", severity) * 255.0
    if generator is None:  # deterministic by default: a call without a generator repeats
        generator = torch.Generator(device=x.device).manual_seed(0)
    noise = torch.randn(x.shape, generator=generator, device=x.device)  # (B, C, H, W)
    return (x.float() + std * noise).round().clamp(0, 255).to(torch.uint8)


def _gaussian_blur(x: torch.Tensor, severity: int, generator: torch.Generator | None):
    side = min(x.shape[-2:])
    sigma = blur_sigmas(side)[severity - 1]
    # skimage.filters.gaussian (ImageNet-C) truncates at 4 sigma; reflect padding needs the
    # radius below the side.
    radius = max(1, min(math.ceil(4 * sigma), side - 1))
    return F.gaussian_blur(x, [2 * radius + 1] * 2, [sigma, sigma])


def _contrast(x: torch.Tensor, severity: int, generator: torch.Generator | None):
    return F.adjust_contrast(x, _param("contrast", severity))


def _brightness(x: torch.Tensor, severity: int, generator: torch.Generator | None):
    # ImageNet-C adds c to V in HSV. With hue and saturation fixed, RGB is proportional to V, so
    # the result is x * V'/V (grey V' where V = 0); torchvision's adjust_brightness multiplies
    # instead, which leaves black black.
    c = _param("brightness", severity)
    rgb = x.float() / 255.0  # (B, C, H, W)
    value = rgb.amax(dim=1, keepdim=True)  # (B, 1, H, W)
    lifted = (value + c).clamp(max=1.0)  # (B, 1, H, W)
    scaled = torch.where(value > 0, rgb * lifted / value.clamp(min=1e-12), lifted)
    return (scaled * 255.0).round().clamp(0, 255).to(torch.uint8)


def _jpeg(x: torch.Tensor, severity: int, generator: torch.Generator | None):
    # The codec runs on the CPU (torchvision's GPU path needs nvjpeg); the batch goes back to
    # its device. encode/decode take lists, so a batch is one call each.
    quality = int(_param("jpeg", severity))
    with warnings.catch_warnings():
        # torchvision 0.29 announces a move of its codecs to TorchCodec; they still work here.
        warnings.simplefilter("ignore", DeprecationWarning)
        encoded = encode_jpeg(list(x.cpu()), quality=quality)
        decoded = decode_jpeg(encoded, mode=ImageReadMode.UNCHANGED)
    return torch.stack(decoded).to(x.device)  # (B, C, H, W)


def _pixelate(x: torch.Tensor, severity: int, generator: torch.Generator | None):
    h, w = x.shape[-2:]
    factor = _param("pixelate", severity)
    small = F.resize(x, [max(1, int(h * factor)), max(1, int(w * factor))], antialias=True)
    # NEAREST_EXACT centres the blocks; torch's legacy NEAREST shifts the image by up to half a
    # block, which adds a displacement that does not grow with severity.
    return F.resize(small, [h, w], interpolation=F.InterpolationMode.NEAREST_EXACT)


def _rotation(x: torch.Tensor, severity: int, generator: torch.Generator | None):
    angle = _param("rotation", severity)
    return F.rotate(x, angle, interpolation=F.InterpolationMode.BILINEAR, fill=[0.0])


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": _gaussian_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "jpeg": _jpeg,
    "pixelate": _pixelate,
    "rotation": _rotation,
}


def corrupt(
    images: torch.Tensor,
    name: str,
    severity: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``images`` uint8 (B, C, H, W) (1 or 3 channels, any device) under corruption ``name`` at
    ``severity`` 0..5, as a new uint8 tensor of the same shape on the same device. Severity 0 is
    an exact copy. ``generator`` (on the images' device) seeds the noise; without one the noise
    is the same on every call (a generator seeded 0)."""
    _check_corruption(name)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(
            f"corrupt takes uint8 images (B, C, H, W), got {images.dtype} {tuple(images.shape)}; "
            "corrupt the raw images before subject.prepare"
        )
    if severity not in range(0, 6):
        raise ValueError(f"severity must be 0 (clean) to 5, got {severity}")
    if severity == 0:
        return images.clone()
    return CORRUPTIONS[name](images, severity, generator)


def _check_corruption(name: str) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")


# --- the analysis --------------------------------------------------------------------------


def run_robustness(
    subjects: Sequence[Subject],
    images: ImageSet,
    out_dir: Path,
    *,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Top-1 accuracy of each model on ``images`` clean and under each corruption x severity.

    Writes ``robustness.json`` (returned), ``robustness.csv`` (one row per model, corruption,
    severity; the clean accuracy as corruption ``clean``, severity 0), ``robustness.png``
    (accuracy against severity, a panel per corruption) and ``corruption_examples.png``.
    """
    from cnnvit.ui import progress_bar

    names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    sevs = sorted({int(s) for s in severities})
    _check_inputs(subjects, images, names, sevs, batch_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _common_device(subjects)
    start = time.perf_counter()
    correct = {s.label: {} for s in subjects}  # label -> {(corruption, severity): hits}
    conditions = [("clean", 0)] + [(n, s) for n in names for s in sevs]
    with ExitStack() as stack, torch.inference_mode(), progress_bar(progress) as bar:
        for subject in subjects:
            stack.enter_context(preserved(subject.model))
            subject.model.eval()
        task = bar.add_task("robustness", total=len(conditions), rate="") if bar else None
        for name, severity in conditions:
            hits = _condition_hits(subjects, images, name, severity, batch_size, seed, device)
            for label, count in hits.items():
                correct[label][(name, severity)] = count
            if bar is not None:
                bar.update(task, advance=1, rate=f"{name} {severity}")
    result = _result(subjects, images, names, sevs, correct, batch_size, seed, device)
    result["seconds"] = round(time.perf_counter() - start, 3)
    _write(result, images, names, sevs, out_dir, device, seed)
    return result


def _check_inputs(subjects, images: ImageSet, names, sevs, batch_size: int) -> None:
    if not subjects:
        raise ValueError("run_robustness needs at least one subject")
    if len(images) == 0:
        raise ValueError("run_robustness needs at least one image")
    if not names:
        raise ValueError(
            f"give at least one corruption ({', '.join(CORRUPTIONS)}), or None for all"
        )
    for name in names:
        _check_corruption(name)
    bad = [s for s in sevs if s not in SEVERITIES]
    if bad:
        raise ValueError(f"severities must be in 1..5 (0, the clean image, is always run): {bad}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    labels = [s.label for s in subjects]
    if len(set(labels)) != len(labels):
        raise ValueError(f"subject labels must be unique, got {labels}")
    for s in subjects:
        if list(s.classes) != list(images.classes):
            raise ValueError(
                f"{s.label} predicts classes {s.classes[:5]}... but the images are labelled "
                f"{images.classes[:5]}...; give images of the dataset the model was trained on"
            )


def _common_device(subjects: Sequence[Subject]) -> torch.device:
    # Corrupt once on the models' device when they share one; otherwise on the CPU (a CPU and a
    # CUDA generator draw different noise, and every model must see the same pixels).
    devices = {torch.device(s.device) for s in subjects}
    return devices.pop() if len(devices) == 1 else torch.device("cpu")


def _condition_hits(
    subjects: Sequence[Subject],
    images: ImageSet,
    name: str,
    severity: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> dict[str, int]:
    """Correct top-1 answers of each model on the whole set under one (corruption, severity);
    each batch is corrupted once and shown to every model."""
    generator = torch.Generator(device=device).manual_seed(seed)
    hits = dict.fromkeys((s.label for s in subjects), 0)
    for batch, labels in images.batches(batch_size):
        x = batch.to(device)  # (b, C, H, W) uint8
        if name != "clean":
            x = corrupt(x, name, severity, generator=generator)
        for s in subjects:
            pred = s.model(s.prepare(x)).argmax(dim=1).cpu()  # (b,)
            hits[s.label] += int((pred == labels).sum())
    return hits


def _result(subjects, images: ImageSet, names, sevs, correct, batch_size, seed, device) -> dict:
    n = len(images)
    models = []
    for s in subjects:
        hits = correct[s.label]
        clean = hits[("clean", 0)] / n
        accuracy = {name: {str(sev): hits[(name, sev)] / n for sev in sevs} for name in names}
        by_corruption = {name: float(np.mean(list(accuracy[name].values()))) for name in names}
        mean = float(np.mean(list(by_corruption.values())))
        models.append(
            {
                "label": s.label,
                "family": s.family,
                "clean_accuracy": clean,
                "accuracy": accuracy,
                "mean_by_corruption": by_corruption,
                "mean_corruption_accuracy": mean,
                # None when undefined: a model with no clean hits.
                "relative_accuracy": mean / clean if clean > 0 else None,
                "device": str(s.device),
            }
        )
    side = int(images.images.shape[-1])
    parameters = {name: list(PARAMETERS[name]) for name in names}
    if "gaussian_blur" in parameters:
        parameters["gaussian_blur"] = [round(v, 4) for v in blur_sigmas(side)]
    return {
        "analysis": "robustness",
        "settings": {
            "dataset": images.name,
            "images": n,
            "image_size": side,
            "corruptions": names,
            "severities": sevs,
            "parameters": parameters,
            "batch_size": batch_size,
            "seed": seed,
            "corruption_device": str(device),
        },
        "models": models,
        "figures": {"accuracy": "robustness.png", "examples": "corruption_examples.png"},
        "table": "robustness.csv",
    }


# --- files ---------------------------------------------------------------------------------


def _write(result: dict, images: ImageSet, names, sevs, out_dir: Path, device, seed) -> None:
    from cnnvit.plotting import save_png

    (out_dir / "robustness.json").write_text(json.dumps(result, indent=2, allow_nan=False))
    _write_csv(result, out_dir / "robustness.csv")
    save_png(accuracy_figure(result), out_dir / "robustness.png")
    save_png(
        examples_figure(images, names, sevs, device, seed), out_dir / "corruption_examples.png"
    )


def _write_csv(result: dict, path: Path) -> None:
    n = result["settings"]["images"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "corruption", "severity", "accuracy", "correct", "images"])
        for m in result["models"]:
            rows = [("clean", 0, m["clean_accuracy"])]
            rows += [
                (name, int(sev), acc)
                for name, by_sev in m["accuracy"].items()
                for sev, acc in by_sev.items()
            ]
            for name, sev, acc in rows:
                writer.writerow([m["label"], name, sev, f"{acc:.6f}", round(acc * n), n])


def accuracy_figure(result: dict) -> Figure:
    """A panel per corruption: accuracy against severity (0 = clean), a line per model."""
    names = result["settings"]["corruptions"]
    sevs = result["settings"]["severities"]
    with mpl.rc_context(STYLE):
        return _accuracy_figure(result, names, sevs)


def _accuracy_figure(result: dict, names: list[str], sevs: list[int]) -> Figure:
    from cnnvit.plotting import model_colors, plain

    colors = model_colors([m["label"] for m in result["models"]])
    cols = min(4, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(3.2 * cols, 2.7 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    for ax, name in zip(axes, names, strict=False):
        for m in result["models"]:
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
    handles = [_legend_line(colors[m["label"]], plain(m["label"])) for m in result["models"]]
    fig.legend(handles=handles, loc="outside upper center", ncols=max(1, len(handles)))
    return fig


def _legend_line(color: str, label: str):
    from matplotlib.lines import Line2D

    return Line2D([], [], color=color, marker="o", ms=3.5, label=label)


def examples_figure(
    images: ImageSet, names: Sequence[str], sevs: Sequence[int], device, seed: int
) -> Figure:
    """The set's first image under each corruption (rows) at severity 0..5 (columns)."""
    x = images.images[:1].to(device)  # (1, C, H, W)
    columns = [0, *sevs]
    fig = Figure(figsize=(1.3 * len(columns) + 1.2, 1.35 * len(names) + 0.4), layout="constrained")
    axes = fig.subplots(len(names), len(columns), squeeze=False)
    for r, name in enumerate(names):
        for c, severity in enumerate(columns):
            generator = torch.Generator(device=device).manual_seed(seed)
            shown = corrupt(x, name, severity, generator=generator)[0].cpu()  # (C, H, W)
            ax = axes[r, c]
            ax.imshow(_display(shown), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"severity {severity}" if severity else "clean", fontsize=9)
            if c == 0:
                ax.set_ylabel(name.replace("_", " "), fontsize=9)
    return fig


def _display(image: torch.Tensor) -> np.ndarray:
    """uint8 (C, H, W) -> (H, W) grey or (H, W, 3) RGB for imshow."""
    array = image.numpy()
    return array[0] if array.shape[0] == 1 else np.transpose(array[:3], (1, 2, 0))
