"""Batched evaluation of several models in one pass over a dataset (seed 002, done properly).

Seed 002 timed a pretrained model one image at a time (PIL open, preprocess, forward, softmax)
with no warm-up and no synchronisation. Here:

* DataLoader workers decode each image once (:func:`cnnvit.data.decode.decode_rgb`, the one
  decode policy) and cut one uint8 crop per distinct preprocessing among the models: resize the
  shorter side to ``floor(size / crop_pct)`` with the model's interpolation, then a center crop
  of ``size`` (timm's eval transform, read from each model's pretrained config with
  ``timm.data.resolve_data_config``, as timm's ``validate.py`` does). Pixels stay uint8 until
  they reach the device, where ``/255``, mean and std are applied in float32, in the same order
  as ``ToTensor`` + ``Normalize``. Weights that cnnvit wrote carry their own preprocessing
  (:mod:`cnnvit.models.weights`), which replaces timm's: shorter side to their input size,
  center crop, their channels and mean/std, as their run fed them.
* Batches move to the device with ``non_blocking`` (pinned memory on CUDA) and run under bf16
  autocast with channels_last on a CUDA GPU.
* Stage times (decode and crop in the workers; transfer + normalise, forward and postprocess on
  the device, each read after synchronising it) are kept as totals and reported in ms per image.

Outputs per model: ``metrics.json`` and ``predictions.parquet`` (as every evaluation writes),
and ``evaluation.json`` for the whole pass with per-model metrics and stage timing.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm.data
import torch
import torch.nn as nn
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from cnnvit.config import InferenceConfig
from cnnvit.data.decode import ImageDecodeError, decode_rgb
from cnnvit.data.types import DataError, FileSource, SkippedFile, Source
from cnnvit.metrics import write_evaluation
from cnnvit.models.weights import Preprocessing
from cnnvit.runtime import Clock, Runtime, device_name, resolve_runtime
from cnnvit.ui import progress_bar

__all__ = [
    "EvalModel",
    "ModelResult",
    "Preprocess",
    "StageTimer",
    "evaluate_models",
    "evaluation_split",
]

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,
    "box": InterpolationMode.BOX,
    "hamming": InterpolationMode.HAMMING,
}


# ITU-R BT.601 luma, as cnnvit's training pipeline turns RGB into one channel
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Preprocess:
    """One model's eval preprocessing: resize shorter side, center crop, normalise."""

    size: int  # the square crop the model sees
    resize: int  # shorter side before the crop: floor(size / crop_pct)
    interpolation: str
    mean: tuple[float, ...]  # one per channel
    std: tuple[float, ...]
    channels: int = 3  # 1: the RGB crop is turned into luma on the device

    @classmethod
    def from_model(cls, model: nn.Module) -> Preprocess:
        """timm's eval transform for ``model`` (its pretrained config), as ``validate.py``."""
        cfg = timm.data.resolve_data_config({}, model=model)
        size = int(cfg["input_size"][-1])
        if cfg["input_size"][-1] != cfg["input_size"][-2]:
            raise DataError(f"non-square input size {cfg['input_size']} is not supported")
        crop_pct = float(cfg.get("crop_pct") or 1.0)
        interpolation = str(cfg.get("interpolation") or "bilinear")
        if interpolation not in _INTERPOLATION:
            raise DataError(f"unknown interpolation {interpolation!r} in the model's config")
        return cls(
            size=size,
            resize=math.floor(size / crop_pct),
            interpolation=interpolation,
            mean=tuple(float(m) for m in cfg["mean"]),
            std=tuple(float(s) for s in cfg["std"]),
        )

    @classmethod
    def from_weights(cls, prep: Preprocessing) -> Preprocess:
        """The preprocessing a cnnvit weights file records: shorter side to its input size
        (bilinear, antialiased), center crop, its channels and mean/std (its run's own)."""
        return cls(
            size=prep.image_size,
            resize=prep.image_size,
            interpolation="bilinear",
            mean=prep.mean,
            std=prep.std,
            channels=prep.channels,
        )

    def describe(self) -> str:
        mean = ", ".join(f"{m:.3g}" for m in self.mean)
        std = ", ".join(f"{s:.3g}" for s in self.std)
        return (
            f"{self.size} px (shorter side {self.resize}, {self.interpolation}, center crop), "
            f"{self.channels} channels, mean ({mean}), std ({std})"
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Crops (B, 3, S, S) as float in [0, 1] -> the model's input (B, channels, S, S),
        normalised (in place where the channels stay)."""
        if self.channels == 1:
            x = (x * torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)

    def crop(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> (3, size, size) uint8, resized with PIL as timm's transform does."""
        mode = _INTERPOLATION[self.interpolation]
        resized = TF.resize(image, [self.resize], interpolation=mode)
        return TF.pil_to_tensor(TF.center_crop(resized, [self.size, self.size]))


@dataclass
class EvalModel:
    """A model to evaluate, its name in the outputs, its preprocessing and where that came
    from."""

    label: str
    model: nn.Module
    preprocess: Preprocess
    origin: str = "timm's data config"

    @classmethod
    def of(
        cls, label: str, model: nn.Module, weights: Preprocessing | None = None, source: str = ""
    ) -> EvalModel:
        """timm's eval preprocessing for ``model``, or the one its weights file ``source``
        records (``weights``) where it records one."""
        if weights is None:
            return cls(label, model, Preprocess.from_model(model))
        return cls(label, model, Preprocess.from_weights(weights), source or "its weights")


# --- timing ------------------------------------------------------------------------------------


class StageTimer:
    """Wall time per named stage, each clock read after the device has finished its queued
    work (:class:`cnnvit.profile.speed.Clock`, the profiler's clock)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = {}

    @classmethod
    def for_device(cls, device: torch.device) -> StageTimer:
        return cls(Clock.for_device(device))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self.clock.read()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + self.clock.read() - start


# --- the dataset: decode once, one crop per distinct preprocessing ------------------------------


class _MultiCropDataset(torch.utils.data.Dataset):
    """Item i -> (crops, label, error, decode seconds, crop seconds); crops: one (3, S, S) uint8
    tensor per preprocessing. A file that fails to decode gives empty crops and an error."""

    def __init__(self, source: Source, preprocesses: list[Preprocess]) -> None:
        self.source = source
        self.preprocesses = preprocesses

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int, str, float, float]:
        label = int(self.source.labels[i])
        start = time.perf_counter()
        try:
            image = self._image(i)
        except ImageDecodeError as err:
            return [], label, f"{err.path}\t{err.reason}", 0.0, 0.0
        decoded = time.perf_counter()
        crops = [p.crop(image) for p in self.preprocesses]
        return crops, label, "", decoded - start, time.perf_counter() - decoded

    def _image(self, i: int) -> Image.Image:
        if isinstance(self.source, FileSource):
            return decode_rgb(self.source.paths[i])
        pixels = self.source.images[i]  # (H, W, C) uint8
        if pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        return Image.fromarray(pixels)


@dataclass
class _Batch:
    crops: list[torch.Tensor]  # per preprocessing: (B, 3, S, S) uint8
    labels: torch.Tensor  # (B,)
    indices: torch.Tensor  # (B,) positions in the source
    skipped: list[SkippedFile]
    decode_seconds: float
    crop_seconds: float


def _collate(items: list[tuple[int, tuple]]) -> _Batch:
    good = [(i, item) for i, item in items if not item[2]]
    skipped = [SkippedFile(*item[2].rsplit("\t", 1)) for _, item in items if item[2]]
    views = len(good[0][1][0]) if good else 0
    return _Batch(
        crops=[torch.stack([item[0][v] for _, item in good]) for v in range(views)],
        labels=torch.tensor([item[1] for _, item in good], dtype=torch.int64),
        indices=torch.tensor([i for i, _ in good], dtype=torch.int64),
        skipped=skipped,
        decode_seconds=sum(item[3] for _, item in items),
        crop_seconds=sum(item[4] for _, item in items),
    )


class _Indexed(torch.utils.data.Dataset):
    """Adds the item's index, so predictions can name the image they belong to."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, tuple]:
        return i, self.dataset[i]


# --- the pass ----------------------------------------------------------------------------------


@dataclass
class ModelResult:
    label: str
    top1: float
    top5: float
    num_images: int
    # ms per image; "preprocess" is the device part (transfer + normalise) of this model
    ms_per_image: dict[str, float] = field(default_factory=dict)
    preprocess: dict[str, Any] = field(default_factory=dict)


def evaluate_models(
    models: list[EvalModel],
    source: Source,
    classes: list[str],
    out_dir: Path,
    settings: InferenceConfig | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every model on every image of ``source`` in one pass; write the results.

    Returns the content of ``out_dir/evaluation.json``: per model top-1/top-5 and stage timing,
    shared decode/crop timing, wall time, throughput, device, dtype and batch size.

    Raises:
        DataError: a model's class count differs from the dataset's, or no image decodes.
    """
    _check_models(models, classes)
    settings = settings or InferenceConfig()
    runtime = resolve_runtime(settings)
    views = sorted({m.preprocess for m in models}, key=repr)  # distinct crops, cut once each
    for m in models:
        m.model.eval().to(runtime.device)
        if runtime.channels_last:
            m.model.to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(
        _Indexed(_MultiCropDataset(source, views)),
        batch_size=settings.batch_size,
        num_workers=settings.num_workers,
        collate_fn=_collate,
        pin_memory=runtime.device.type == "cuda",
        persistent_workers=False,
    )
    timer = StageTimer.for_device(runtime.device)
    found = _one_pass(models, views, loader, runtime, timer, progress=progress)
    if not found.indices:
        raise DataError(f"none of the {len(source)} images could be decoded")
    n = int(sum(len(i) for i in found.indices))
    positions = torch.cat(found.indices)
    results = [
        _write_model(m, found.outputs[m.label], positions, classes, out_dir, timer) for m in models
    ]
    summary = {
        "num_images": n,
        "skipped_files": [asdict(s) for s in found.skipped],
        "device": device_name(runtime.device),
        "dtype": runtime.precision,
        "channels_last": runtime.channels_last,
        "batch_size": settings.batch_size,
        "num_workers": settings.num_workers,
        "wall_seconds": found.wall,
        "images_per_second": n / found.wall if found.wall > 0 else None,
        # decode and crop run in the workers, in parallel with the device: CPU ms per image
        "decode_ms_per_image": 1000 * found.decode_s / max(n, 1),
        "crop_ms_per_image": 1000 * found.crop_s / max(n, 1),
        "models": [asdict(r) for r in results],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(summary, indent=2))
    return summary


def _check_models(models: list[EvalModel], classes: list[str]) -> None:
    if not models:
        raise ValueError("evaluate_models needs at least one model")
    for m in models:
        if m.model.num_classes != len(classes):
            raise DataError(
                f"{m.label} has {m.model.num_classes} classes but the dataset has {len(classes)}; "
                "evaluate it on data with its own classes (ImageNet models: imagenet-val:PATH)"
            )


@dataclass
class _Pass:
    """What one pass over the data gave: per model its probabilities and labels by batch, the
    positions of the images that decoded, the files that did not, and the time spent."""

    outputs: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]]
    indices: list[torch.Tensor] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    decode_s: float = 0.0
    crop_s: float = 0.0
    wall: float = 0.0


def _one_pass(
    models: list[EvalModel],
    views: list[Preprocess],
    loader: torch.utils.data.DataLoader,
    runtime: Runtime,
    timer: StageTimer,
    *,
    progress: bool,
) -> _Pass:
    """Every batch through every model, each on the crop of its own preprocessing."""
    view_of = {m.label: views.index(m.preprocess) for m in models}
    found = _Pass(outputs={m.label: ([], []) for m in models})
    start = time.perf_counter()
    with progress_bar(progress) as bar, torch.inference_mode():
        task = bar.add_task("evaluating", total=len(loader.dataset)) if bar else None
        for batch in loader:
            found.decode_s += batch.decode_seconds
            found.crop_s += batch.crop_seconds
            found.skipped += batch.skipped
            if len(batch.labels):
                found.indices.append(batch.indices)
                for m in models:
                    probs = _run_model(m, batch.crops[view_of[m.label]], runtime, timer)
                    found.outputs[m.label][0].append(probs)
                    found.outputs[m.label][1].append(batch.labels)
            if bar is not None:
                bar.advance(task, len(batch.labels) + len(batch.skipped))
    timer.clock.synchronize()
    found.wall = time.perf_counter() - start
    return found


def _run_model(
    m: EvalModel, crops: torch.Tensor, runtime: Runtime, timer: StageTimer
) -> torch.Tensor:
    """(B, 3, S, S) uint8 crops -> (B, C) float32 probabilities on the CPU, timed per stage."""
    p, device = m.preprocess, runtime.device
    with timer.stage(f"{m.label}/preprocess"):
        x = p.normalize(crops.to(device, non_blocking=True).float().div_(255))
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    with timer.stage(f"{m.label}/forward"), runtime.autocast_context():
        logits = m.model(x)
    with timer.stage(f"{m.label}/postprocess"):
        probs = torch.softmax(logits.float(), dim=1).cpu()
    return probs


def _write_model(
    m: EvalModel,
    outputs: tuple[list[torch.Tensor], list[torch.Tensor]],
    positions: torch.Tensor,
    classes: list[str],
    out_dir: Path,
    timer: StageTimer,
) -> ModelResult:
    probs = torch.cat(outputs[0])  # (N, C)
    labels = torch.cat(outputs[1])  # (N,)
    n = len(labels)
    folder = out_dir / _folder_name(m.label)
    metrics = write_evaluation(folder, probs.numpy(), labels.numpy(), classes, positions.numpy())
    stages = {
        stage: 1000 * timer.seconds.get(f"{m.label}/{stage}", 0.0) / max(n, 1)
        for stage in ("preprocess", "forward", "postprocess")
    }
    return ModelResult(
        label=m.label,
        top1=float(metrics["top1"]),
        top5=float(metrics["top5"]),
        num_images=n,
        ms_per_image=stages,
        preprocess={**asdict(m.preprocess), "from": m.origin},
    )


def _folder_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", label)


def evaluation_split(splits: Any) -> Source:
    """The split to evaluate: the held-out one where the dataset has it, else its only split
    (``imagenet-val:PATH`` holds the 50,000 test images as its single split)."""
    return splits.val if splits.val is not None else splits.train
