"""The images an image-grid analysis shows (Grad-CAM, attention and feature-map grids): a
stratified sample of the images looked at, and what a model sees of them."""

from __future__ import annotations

import numpy as np
import torch

from cnnvit.analyze.images import ImageSet, stratified_indices
from cnnvit.analyze.subject import Subject

__all__ = ["grid_sample", "model_view", "sample_indices"]


def grid_sample(images: ImageSet, count: int) -> tuple[np.ndarray, ImageSet]:
    """The stratified images a grid shows: their indices in ``images`` and the subset; no
    images is an error."""
    if count < 1 or len(images) == 0:
        raise ValueError(f"need at least one image (num_images={count}, {len(images)} given)")
    indices = sample_indices(images, count)
    return indices, images.take(indices)


def sample_indices(images: ImageSet, count: int) -> np.ndarray:
    """Indices of at most ``count`` images, stratified by class (as ``ImageSet.subset``)."""
    if count >= len(images):
        return np.arange(len(images))
    return stratified_indices(images.labels.numpy(), count, 0)


def model_view(subject: Subject, images_uint8: torch.Tensor) -> np.ndarray:
    """What the model sees of uint8 ``images_uint8`` (B, C, H, W): its input, unnormalised, as
    float32 [0, 1] RGB (B, S, S, 3), the background of the grids' pictures."""
    with torch.no_grad():
        rgb = subject.unnormalize(subject.prepare(images_uint8))  # (B, 3, S, S)
    return rgb.permute(0, 2, 3, 1).float().cpu().numpy()  # (B, S, S, 3)
