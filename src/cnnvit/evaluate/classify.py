"""``cnnvit classify``: the top-5 of each model for a few images, with honest forward times
(seed 002's first tool: it timed one cold forward pass without synchronising)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.data import ImageNetInfo

from cnnvit.data.decode import decode_rgb
from cnnvit.evaluate.inference import EvalModel, StageTimer
from cnnvit.runtime import resolve_device

__all__ = ["Prediction", "class_names_for", "classify_images"]


@dataclass
class Prediction:
    image: str
    model: str
    labels: list[str]  # top-5, most probable first
    probs: list[float]
    forward_ms: float  # median over repeats, after warm-up, synchronised
    forward_ms_spread: tuple[float, float]  # min, max over the repeats


def class_names_for(num_classes: int, given: list[str] | None = None) -> list[str]:
    """``given`` names, ImageNet-1k's when the model has 1000 classes, else ``class 0``, ..."""
    if given is not None:
        if len(given) != num_classes:
            raise ValueError(f"{len(given)} class names for a model with {num_classes} classes")
        return given
    if num_classes == 1000:
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [f"class {i}" for i in range(num_classes)]


def classify_images(
    paths: list[Path],
    models: list[EvalModel],
    class_names: dict[str, list[str]],
    *,
    device: str = "auto",
    warmup: int = 2,
    repeats: int = 5,
) -> list[Prediction]:
    """Each image through each model (its own preprocessing: what its cnnvit weights record,
    else timm's eval transform): top-5 and forward time.

    ``class_names`` maps a model's label to its class names. Forward times are per image at
    batch 1: ``warmup`` untimed passes, then the median of ``repeats`` passes, the device
    synchronised around each.
    """
    dev = resolve_device(device)
    images = [(str(p), decode_rgb(p)) for p in paths]
    out = []
    for m in models:
        m.model.eval().to(dev)
        for name, image in images:
            x = m.preprocess.normalize(m.preprocess.crop(image)[None].to(dev).float().div_(255))
            times = _forward_times(m.model, x, dev, warmup, repeats)
            with torch.inference_mode():
                probs = torch.softmax(m.model(x).float(), dim=1)[0].cpu()  # (C,)
            top = torch.topk(probs, k=min(5, len(probs)))
            names = class_names[m.label]
            out.append(
                Prediction(
                    image=name,
                    model=m.label,
                    labels=[names[i] for i in top.indices.tolist()],
                    probs=top.values.tolist(),
                    forward_ms=statistics.median(times),
                    forward_ms_spread=(min(times), max(times)),
                )
            )
    return out


def _forward_times(
    model: torch.nn.Module, x: torch.Tensor, device: torch.device, warmup: int, repeats: int
) -> list[float]:
    timer = StageTimer.for_device(device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            timer.seconds.clear()
            with timer.stage("forward"):
                model(x)
            if i >= warmup:
                times.append(1000 * timer.seconds["forward"])
    return times
