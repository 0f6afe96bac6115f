"""A seeded generator of labelled images with structure a small CNN or ViT learns quickly.

Each class has a template: a sinusoidal grating at a class-specific orientation and frequency,
tinted with a class-specific hue (RGB) or contrast (grey). An image is its class template seen
through a Gaussian blob at a random position, size and phase, on a random grey background, plus
pixel noise. Orientation and colour are global cues a ViT picks up, the local stripe pattern is
what convolutions see, and the random position makes it more than a lookup. The same arguments
always give the same bytes; train and val come from independent streams of the seed, so the
train images do not depend on ``val_size``.
"""

from __future__ import annotations

import colorsys

import numpy as np

from cnnvit.data.types import ArraySource, DataError, DatasetSplits

_CHUNK = 64  # images generated at once, bounding float memory at large image sizes


def synthetic(
    num_classes: int = 10,
    train_size: int = 2000,
    val_size: int = 500,
    image_size: int = 32,
    channels: int = 3,
    seed: int = 0,
) -> DatasetSplits:
    """Balanced, seeded synthetic splits: images (N, image_size, image_size, channels) uint8."""
    if num_classes < 2 or train_size < 1 or val_size < 0 or image_size < 8:
        raise DataError(
            "synthetic needs num_classes >= 2, train_size >= 1, val_size >= 0, image_size >= 8; "
            f"got {num_classes}, {train_size}, {val_size}, {image_size}"
        )
    if channels not in (1, 3):
        raise DataError(f"synthetic: channels must be 1 or 3, got {channels}")
    train_seq, val_seq = np.random.SeedSequence(seed).spawn(2)
    make = _Maker(num_classes, image_size, channels)
    train = make(train_size, np.random.default_rng(train_seq))
    val = make(val_size, np.random.default_rng(val_seq)) if val_size else None
    classes = [f"class{i}" for i in range(num_classes)]
    return DatasetSplits("synthetic", classes, train, val)


class _Maker:
    """Draws images of the class templates fixed by (num_classes, image_size, channels)."""

    def __init__(self, num_classes: int, image_size: int, channels: int) -> None:
        self.k, self.size, self.channels = num_classes, image_size, channels
        c = np.arange(num_classes)
        self.angle = np.pi * c / num_classes  # evenly spread orientations in [0, pi)
        self.freq = 3.0 + 2.0 * (c % 3)  # cycles across the image: 3, 5 or 7
        hues = [colorsys.hsv_to_rgb(i / num_classes, 0.8, 1.0) for i in range(num_classes)]
        # Grey images get a class-specific contrast instead of a hue.
        grey = np.linspace(1.0, 0.55, num_classes)[:, None]
        self.tint = np.asarray(hues, np.float32) if channels == 3 else grey
        ax = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
        self.yy, self.xx = np.meshgrid(ax, ax, indexing="ij")  # (S, S) each, in (0, 1)

    def __call__(self, n: int, rng: np.random.Generator) -> ArraySource:
        labels = rng.permutation(np.arange(n) % self.k).astype(np.int64)  # balanced classes
        images = np.empty((n, self.size, self.size, self.channels), np.uint8)
        for start in range(0, n, _CHUNK):
            images[start : start + _CHUNK] = self._draw(labels[start : start + _CHUNK], rng)
        return ArraySource(images, labels)

    def _draw(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        m = len(labels)
        cx, cy = (rng.uniform(0.25, 0.75, m)[:, None, None] for _ in range(2))  # (m, 1, 1)
        sigma = rng.uniform(0.2, 0.3, m)[:, None, None]
        phase = rng.uniform(0, 2 * np.pi, m)[:, None, None]
        background = rng.uniform(0.2, 0.5, m)[:, None, None, None]  # (m, 1, 1, 1)
        angle = self.angle[labels][:, None, None]
        u = self.xx * np.cos(angle) + self.yy * np.sin(angle)  # (m, S, S)
        grating = 0.5 + 0.5 * np.sin(2 * np.pi * self.freq[labels][:, None, None] * u + phase)
        blob = np.exp(-((self.xx - cx) ** 2 + (self.yy - cy) ** 2) / (2 * sigma**2))
        pattern = (blob * grating)[..., None] * self.tint[labels][:, None, None, :]  # (m, S, S, C)
        pixels = background * (1 - blob[..., None]) + pattern
        pixels = pixels + rng.normal(0, 0.08, pixels.shape)
        return np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)
