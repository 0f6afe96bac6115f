"""A model to analyse, with what it needs to see an image as it was trained to: its input size,
channels and normalisation, its class names and family.

From a run folder (:func:`subject_from_run`: the run's config, latest checkpoint, EMA weights if
it kept them) or from a model name with weights (:func:`subject_from_name`: the preprocessing and
class names a cnnvit weights file records, :mod:`cnnvit.models.weights`; for other weights timm's
pretrained config gives size and normalisation, as ``validate.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from cnnvit.config import read_run_config
from cnnvit.data.augment import BatchTransform
from cnnvit.data.pipeline import normalization, rebuild_splits
from cnnvit.folders import RunFolder
from cnnvit.models import ModelError, create_model, model_family
from cnnvit.models.build import build_model
from cnnvit.models.weights import check_class_names, read_preprocessing
from cnnvit.runtime import resolve_device
from cnnvit.train.checkpoint import evaluated_weights, load_checkpoint

__all__ = ["Subject", "subject_from_name", "subject_from_run"]


@dataclass
class Subject:
    """A model in eval mode on ``device``, and how to feed it.

    ``prepare`` turns uint8 images (B, C, H, W), any size, 1 or 3 channels, into the normalised
    float batch (B, channels, image_size, image_size) the model takes.
    """

    label: str
    model: nn.Module
    family: str  # 'cnn' | 'vit' | 'hybrid'
    classes: list[str]
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    run_dir: Path | None = None
    preprocessing_from: str = ""  # where size, channels and mean/std came from

    @property
    def transform(self) -> BatchTransform:
        return BatchTransform(self.image_size, self.channels, self.mean, self.std)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float32 (B, channels, size, size) on the device."""
        return self.transform(images.to(self.device))

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """A prepared batch back to [0, 1] RGB (B, 3, size, size), for overlays."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        rgb = (x * std + mean).clamp(0, 1)
        return rgb.expand(-1, 3, -1, -1) if rgb.shape[1] == 1 else rgb

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> logits (B, num_classes), float32, on the CPU."""
        return self.model(self.prepare(images)).float().cpu()


def subject_from_run(
    run_dir: str | Path, *, device: str | torch.device = "cpu", label: str | None = None
) -> Subject:
    """The trained model of a run folder (its latest checkpoint; the EMA if it kept one)."""
    folder = RunFolder(run_dir)
    folder.require(checkpoint=True)
    cfg = read_run_config(folder.config)
    info = folder.read_results() or {}
    ckpt = load_checkpoint(folder.path)
    assert ckpt is not None  # require() checked it
    dev = resolve_device(device)
    splits = rebuild_splits(cfg.data)
    mean, std = normalization(cfg.data, splits, cfg.data.channels)
    image_size = int(info["image_size"])
    model = build_model(
        cfg.model.model_copy(update={"pretrained": False, "weights": None}),
        num_classes=len(splits.classes),
        in_chans=cfg.data.channels,
        img_size=image_size,
    )
    model.load_state_dict(evaluated_weights(ckpt))
    model.eval().to(dev)
    return Subject(
        label=label or cfg.model.name,
        model=model,
        family=model_family(model),
        classes=[str(c) for c in splits.classes],
        image_size=image_size,
        channels=cfg.data.channels,
        mean=tuple(mean),
        std=tuple(std),
        device=dev,
        run_dir=folder.path,
        preprocessing_from=f"the run's config ({folder.config})",
    )


def subject_from_name(
    name: str,
    *,
    classes: list[str] | None,
    weights: str | Path | None = None,
    pretrained: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
    device: str | torch.device = "cpu",
    label: str | None = None,
    **model_kwargs: object,
) -> Subject:
    """A timm model or built-in with ``weights`` (a file or a Hugging Face ViT folder), the
    published weights (``pretrained``), or neither (random: only useful in tests);
    ``model_kwargs`` go to the constructor (``reg_tokens=4``).

    A weights file that cnnvit wrote gives the size, channels, mean/std and class names it was
    trained with; ``image_size`` overrides its size, ``classes`` must be its classes in its
    order (None: take them from the file), ``channels`` must be its channels. For other weights
    size and normalisation come from timm's data config for the model, as ``validate.py``, and
    ``classes`` are needed.

    Raises:
        UserError: ``classes`` or ``channels`` differ from what the weights file records, or
            no classes are given for weights that record none.
    """
    prep = read_preprocessing(weights) if weights is not None else None
    if prep is not None:
        if channels is not None and channels != prep.channels:
            raise ModelError(f"{weights} takes {prep.channels}-channel input, not {channels}")
        channels = prep.channels
        if classes is None and prep.class_names is not None:
            classes = list(prep.class_names)
        check_class_names(prep, classes or [], source=str(weights), data="the data")
    if classes is None:
        raise ModelError(f"{name}: give its classes (its weights record none)")
    channels = channels or 3
    size = image_size or (prep.image_size if prep is not None else None)
    model = create_model(
        name,
        num_classes=len(classes),
        in_chans=channels,
        img_size=size,
        pretrained=pretrained and weights is None,
        weights=weights,
        **model_kwargs,
    )
    if prep is not None:
        mean, std, origin = prep.mean, prep.std, str(weights)
    else:
        cfg = timm.data.resolve_data_config({}, model=model)
        mean, std = tuple(float(m) for m in cfg["mean"]), tuple(float(s) for s in cfg["std"])
        if channels == 1 and len(mean) == 3:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        size, origin = size or int(cfg["input_size"][-1]), "timm's data config"
    if image_size:
        origin += f" (size: {image_size}, as given)"
    dev = resolve_device(device)
    model.eval().to(dev)
    return Subject(
        label=label or name,
        model=model,
        family=model_family(model),
        classes=list(classes),
        image_size=size,
        channels=channels,
        mean=mean,
        std=std,
        device=dev,
        preprocessing_from=origin,
    )
