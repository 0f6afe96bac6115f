"""ModelConfig -> a model ready for the device: created, head sized, blocks frozen, laid out."""

from __future__ import annotations

import torch

from cnnvit.config import ModelConfig
from cnnvit.models.hub import ModelError
from cnnvit.models.registry import create_model
from cnnvit.models.surgery import freeze_all_but_last_blocks


def build_model(
    cfg: ModelConfig,
    *,
    num_classes: int,
    in_chans: int,
    img_size: int,
    device: torch.device | None = None,
    channels_last: bool = False,
) -> torch.nn.Module:
    """Create ``cfg.name`` for this data, freeze what the config freezes, move it to ``device``."""
    try:
        model = create_model(
            cfg.name,
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=img_size,
            pretrained=cfg.pretrained,
            weights=cfg.weights,
            **cfg.kwargs,
        )
    except TypeError as err:  # the constructor does not take one of model.kwargs
        raise ModelError(
            f"{cfg.name} does not accept model.kwargs {cfg.kwargs}: {err}; remove or rename "
            "the key (see the model's constructor in timm)"
        ) from None
    freeze_all_but_last_blocks(
        model, cfg.freeze.trainable_blocks, also_trainable=cfg.freeze.also_trainable
    )
    if device is not None:
        model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
