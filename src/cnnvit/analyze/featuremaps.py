"""CNN feature maps: what each convolution responds to, channel-averaged, as a grid.

Every convolution's output is averaged over its channels inside the forward hook (so memory is
one (B, h, w) map per layer, whatever the channel count), for a few images. A ViT has no
convolution but its patch embedding, so it is listed as skipped; a hybrid shows its conv block.

The image grids are :func:`cnnvit.plotting.mosaic_figure`, shared with the Grad-CAM grids: one image
axes per figure, because a hundred matplotlib axes cost seconds to lay out on a small CPU.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from cnnvit.analyze.files import file_stems
from cnnvit.analyze.hooks import LayerRecorder, named_module, preserved
from cnnvit.analyze.images import ImageSet, stratified_indices
from cnnvit.analyze.layers import conv_layers, resolve_layers, token_layout, transformer_of
from cnnvit.analyze.subject import Subject
from cnnvit.plotting import MAX_COLUMNS, Cell, mosaic_figure, save_png, shown_columns, wrap_name

__all__ = [
    "FeatureMaps",
    "feature_maps",
    "featuremap_layers",
    "run_featuremaps",
    "sample_indices",
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


# --- the analysis --------------------------------------------------------------------------


def run_featuremaps(
    subjects: Sequence[Subject],
    images: ImageSet,
    out_dir: Path,
    *,
    num_images: int = 4,
    progress: bool = True,
) -> dict:
    """For each model with convolutions, a grid ``featuremaps_<model>.png`` (rows: images,
    columns: the input then each convolution's channel-averaged map); ``featuremaps.json``
    lists per model the layers, their (C, h, w) shapes and the figure, or why it was skipped."""
    from cnnvit.ui import progress_bar

    if not subjects:
        raise ValueError("no models to analyse: give at least one subject")
    labels = [s.label for s in subjects]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique, got {labels}; pass label= to tell apart")
    indices, sample, out_dir = grid_sample(images, num_images, out_dir)
    models = []
    with progress_bar(progress) as bar:
        task = None if bar is None else bar.add_task("feature maps", total=len(subjects), rate="")
        for subject, stem in zip(subjects, file_stems(labels), strict=True):
            models.append(_one_model(subject, sample, out_dir, f"featuremaps_{stem}.png"))
            if bar is not None:
                bar.update(task, advance=1, rate=subject.label)
    summary = {
        "analysis": "featuremaps",
        "num_images": len(sample),
        "batch_size": len(sample),
        "images": images.name,
        "image_indices": [int(i) for i in indices],
        "labels": [images.classes[int(k)] for k in sample.labels],
        "max_columns": MAX_COLUMNS,
        "models": models,
    }
    (out_dir / "featuremaps.json").write_text(json.dumps(summary, indent=2))
    return summary


def _one_model(subject: Subject, sample: ImageSet, out_dir: Path, figure: str) -> dict:
    entry: dict = {"label": subject.label, "family": subject.family, "device": str(subject.device)}
    layers = featuremap_layers(subject.model)
    if not layers:
        reason = (
            "no convolutions beyond the patch embedding"
            if transformer_of(subject.model) is not None
            else "no convolutions"
        )
        return {**entry, "skipped": reason}
    start = time.perf_counter()
    found = feature_maps(subject, sample.images, layers=layers)
    shown = shown_columns(len(layers))
    save_png(_grid_figure(subject, sample, found, shown), out_dir / figure)
    return {
        **entry,
        "image_size": subject.image_size,
        "layers": found.layers,
        "shapes": [list(s) for s in found.shapes],
        "shown": [found.layers[i] for i in shown],
        "figure": figure,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _grid_figure(
    subject: Subject, sample: ImageSet, found: FeatureMaps, shown: list[int]
) -> Figure:
    with torch.no_grad():
        rgb = subject.unnormalize(subject.prepare(sample.images))  # (N, 3, S, S)
    rgb_np = rgb.permute(0, 2, 3, 1).float().cpu().numpy()  # (N, S, S, 3)
    viridis = mpl.colormaps["viridis"]
    rows = []
    for r in range(len(sample)):
        row = [Cell(rgb_np[r], subject.classes[int(sample.labels[r])])]
        for i in shown:
            _, h, w = found.shapes[i]
            header = f"{wrap_name(found.layers[i])}\n{h}×{w}" if r == 0 else ""
            row.append(Cell(viridis(_own_range(found.maps[i][r]))[..., :3], header))
        rows.append(row)
    hidden = len(found.layers) - len(shown)
    more = f" ({len(shown)} of {len(found.layers)} convolutions shown)" if hidden else ""
    title = f"{subject.label}: channel-mean activation after each convolution{more}"
    return mosaic_figure(rows, title)


def _own_range(m: np.ndarray) -> np.ndarray:
    """A map scaled to [0, 1] over its own range (a constant map is 0)."""
    low, high = float(m.min()), float(m.max())
    return (m - low) / (high - low) if high > low else np.zeros_like(m)


# --- shared helpers for image-grid analyses ------------------------------------------------


def grid_sample(images: ImageSet, count: int, out_dir: Path) -> tuple[np.ndarray, ImageSet, Path]:
    """The stratified images a grid shows (their indices and the subset), and ``out_dir``
    created; no images is an error."""
    if count < 1 or len(images) == 0:
        raise ValueError(f"need at least one image (num_images={count}, {len(images)} given)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = sample_indices(images, count)
    return indices, images.take(indices), out_dir


def sample_indices(images: ImageSet, count: int) -> np.ndarray:
    """Indices of at most ``count`` images, stratified by class (as ``ImageSet.subset``)."""
    if count >= len(images):
        return np.arange(len(images))
    return stratified_indices(images.labels.numpy(), count, 0)
