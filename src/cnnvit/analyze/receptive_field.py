"""The CNN counterpart of a ViT's attention distance: how far each stage looks, in pixels.

The effective receptive field (Luo et al. 2016) of a stage is measured from the gradient of its
centre unit with respect to the input, averaged over images: its gradient-weighted mean distance
from the centre is on the same pixel scale as a ViT's mean attention distance
(:mod:`cnnvit.analyze.attention`). Where the model is a plain chain of convolutions and pooling,
the theoretical receptive field is computed from the layers' geometry too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import DropPath, FrozenBatchNormAct2d
from timm.models.resnet import ResNet
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from cnnvit.analyze.hooks import LayerRecorder, preserved
from cnnvit.analyze.images import ImageSet
from cnnvit.analyze.layers import resolve_layers
from cnnvit.analyze.subject import Subject

__all__ = ["ERF_IMAGES", "MASS_FRACTION", "receptive_field_distance", "theoretical_receptive_field"]

# The effective receptive field needs one backward pass per stage; its gradient-mass average
# is within about 0.1 px of the 1000-image value at 64 images (resnet_mini, Fashion-MNIST).
ERF_IMAGES = 64
BATCH_SIZE = 64
MASS_FRACTION = 0.9  # the effective receptive field radius holds this share of the gradient


def receptive_field_distance(
    subject: Subject,
    images: ImageSet | torch.Tensor,
    layers: str | Sequence[str] = "stages",
    *,
    batch_size: int = BATCH_SIZE,
) -> list[dict[str, Any]]:
    """The effective receptive field (Luo et al. 2016) of each layer's centre unit, in pixels of
    the model's input, directly comparable with :func:`mean_attention_distance`.

    For each layer (default: the stage outputs): the gradient of the centre unit of the output
    map (channels summed; unit ``(h // 2, w // 2)``) with respect to the input, |grad| summed
    over input channels and over images. Reported per layer: ``erf_distance_px``, the
    gradient-weighted mean distance from the unit's input position; ``erf_radius90_px``, the
    radius around it holding 90 % of the gradient mass; ``theoretical_rf_px``, the side of the
    theoretical receptive field from conv/pool kernels and strides along the path (None where
    that arithmetic is not reliable, see :func:`theoretical_receptive_field`). Both distances
    only count pixels inside the image: a deep stage's field clipped by the border of a small
    image reads smaller than it would on a large one.
    """
    model = subject.model
    names = resolve_layers(model, layers)
    batch = images.images if isinstance(images, ImageSet) else images
    if len(batch) == 0:
        raise ValueError("receptive_field_distance needs at least one image")
    size = subject.image_size
    mass = torch.zeros(len(names), size, size, dtype=torch.float64)  # (L, H, W)
    shapes: list[tuple[int, int]] = []
    with preserved(model), torch.enable_grad():  # a caller's no_grad would stop the gradient
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)  # only the input's gradient is needed
        # clone: the kept map keeps its graph even if a later layer works in place on it
        with LayerRecorder(model, names, transform=lambda t: t.clone()) as rec:
            for start in range(0, len(batch), batch_size):
                x = subject.prepare(batch[start : start + batch_size]).requires_grad_(True)
                rec.clear()
                model(x)
                shapes = _accumulate_erf(rec.ordered(), names, x, mass)
    theory = theoretical_receptive_field(model, names)
    out = []
    for i, (name, (h, w)) in enumerate(zip(names, shapes, strict=True)):
        rf = theory.get(name) if theory else None
        if rf is not None and not _within(mass[i], _centre_position((h, w), size, rf), rf["rf"]):
            rf = None  # gradient outside the computed field: the arithmetic missed a path
        centre = _centre_position((h, w), size, rf)
        distance, radius = _weighted_distance(mass[i], centre)
        out.append(
            {
                "layer": name,
                "output_size": [h, w],
                "centre_px": [float(centre[0]), float(centre[1])],
                "erf_distance_px": distance,
                "erf_radius90_px": radius,
                "theoretical_rf_px": None if rf is None else int(rf["rf"]),
            }
        )
    return out


def _accumulate_erf(
    outputs: list[torch.Tensor], names: list[str], x: torch.Tensor, mass: torch.Tensor
) -> list[tuple[int, int]]:
    """Add each layer's |d centre unit / d input| (summed over channels and images) to mass."""
    shapes = []
    for i, (name, out) in enumerate(zip(names, outputs, strict=True)):
        if out.ndim != 4:
            raise ValueError(
                f"layer {name!r} outputs {tuple(out.shape)}: the receptive field needs a "
                "(B, C, H, W) map; choose convolutional layers (layers='stages' on a CNN)"
            )
        h, w = out.shape[-2:]
        unit = out[:, :, h // 2, w // 2].sum()  # every image's centre unit, channels summed
        (grad,) = torch.autograd.grad(unit, x, retain_graph=i < len(outputs) - 1)  # (B, C, H, W)
        mass[i] += grad.abs().sum(dim=(0, 1)).double().cpu()  # (H, W)
        shapes.append((int(h), int(w)))
    return shapes


def _centre_position(
    shape: tuple[int, int], size: int, rf: dict[str, float] | None
) -> tuple[float, float]:
    """(y, x) input pixel of the centre unit: from the receptive-field arithmetic when known,
    else the centre of the unit's cell when the image is split evenly into the output grid."""
    h, w = shape
    if rf is not None:
        return rf["start"] + (h // 2) * rf["jump"], rf["start"] + (w // 2) * rf["jump"]
    return (h // 2 + 0.5) * size / h - 0.5, (w // 2 + 0.5) * size / w - 0.5


def _pixel_distances(size: tuple[int, int], centre: tuple[float, float]) -> torch.Tensor:
    ys = torch.arange(size[0], dtype=torch.float64).view(-1, 1)
    xs = torch.arange(size[1], dtype=torch.float64).view(1, -1)
    return torch.sqrt((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2)  # (H, W)


def _weighted_distance(mass: torch.Tensor, centre: tuple[float, float]) -> tuple[float, float]:
    """Mean distance from ``centre`` weighted by ``mass`` (H, W), and the radius holding 90 %."""
    total = float(mass.sum())
    if total <= 0:
        return 0.0, 0.0  # no gradient reaches the input (a dead unit): nothing to measure
    distance = _pixel_distances(tuple(mass.shape), centre).flatten()  # (H*W,)
    weights = mass.flatten() / total
    order = torch.argsort(distance, stable=True)
    cumulative = torch.cumsum(weights[order], 0)
    # the first radius whose disc holds the share (tolerance: float sums of many small terms)
    at = int(
        torch.searchsorted(cumulative, torch.tensor(MASS_FRACTION - 1e-9, dtype=cumulative.dtype))
    )
    return float((weights * distance).sum()), float(distance[order][min(at, len(order) - 1)])


def _within(mass: torch.Tensor, centre: tuple[float, float], rf: float) -> bool:
    """Whether all gradient lies in the theoretical square field of side rf around centre."""
    ys, xs = torch.nonzero(mass > 0, as_tuple=True)
    half = (rf - 1) / 2 + 1e-6
    return bool(((ys - centre[0]).abs() <= half).all() and ((xs - centre[1]).abs() <= half).all())


# Leaf modules that act on each position alone in eval mode: they leave the field unchanged.
_POINTWISE = (
    nn.modules.batchnorm._BatchNorm,
    FrozenBatchNorm2d,  # what freezing blocks turns BatchNorms into
    FrozenBatchNormAct2d,
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    DropPath,
)
_SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def theoretical_receptive_field(
    model: nn.Module, layers: Sequence[str]
) -> dict[str, dict[str, float]] | None:
    """Side ``rf``, ``jump`` (input pixels per output unit) and ``start`` (input pixel of the
    first unit's centre) of each layer's theoretical receptive field, from the kernels, strides,
    paddings and dilations along the path; None where that arithmetic is not reliable.

    Computed only where the path is known to be a chain: a ``torch.nn.Sequential`` of
    convolutions, pools and pointwise layers, or a timm ``ResNet`` without squeeze-excitation or
    anti-aliasing (its ``downsample`` shortcuts are skipped: their field lies inside the main
    branch's). Any other model (ConvNeXt's main-path ``downsample``, SE's global pooling,
    GResNet's custom layers) gets None rather than a wrong number.
    """
    if not _chain_model(model):
        return None
    named = [
        (n, m)
        for n, m in model.named_modules()
        if n and not any(True for _ in m.children()) and "downsample" not in n.split(".")
    ]
    rf, jump, start = 1.0, 1.0, 0.0
    fields: dict[str, dict[str, float]] = {}
    wanted = set(layers)
    last = {name: _last_index(named, name) for name in wanted}
    if not last or min(last.values()) < 0:
        return None
    for index, (_name, module) in enumerate(named[: max(last.values()) + 1]):
        if isinstance(module, _SPATIAL):
            geometry = _geometry(module)
            if geometry is None:
                return None
            k, s, p, d = geometry
            rf += (k - 1) * d * jump
            start += ((k - 1) * d / 2 - p) * jump
            jump *= s
        elif not isinstance(module, _POINTWISE):
            return None  # a layer whose spatial effect the arithmetic does not know
        for name, at in last.items():
            if at == index:
                fields[name] = {"rf": rf, "jump": jump, "start": start}
    return fields


def _chain_model(model: nn.Module) -> bool:
    if isinstance(model, nn.Sequential):
        return True
    if not isinstance(model, ResNet):
        return False
    for module in model.modules():
        if getattr(module, "se", None) is not None:
            return False
        aa = getattr(module, "aa", None)
        if aa is not None and not isinstance(aa, nn.Identity):
            return False
    return True


def _last_index(named: list[tuple[str, nn.Module]], layer: str) -> int:
    """Index of the last leaf that belongs to ``layer`` (or is it); -1 if none."""
    hits = [i for i, (n, _) in enumerate(named) if n == layer or n.startswith(layer + ".")]
    return hits[-1] if hits else -1


def _geometry(module: nn.Module) -> tuple[int, int, int, int] | None:
    """(kernel, stride, padding, dilation) of a square conv/pool; None if not square/numeric."""
    values = []
    for attr in ("kernel_size", "stride", "padding", "dilation"):
        v = getattr(module, attr, 1)
        v = (v, v) if isinstance(v, int) else tuple(v) if not isinstance(v, str) else None
        if v is None or len(v) != 2 or v[0] != v[1]:
            return None
        values.append(int(v[0]))
    k, s, p, d = values
    return k, s, p, d
