"""CNN feature maps: what each convolution responds to, channel-averaged.

Every convolution's output is averaged over its channels inside the forward hook (so memory is
one (B, h, w) map per layer, whatever the channel count), for a few images. A ViT has no
convolution but its patch embedding, so it is listed as skipped; a hybrid shows its conv block.
Numbers only: :mod:`cnnvit.analyze.analyses.featuremaps` draws the grids and writes the files.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnnvit.analyze.grids import grid_sample, model_view
from cnnvit.analyze.hooks import LayerRecorder, named_module, preserved
from cnnvit.analyze.images import ImageSet
from cnnvit.analyze.layers import conv_layers, resolve_layers, token_layout, transformer_of
from cnnvit.analyze.subject import Subject
from cnnvit.ui import progress_bar

__all__ = [
    "FeatureMapRun",
    "FeatureMaps",
    "ModelFeatureMaps",
    "feature_maps",
    "featuremap_layers",
    "grid_feature_maps",
]


# --- feature maps --------------------------------------------------------------------------


@dataclass
class FeatureMaps:
    """``maps[i]`` float32 (B, h, w): layer i's output averaged over channels; ``shapes[i]``
    its (C, h, w) per image."""

    maps: list[np.ndarray]
    layers: list[str]
    shapes: list[tuple[int, int, int]]


def feature_maps(
    subject: Subject, images_uint8: torch.Tensor, *, layers: str | Sequence[str] = "convs"
) -> FeatureMaps:
    """Channel-averaged outputs of ``layers`` (default: every convolution) for a batch of uint8
    images (B, C, H, W), from one forward pass. ViT token outputs (B, N, C) are laid on the
    token grid first; other shapes are refused."""
    model = subject.model
    names = resolve_layers(model, layers)
    if not names:
        raise ValueError(f"{subject.label} has no layers for {layers!r}; name modules explicitly")
    layout = token_layout(model)

    def as_map(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 3 and layout is not None:
            t = layout.to_map(t)  # (B, C, rows, cols)
        if t.ndim != 4:
            raise ValueError(
                f"feature maps need (B, C, h, w) outputs, got {tuple(t.shape)}; choose conv layers"
            )
        return t

    def mean(t: torch.Tensor) -> torch.Tensor:
        return as_map(t).detach().float().mean(dim=1).cpu()  # (B, h, w)

    def shape(t: torch.Tensor) -> torch.Tensor:
        return torch.tensor(as_map(t).shape[1:])  # (C, h, w)

    with (
        preserved(model),
        torch.no_grad(),
        LayerRecorder(model, names, mean) as means,
        LayerRecorder(model, names, shape) as shapes,
    ):
        model.eval()
        model(subject.prepare(images_uint8))
    return FeatureMaps(
        maps=[m.numpy() for m in means.ordered()],
        layers=names,
        shapes=[tuple(int(v) for v in s) for s in shapes.ordered()],
    )


def featuremap_layers(model: nn.Module) -> list[str]:
    """The convolutions worth showing: all of a CNN's, a hybrid's conv block; a ViT's patch
    embedding projection left out (one linear map of each patch, not a feature map)."""
    vit = transformer_of(model)
    patchify = None if vit is None else getattr(vit.patch_embed, "proj", None)
    return [n for n in conv_layers(model) if named_module(model, n) is not patchify]


# --- the grids' numbers ------------------------------------------------------------------


@dataclass
class ModelFeatureMaps:
    """One model's feature maps of a grid's images, or why it has none (``skipped``)."""

    found: FeatureMaps | None  # None: nothing to show
    skipped: str | None  # why not, where found is None
    inputs: np.ndarray | None  # (N, S, S, 3) float32 in [0, 1]: what the model sees
    seconds: float


@dataclass
class FeatureMapRun:
    """Every model's feature maps of the same stratified images."""

    indices: np.ndarray  # (N,) the grid's images among those given
    labels: np.ndarray  # (N,) their classes
    models: list[ModelFeatureMaps]


def grid_feature_maps(
    subjects: Sequence[Subject], images: ImageSet, *, num_images: int = 4, progress: bool = True
) -> FeatureMapRun:
    """Each model's channel-averaged output of every convolution worth showing
    (:func:`featuremap_layers`) for ``num_images`` stratified images of ``images``."""
    indices, sample = grid_sample(images, num_images)
    models = []
    with progress_bar(progress) as bar:
        task = None if bar is None else bar.add_task("feature maps", total=len(subjects), rate="")
        for subject in subjects:
            models.append(_one_model(subject, sample))
            if bar is not None:
                bar.update(task, advance=1, rate=subject.label)
    return FeatureMapRun(indices, sample.labels.numpy(), models)


def _one_model(subject: Subject, sample: ImageSet) -> ModelFeatureMaps:
    layers = featuremap_layers(subject.model)
    if not layers:
        reason = (
            "no convolutions beyond the patch embedding"
            if transformer_of(subject.model) is not None
            else "no convolutions"
        )
        return ModelFeatureMaps(None, reason, None, 0.0)
    start = time.perf_counter()
    found = feature_maps(subject, sample.images, layers=layers)
    seconds = time.perf_counter() - start
    return ModelFeatureMaps(found, None, model_view(subject, sample.images), seconds)
