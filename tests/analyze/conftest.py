"""Fixtures for the analyses: small models at 32 px and a synthetic set they learn in seconds.

``pattern_images``: class k is one bright object of side size/4 (0 filled square, 1 hollow
frame, 2 horizontal bars, 3 vertical bars) at a random place on a noisy background; its box is
returned too, so where a trained model should look is known.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnvit.analyze.images import ImageSet
from cnnvit.analyze.subject import Subject, subject_from_name

PATTERN_CLASSES = ["square", "frame", "h-bars", "v-bars"]


def _pattern(k: int, side: int) -> np.ndarray:
    patch = np.zeros((side, side), bool)
    if k == 0:
        patch[:] = True
    elif k == 1:
        patch[[0, 1, -2, -1], :] = True
        patch[:, [0, 1, -2, -1]] = True
    elif k == 2:
        patch[::2, :] = True
    else:
        patch[:, ::2] = True
    return patch


def pattern_boxes(n: int, size: int = 32, seed: int = 0) -> tuple[ImageSet, np.ndarray]:
    """uint8 (n, 3, size, size) images of class ``i % 4``, and each object's box (top, left,
    side) as an (n, 3) array."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = rng.integers(0, 60, size=(n, 3, size, size), dtype=np.uint8)
    side = size // 4
    boxes = np.zeros((n, 3), np.int64)
    for i, k in enumerate(labels):
        top, left = rng.integers(0, size - side + 1, size=2)
        region = images[i, :, top : top + side, left : left + side]
        region[:, _pattern(int(k), side)] = 230
        boxes[i] = (top, left, side)
    images_set = ImageSet(
        torch.from_numpy(images), torch.from_numpy(labels), PATTERN_CLASSES, "pat"
    )
    return images_set, boxes


def pattern_images(n: int, size: int = 32, seed: int = 0) -> ImageSet:
    return pattern_boxes(n, size, seed)[0]


def make_subject(name: str, image_size: int = 32, classes=PATTERN_CLASSES, **kwargs) -> Subject:
    """A randomly initialised (seeded) model wrapped as a Subject, on the CPU."""
    torch.manual_seed(0)
    return subject_from_name(name, classes=list(classes), image_size=image_size, **kwargs)


def train_briefly(subject: Subject, images: ImageSet, steps: int = 60, lr: float = 2e-3) -> None:
    """Adam on ``images`` until the model has learned the patterns (a few seconds on CPU)."""
    torch.manual_seed(0)
    model = subject.model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x_all, y_all = subject.prepare(images.images), images.labels
    for step in range(steps):
        idx = torch.arange(step * 32, step * 32 + 32) % len(images)
        loss = torch.nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="session")
def patterns() -> ImageSet:
    return pattern_images(256)


@pytest.fixture(scope="session")
def trained_cnn(patterns) -> Subject:
    subject = make_subject("resnet_mini")
    train_briefly(subject, patterns)
    return subject


@pytest.fixture(scope="session")
def trained_vit(patterns) -> Subject:
    subject = make_subject("vit_mini")
    train_briefly(subject, patterns, steps=100)
    return subject


def accuracy(subject: Subject, images: ImageSet) -> float:
    return float((subject.logits(images.images).argmax(1) == images.labels).float().mean())
