"""RunConfig -> the runtime, data and model it describes; shared by training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnvit.config import RunConfig
from cnnvit.data.pipeline import PreparedData, prepare_data
from cnnvit.models.build import build_model
from cnnvit.runtime import Runtime, resolve_runtime


@dataclass
class Assembled:
    runtime: Runtime
    data: PreparedData
    model: torch.nn.Module
    generator: torch.Generator  # CPU generator for data order and augmentation


def assemble(cfg: RunConfig, *, device: torch.device | None = None) -> Assembled:
    """Seed torch, then build the device, the loaders and the model sized for the data.
    ``device``: this process's, where it is one of several (``train.device`` otherwise)."""
    words = cfg.train if device is None else cfg.train.model_copy(update={"device": str(device)})
    runtime = resolve_runtime(words)
    torch.manual_seed(cfg.train.seed)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    data = prepare_data(
        cfg.data,
        device=runtime.device,
        batch_size=cfg.train.batch_size,
        eval_batch_size=cfg.train.eval_batch_size,
        generator=generator,
        progress=cfg.train.progress,
    )
    model = build_model(
        cfg.model,
        num_classes=data.num_classes,
        in_chans=data.channels,
        img_size=data.image_size,
        device=runtime.device,
        channels_last=runtime.channels_last,
    )
    return Assembled(runtime, data, model, generator)
