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

Numbers only: :func:`measure_robustness` returns the accuracies (and the example images as
arrays); :mod:`cnnvit.analyze.analyses.robustness` writes, draws and reports them.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from cnnvit.analyze.hooks import preserved
from cnnvit.analyze.images import ImageSet
from cnnvit.analyze.subject import Subject
from cnnvit.ui import progress_bar

__all__ = [
    "CORRUPTIONS",
    "PARAMETERS",
    "SEVERITIES",
    "RobustnessRun",
    "blur_sigmas",
    "corrupt",
    "corruption_examples",
    "measure_robustness",
    "parameters_at",
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


def parameters_at(names: Sequence[str], side: int) -> dict[str, list[float]]:
    """Each corruption's severity 1..5 parameters as used on images of side ``side`` (blur's
    sigmas scaled to it, see :func:`blur_sigmas`)."""
    parameters = {name: list(PARAMETERS[name]) for name in names}
    if "gaussian_blur" in parameters:
        parameters["gaussian_blur"] = [round(v, 4) for v in blur_sigmas(side)]
    return parameters


# --- accuracy under every corruption -------------------------------------------------------


@dataclass
class RobustnessRun:
    """What :func:`measure_robustness` found: top-1 accuracies, and the example images."""

    corruptions: list[str]
    severities: list[int]  # sorted, without 0
    # label -> {(corruption, severity): top-1 accuracy}; the clean images as ("clean", 0)
    accuracy: dict[str, dict[tuple[str, int], float]]
    num_images: int
    image_size: int
    parameters: dict[str, list[float]]  # see parameters_at
    device: str  # where the images were corrupted
    examples: np.ndarray  # (corruptions, 1 + severities, C, H, W) uint8: see corruption_examples
    seconds: float  # the accuracies' time (not the examples')


def measure_robustness(
    subjects: Sequence[Subject],
    images: ImageSet,
    *,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> RobustnessRun:
    """Top-1 accuracy of each model on ``images`` clean and under each corruption (None: all)
    x severity; each batch is corrupted once and every model sees the same pixels. The noise
    generator is seeded with ``seed`` for each (corruption, severity)."""
    names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    sevs = sorted({int(s) for s in severities})
    _check_inputs(subjects, images, names, sevs, batch_size)
    device = _common_device(subjects)
    start = time.perf_counter()
    n = len(images)
    accuracy: dict[str, dict[tuple[str, int], float]] = {s.label: {} for s in subjects}
    conditions = [("clean", 0)] + [(name, sev) for name in names for sev in sevs]
    with ExitStack() as stack, torch.inference_mode(), progress_bar(progress) as bar:
        for subject in subjects:
            stack.enter_context(preserved(subject.model))
            subject.model.eval()
        task = bar.add_task("robustness", total=len(conditions), rate="") if bar else None
        for name, severity in conditions:
            hits = _condition_hits(subjects, images, name, severity, batch_size, seed, device)
            for label, count in hits.items():
                accuracy[label][(name, severity)] = count / n
            if bar is not None:
                bar.update(task, advance=1, rate=f"{name} {severity}")
    seconds = time.perf_counter() - start
    side = int(images.images.shape[-1])
    return RobustnessRun(
        corruptions=names,
        severities=sevs,
        accuracy=accuracy,
        num_images=n,
        image_size=side,
        parameters=parameters_at(names, side),
        device=str(device),
        examples=corruption_examples(images, names, sevs, device, seed),
        seconds=seconds,
    )


def _check_inputs(subjects, images: ImageSet, names, sevs, batch_size: int) -> None:
    if not subjects:
        raise ValueError("the robustness analysis needs at least one model")
    if len(images) == 0:
        raise ValueError("the robustness analysis needs at least one image")
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


def corruption_examples(
    images: ImageSet,
    names: Sequence[str],
    sevs: Sequence[int],
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> np.ndarray:
    """The set's first image under each corruption at severity 0 (clean) and each of ``sevs``:
    uint8 (len(names), 1 + len(sevs), C, H, W), each drawn with a generator seeded ``seed``."""
    x = images.images[:1].to(device)  # (1, C, H, W)
    rows = []
    for name in names:
        row = []
        for severity in [0, *sevs]:
            generator = torch.Generator(device=device).manual_seed(seed)
            row.append(corrupt(x, name, severity, generator=generator)[0].cpu())  # (C, H, W)
        rows.append(torch.stack(row))  # (1 + S, C, H, W)
    return torch.stack(rows).numpy()  # (K, 1 + S, C, H, W)
