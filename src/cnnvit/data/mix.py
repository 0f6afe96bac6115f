"""Mixup and CutMix, batched on the training device, with soft (label-smoothed) targets.

timm's ``timm.data.Mixup`` draws its random numbers from numpy's and Python's global generators.
cnnvit's runs are reproducible and resume exactly because every random draw of the data path
comes from one CPU ``torch.Generator`` that the run owns and checkpoints; a global generator is
neither saved nor restored, so a resumed run would mix differently. This module therefore draws
everything from the caller's generator: one 64-bit seed per batch is taken from it and feeds a
numpy ``Generator`` (torch has no Beta sampler that accepts a generator), so the whole mixing
stream is a function of the caller's generator state.

Each sample ``i`` is mixed with its partner ``B-1-i`` (the batch flipped, as timm does), with its
own coin for whether to mix at all (``mix_prob``), for mixup or cutmix (``switch_prob`` when both
are on) and its own ``lam``. Targets follow timm's ``mixup_target``: smoothed one-hot rows
``lam * y_i + (1 - lam) * y_partner``, so every row sums to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cnnvit.config import AugmentConfig


@dataclass(frozen=True)
class MixResult:
    images: torch.Tensor  # (B, C, H, W) mixed
    targets: torch.Tensor  # (B, num_classes) float32, rows sum to 1
    lam: torch.Tensor  # (B,) weight of the sample's own image (after cutmix box clipping)
    dominant: torch.Tensor  # (B,) the original label with the larger weight


@dataclass(frozen=True)
class BatchMix:
    """Per-sample mixup / cutmix of a normalised float batch; see the module docstring."""

    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0

    @classmethod
    def from_config(
        cls, aug: AugmentConfig | None, num_classes: int, label_smoothing: float
    ) -> BatchMix | None:
        """The mixer an augment config asks for, or None when mixing is off."""
        if aug is None or (aug.mixup_alpha <= 0 and aug.cutmix_alpha <= 0) or aug.mix_prob <= 0:
            return None
        return cls(
            num_classes=num_classes,
            mixup_alpha=aug.mixup_alpha,
            cutmix_alpha=aug.cutmix_alpha,
            mix_prob=aug.mix_prob,
            switch_prob=aug.switch_prob,
            label_smoothing=label_smoothing,
        )

    def __call__(
        self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> MixResult:
        b, _, h, w = x.shape
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        lam, use_cut = self._draw_lambda(b, rng)  # (B,), (B,)
        boxes = _boxes(lam, use_cut, h, w, rng)  # (B, 4) y0, y1, x0, x1; empty where no cutmix
        area = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
        # A clipped box covers less than 1 - lam: the image's true share decides the target.
        lam = np.where(use_cut, 1.0 - area / (h * w), lam)
        dev = x.device
        lam_t = torch.as_tensor(lam, dtype=torch.float32, device=dev)  # (B,)
        cut_t = torch.as_tensor(use_cut, device=dev)  # (B,)
        partner = x.flip(0)  # (B, C, H, W)
        mixed = torch.lerp(partner, x, lam_t.view(-1, 1, 1, 1).to(x.dtype))  # mixup everywhere
        box = torch.as_tensor(boxes, device=dev)  # (B, 4)
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        inside = (
            (rows >= box[:, 0, None, None])
            & (rows < box[:, 1, None, None])
            & (cols >= box[:, 2, None, None])
            & (cols < box[:, 3, None, None])
        )  # (B, H, W)
        cut = torch.where(inside[:, None], partner, x)  # (B, C, H, W) partner pasted in the box
        mixed = torch.where(cut_t.view(-1, 1, 1, 1), cut, mixed)
        targets = self._targets(labels, lam_t)
        dominant = torch.where(lam_t >= 0.5, labels, labels.flip(0))
        return MixResult(mixed, targets, lam_t, dominant)

    def _draw_lambda(self, b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        mixup_on, cutmix_on = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if mixup_on and cutmix_on:
            use_cut = rng.random(b) < self.switch_prob
        else:
            use_cut = np.full(b, cutmix_on)
        lam_mix = rng.beta(self.mixup_alpha, self.mixup_alpha, b) if mixup_on else np.ones(b)
        lam_cut = rng.beta(self.cutmix_alpha, self.cutmix_alpha, b) if cutmix_on else np.ones(b)
        lam = np.where(use_cut, lam_cut, lam_mix)
        apply = rng.random(b) < self.mix_prob
        return np.where(apply, lam, 1.0), use_cut & apply

    def _targets(self, labels: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        off = self.label_smoothing / self.num_classes
        on = 1.0 - self.label_smoothing + off
        y = torch.full((len(labels), self.num_classes), off, device=labels.device)
        y.scatter_(1, labels.long().view(-1, 1), on)  # (B, num_classes) smoothed one-hot
        lam = lam.view(-1, 1)
        return y * lam + y.flip(0) * (1.0 - lam)


def _boxes(
    lam: np.ndarray, use_cut: np.ndarray, h: int, w: int, rng: np.random.Generator
) -> np.ndarray:
    """timm's ``rand_bbox`` per sample: a box of area about (1 - lam), centred anywhere, clipped."""
    b = len(lam)
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = (h * ratio).astype(np.int64), (w * ratio).astype(np.int64)
    cy, cx = rng.integers(0, h, b), rng.integers(0, w, b)
    y0, y1 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
    x0, x1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
    boxes = np.stack([y0, y1, x0, x1], 1)
    return np.where(use_cut[:, None], boxes, 0)  # (B, 4)
