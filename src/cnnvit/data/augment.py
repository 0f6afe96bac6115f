"""Batched augmentation on the training device.

The usual torchvision recipe transforms one PIL image at a time in DataLoader workers; on a
small dataset that Python loop, not the model, sets the pace. Here a whole uint8 batch is turned
into a normalised float batch with a handful of tensor ops on the device that trains: resize,
random crop with padding, horizontal flip, small rotation, normalisation. torchvision.transforms.v2
applies one random draw to a whole batch, so per-sample randomness is written here; random
numbers come from a CPU ``torch.Generator`` that the caller owns, so a run is reproducible and a
resumed run continues the same random stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnvit.config import AugmentConfig


@dataclass(frozen=True)
class BatchTransform:
    """uint8 (B, C, H, W) -> normalised float32 (B, channels, size, size)."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: AugmentConfig | None = None  # None: evaluation (no randomness)

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        x = images.float().div_(255)  # (B, C, H, W) in [0, 1]
        x = _match_channels(x, self.channels)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
        if self.augment is not None:
            if generator is None:
                raise ValueError("training augmentation needs a torch.Generator")
            x = self._random(x, generator)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def _random(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        aug = self.augment
        assert aug is not None
        if aug.crop_padding > 0:
            x = random_crop(x, aug.crop_padding, gen)
        if aug.hflip:
            x = random_hflip(x, gen)
        if aug.rotation_degrees > 0:
            x = random_rotate(x, aug.rotation_degrees, gen)
        return x


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)  # grayscale -> RGB by replication
    if x.shape[1] == 3 and channels == 1:
        # ITU-R BT.601 luma, the weights PIL's convert("L") uses.
        w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    raise ValueError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")


def _uniform(
    n: int, low: float, high: float, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    return (torch.rand(n, generator=gen) * (high - low) + low).to(device)


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and take a random (H, W) window per sample."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indexing with the channel slice in the middle puts channels last: (B, H, W, C).
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def random_hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_rotate(x: torch.Tensor, degrees: float, gen: torch.Generator) -> torch.Tensor:
    """Rotate each sample by a uniform angle in ±degrees about its centre (zero fill)."""
    angle = _uniform(x.shape[0], -degrees, degrees, gen, x.device) * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
