"""Named training recipes that reproduce each seed study's setup.

A preset is a partial config (``data``, ``optim``, ``train`` sections) plus per-family parts for
seeds that trained the CNN and the ViT differently (seed 001: Adam 1e-3 for the ResNet, AdamW
1e-4 for the ViT). It sits *under* what the user writes: built-in defaults < preset < the
preset's family part < the config file < ``--set``. So ``preset: seed004`` plus
``train: {epochs: 50}`` is seed 004's recipe for 50 epochs.

Use it as ``preset: NAME`` at the top of a run config (``cnnvit train --set preset=seed004``) or
as ``recipe: {preset: NAME}`` in a study. ``cnnvit recipes`` lists them. This module is the data;
:func:`cnnvit.config.apply_preset` puts a preset under a config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PRESETS", "Preset", "deep_merge", "describe_presets"]

Section = dict[str, Any]


@dataclass(frozen=True)
class Preset:
    name: str
    reproduces: str  # which seed and which of its experiments
    settings: Section  # {"data": {...}, "optim": {...}, "train": {...}}
    by_family: dict[str, Section] = field(default_factory=dict)  # "cnn"/"vit"/"hybrid" -> ...
    not_covered: str = ""  # parts of the seed's recipe that cnnvit does not reproduce

    def layer(self, family: str | None) -> Section:
        """The preset's settings for a model of ``family`` (None: the common part only)."""
        return deep_merge(self.settings, self.by_family.get(family or "", {}))


_NO_SCHEDULE = {"schedule": "constant", "warmup_epochs": 0.0}
_FLIP_ROTATE_224 = {
    "image_size": 224,
    "augment": {"crop_padding": 0, "hflip": True, "rotation_degrees": 10.0},
}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="seed000",
            reproduces="seed 000 §3: fine-tuning ResNet-101 / ViT-B/16 on CIFAR-10 cat vs dog",
            settings={
                "data": {**_FLIP_ROTATE_224, "normalize": "dataset"},
                "optim": {
                    "name": "sgd",
                    "lr": 0.01,
                    "momentum": 0.9,
                    "nesterov": False,
                    "weight_decay": 0.0,
                    **_NO_SCHEDULE,
                },
                "train": {"batch_size": 64, "epochs": 10},
            },
        ),
        Preset(
            name="seed001",
            reproduces="seed 001: transfer learning ResNet-18 vs ViT on Kaggle HAR (15 classes)",
            settings={
                # The seed says only "normalized"; for ImageNet-pretrained models that means
                # ImageNet's mean/std (torchvision's and timm's convention). Rotation range is
                # not given either; 10° as in seed 000.
                "data": {**_FLIP_ROTATE_224, "normalize": "imagenet"},
                "optim": dict(_NO_SCHEDULE),
                "train": {"batch_size": 32, "epochs": 5},
            },
            by_family={
                # torch's defaults for what the seed left unsaid: Adam without decay, AdamW 0.01
                "cnn": {"optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}},
                "vit": {"optim": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.01}},
                "hybrid": {"optim": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.01}},
            },
        ),
        Preset(
            name="seed003",
            reproduces="seed 003: GResNet's recipe (torchvision's 2021 ResNet-50 recipe)",
            settings={
                "optim": {
                    # torchvision's recipe: lr 0.5 at batch 1024 -> 0.125 at 256 (linear scaling)
                    "name": "sgd",
                    "lr": 0.125,
                    "momentum": 0.9,
                    "weight_decay": 2e-5,
                    "schedule": "cosine",
                    "warmup_epochs": 5.0,
                    "label_smoothing": 0.1,
                },
                "data": {"augment": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "switch_prob": 0.5}},
                # EMA per optimiser step with timm's warm-up; torchvision's 0.99998 every 32
                # steps is tuned to 600 ImageNet epochs and would barely move in a short run.
                "train": {
                    "batch_size": 256,
                    "epochs": 600,
                    "ema_decay": 0.9998,
                    "ema_warmup": True,
                },
            },
            not_covered=(
                "TrivialAugment, random erasing, RandomResizedCrop, train-at-176/test-at-224 and "
                "repeated augmentation of torchvision's recipe"
            ),
        ),
        Preset(
            name="seed004",
            reproduces="seed 004: ResNet-18 vs small ViT from scratch on CIFAR-10/100 and SVHN",
            settings={
                "data": {
                    "normalize": "none",
                    "augment": {"crop_padding": 4, "hflip": True, "rotation_degrees": 0.0},
                },
                "optim": {"name": "adam", "lr": 1e-4, "weight_decay": 0.0, **_NO_SCHEDULE},
                "train": {"batch_size": 100, "epochs": 500},
            },
        ),
    ]
}


def describe_presets() -> list[dict[str, str]]:
    """One row per preset for ``cnnvit recipes``: what it reproduces and the keys it sets as
    dotted ``key=value`` text, the family parts prefixed ``cnn:`` / ``vit:`` / ``hybrid:``."""
    rows = []
    for preset in PRESETS.values():
        settings = [f"{k}={v}" for k, v in _flatten(preset.settings)]
        for family, part in preset.by_family.items():
            settings += [f"{family}: {k}={v}" for k, v in _flatten(part)]
        rows.append(
            {
                "name": preset.name,
                "reproduces": preset.reproduces,
                "settings": ", ".join(settings),
                "not_covered": preset.not_covered,
            }
        )
    return rows


def _flatten(section: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in section.items():
        if isinstance(value, Mapping):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> Section:
    """``base`` updated by ``top``, recursively for nested mappings (neither is modified)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = deep_merge({}, value) if isinstance(value, Mapping) else value
    return out
