"""How far a ViT looks: per-layer class-token attention maps, attention rollout and the mean
attention distance per layer and head; and the CNN counterpart, the effective receptive field of
each stage, on the same pixel scale.

Capturing the weights without editing the model: timm's ``Attention`` computes
``softmax(q k^T * scale)`` explicitly (then ``attn_drop``, then ``@ v``) only when its
``fused_attn`` flag is False; with the flag on, ``scaled_dot_product_attention`` never
materialises the weights. Inside :func:`~cnnvit.analyze.hooks.preserved` (which puts every flag
back) the pass switches the flag off on each block's attention and keeps the output of its
``attn_drop`` with a forward hook: in eval mode dropout is the identity, so that output *is* the
softmaxed (B, heads, N, N) matrix, exactly what the model multiplies ``v`` with. Hooking
``attn_drop`` rather than recomputing the weights from q and k in a hook keeps q/k
normalisation, masks and any future change inside timm's attention out of our code; a block
whose attention has no ``attn_drop`` (a non-timm attention) is refused with a ValueError.

The same path serves plain ViTs, DeiT distilled (2 prefix tokens), register tokens and the
cnnvit hybrids (the ``vit`` inside); the token grid and the prefix count always come from
:func:`~cnnvit.analyze.layers.token_layout`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from timm.layers import DropPath, FrozenBatchNormAct2d
from timm.models.resnet import ResNet
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from cnnvit.analyze.files import file_stems
from cnnvit.analyze.hooks import LayerRecorder, preserved
from cnnvit.analyze.images import ImageSet
from cnnvit.analyze.layers import (
    TokenLayout,
    resolve_layers,
    token_layout,
    transformer_of,
    vit_block_layers,
)
from cnnvit.analyze.subject import Subject

__all__ = [
    "ATTENTION_JSON",
    "DISTANCE_CSV",
    "DISTANCE_PNG",
    "attention_modules",
    "attention_rollout",
    "attention_rollout_matrix",
    "capture_attention",
    "class_token_maps",
    "mean_attention_distance",
    "patch_centres",
    "receptive_field_distance",
    "run_attention",
    "theoretical_receptive_field",
]

ATTENTION_JSON = "attention.json"
DISTANCE_PNG = "attention_distance.png"
DISTANCE_CSV = "attention_distance.csv"
# Distances are averages: 256 images pin them to well under a pixel at a bounded cost.
DISTANCE_IMAGES = 256
# The effective receptive field needs one backward pass per stage; its gradient-mass average
# is within about 0.1 px of the 1000-image value at 64 images (resnet_mini, Fashion-MNIST).
ERF_IMAGES = 64
BATCH_SIZE = 64
ATTENTION_BYTES = 256 * 2**20  # bound on the attention weights one pass keeps (all blocks)
MASS_FRACTION = 0.9  # the effective receptive field radius holds this share of the gradient


# --- capturing ---------------------------------------------------------------------------------


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention module of every transformer block (a hybrid's inner ViT included)."""
    vit = transformer_of(model)
    if vit is None:
        raise ValueError(
            f"{type(model).__name__} has no transformer (patch_embed + blocks): attention maps "
            "need a ViT or a hybrid; for a CNN use receptive_field_distance"
        )
    modules = []
    for i, block in enumerate(vit.blocks):
        attn = getattr(block, "attn", None)
        if attn is None or not isinstance(getattr(attn, "attn_drop", None), nn.Module):
            raise ValueError(
                f"transformer block {i} ({type(block).__name__}) has no timm-style attention "
                "(an `attn` module applying `attn_drop` to its softmaxed weights); use a timm "
                "VisionTransformer or a model built on timm's Attention"
            )
        modules.append(attn)
    return modules


def capture_attention(subject: Subject, images: torch.Tensor) -> list[torch.Tensor]:
    """Each block's attention weights for uint8 ``images`` (B, C, H, W): a list, shallow to deep,
    of (B, heads, N, N) float32 CPU tensors (N = prefix tokens + patches, rows sum to 1).

    The model is left as it was: mode, ``fused_attn`` flags and hooks are restored.
    """
    model = subject.model
    modules = attention_modules(model)
    layout = _layout(subject)
    kept: list[torch.Tensor | None] = [None] * len(modules)
    with preserved(model), torch.no_grad():
        model.eval()  # dropout is the identity, so attn_drop's output is the softmax itself
        for module in modules:
            if hasattr(module, "fused_attn"):
                module.fused_attn = False  # the explicit path; preserved() puts the flag back
        handles = [
            m.attn_drop.register_forward_hook(_keeper(kept, i)) for i, m in enumerate(modules)
        ]
        try:
            model(subject.prepare(images))
        finally:
            for handle in handles:
                handle.remove()
    tokens = layout.num_prefix + layout.num_patches
    out = []
    for i, weights in enumerate(kept):
        if weights is None:
            raise ValueError(
                f"block {i}'s attention never ran attn_drop: its attention class computes the "
                "weights another way, which capture_attention does not support"
            )
        if weights.ndim != 4 or weights.shape[-2:] != (tokens, tokens):
            raise ValueError(
                f"block {i}'s attention weights are {tuple(weights.shape)}, expected "
                f"(B, heads, {tokens}, {tokens}) for the model's {layout.grid} grid and "
                f"{layout.num_prefix} prefix tokens"
            )
        out.append(weights)
    return out


def _keeper(kept: list[torch.Tensor | None], index: int):
    def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
        kept[index] = output.detach().float().cpu()  # (B, heads, N, N)

    return hook


def _layout(subject: Subject) -> TokenLayout:
    layout = token_layout(subject.model, subject.image_size)
    if layout is None:
        raise ValueError(f"{subject.label} has no token layout: it is not a ViT or a hybrid")
    return layout


# --- maps and rollout ---------------------------------------------------------------------------


def _check(attentions: Sequence[torch.Tensor], layout: TokenLayout) -> None:
    tokens = layout.num_prefix + layout.num_patches
    if len(attentions) == 0:
        raise ValueError("no attention layers given")
    for i, a in enumerate(attentions):
        if a.ndim != 4 or a.shape[-2:] != (tokens, tokens):
            raise ValueError(
                f"attention {i} is {tuple(a.shape)}; the layout needs (B, heads, {tokens}, "
                f"{tokens}) ({layout.num_prefix} prefix tokens + {layout.grid} patches)"
            )


def _with_residual(attention: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, N) -> (B, N, N): heads averaged, identity added for the residual path,
    rows renormalised to sum 1 (Abnar & Zuidema 2020: 0.5 A + 0.5 I)."""
    mean = attention.double().mean(1)  # (B, N, N)
    eye = torch.eye(mean.shape[-1], dtype=mean.dtype, device=mean.device)
    mixed = mean + eye  # (B, N, N)
    return mixed / mixed.sum(-1, keepdim=True)


def _class_row(matrix: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """(B, N, N) -> (B, rows, cols): the class token's row over the patch tokens; a model with
    no prefix token (mean-pooled) gets the mean row, which is what its pooled output gathers."""
    row = matrix[:, 0] if layout.num_prefix > 0 else matrix.mean(1)  # (B, N)
    return row[:, layout.num_prefix :].reshape(-1, *layout.grid)  # (B, rows, cols)


def class_token_maps(attentions: Sequence[torch.Tensor], layout: TokenLayout) -> torch.Tensor:
    """Per layer, where the class token attends: (L, B, rows, cols) float32.

    Heads averaged, identity added for the residual, rows renormalised to 1, then the class
    token's (first prefix token's) row restricted to the patches: a map sums to 1 minus the
    weight the class token keeps on the prefix tokens (itself included).
    """
    _check(attentions, layout)
    maps = [_class_row(_with_residual(a), layout) for a in attentions]
    return torch.stack(maps).float()  # (L, B, rows, cols)


def attention_rollout_matrix(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): the product, deepest layer on the left, of each
    layer's head-averaged, residual-added, renormalised attention; (B, N, N) float32, rows sum
    to 1. Row i says how much of token i's final state flows from each input token."""
    if len(attentions) == 0:
        raise ValueError("no attention layers given")
    rollout: torch.Tensor | None = None
    for attention in attentions:
        layer = _with_residual(attention)  # (B, N, N)
        rollout = layer if rollout is None else layer @ rollout
    assert rollout is not None
    return rollout.float()


def attention_rollout(attentions: Sequence[torch.Tensor], layout: TokenLayout) -> torch.Tensor:
    """The class token's row of the rollout over the patches: (B, rows, cols) float32."""
    _check(attentions, layout)
    return _class_row(attention_rollout_matrix(attentions).double(), layout).float()


# --- distances ----------------------------------------------------------------------------------


def patch_centres(layout: TokenLayout, image_size: int) -> torch.Tensor:
    """(P, 2) float64 (y, x) centres of the patches, row by row, in pixels of the model's input.

    The grid tiles the transformer's input; a hybrid whose conv block halves the image has its
    patches spread over the full ``image_size`` (scaled by image_size / (grid * patch))."""
    (rows, cols), (ph, pw) = layout.grid, layout.patch
    sy, sx = image_size / (rows * ph), image_size / (cols * pw)
    ys = (torch.arange(rows, dtype=torch.float64) + 0.5) * ph * sy  # (rows,)
    xs = (torch.arange(cols, dtype=torch.float64) + 0.5) * pw * sx  # (cols,)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (rows, cols) each
    return torch.stack([grid_y, grid_x], -1).reshape(-1, 2)  # (P, 2)


def mean_attention_distance(
    attentions: Sequence[torch.Tensor], layout: TokenLayout, image_size: int
) -> np.ndarray:
    """Mean attention distance (Dosovitskiy et al. 2021, fig. 7; Raghu et al. 2021) per layer
    and head: (L, heads) float64, in pixels of the model's input.

    For each query patch: the attention-weighted mean Euclidean distance between its centre and
    the key patches' centres; then averaged over query patches and images. Choices: prefix
    tokens (class, distillation, registers) are left out as queries and as keys, since they
    have no position; each query's weights over the patch keys are renormalised to sum 1, so
    the number measures *where among the patches* a patch looks, however much weight it also
    puts on prefix tokens. Uniform attention gives the mean distance between patch centres;
    attending only to itself gives 0.
    """
    _check(attentions, layout)
    centres = patch_centres(layout, image_size)  # (P, 2)
    distance = torch.cdist(centres, centres)  # (P, P)
    p0 = layout.num_prefix
    out = []
    for attention in attentions:
        patches = attention[:, :, p0:, p0:].double()  # (B, heads, P, P)
        weights = patches / patches.sum(-1, keepdim=True).clamp_min(1e-30)
        per_query = (weights * distance).sum(-1)  # (B, heads, P)
        out.append(per_query.mean(dim=(0, 2)))  # (heads,)
    return torch.stack(out).numpy()  # (L, heads)


# --- CNN counterpart: the effective receptive field -------------------------------------------


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


# --- the analysis -------------------------------------------------------------------------------


def run_attention(
    subjects: Sequence[Subject],
    images: ImageSet,
    out_dir: Path,
    *,
    num_images: int = 6,
    progress: bool = True,
) -> dict[str, Any]:
    """Attention maps and rollout for each ViT/hybrid, mean attention distance for each ViT and
    the effective receptive field per stage for each CNN, on one distance-against-depth plot.

    Writes to ``out_dir``: ``attention.json`` (the returned dict), ``attention_distance.png``,
    ``attention_distance.csv`` and ``attention_<label>.png`` per ViT (rows: ``num_images``
    images; columns: the input, each block's class-token map, the rollout). Distances use up to
    256 images of ``images`` (a stratified subset).
    """
    from cnnvit.ui import progress_bar

    _check_inputs(subjects, images, num_images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid_set = images.subset(num_images)
    distance_set = images.subset(DISTANCE_IMAGES)
    labels = [s.label for s in subjects]
    files = dict(zip(labels, file_stems(labels), strict=True))
    models = []
    with progress_bar(progress) as bar:
        for subject in subjects:
            if transformer_of(subject.model) is None:
                erf_set = distance_set.subset(ERF_IMAGES)
                advance = _advancer(bar, subject.label, len(erf_set))
                models.append(_cnn_entry(subject, erf_set, advance))
            else:
                advance = _advancer(bar, subject.label, len(distance_set) + len(grid_set))
                name = f"attention_{files[subject.label]}.png"
                models.append(_vit_entry(subject, distance_set, grid_set, out_dir / name, advance))
    _save_figure(_distance_figure(models), out_dir / DISTANCE_PNG)
    _write_csv(models, out_dir / DISTANCE_CSV)
    result = {
        "analysis": "attention",
        "settings": {
            "images": len(images),
            "distance_images": len(distance_set),
            "erf_images": min(ERF_IMAGES, len(distance_set)),
            "grid_images": len(grid_set),
            "batch_size": BATCH_SIZE,
            "erf_mass_fraction": MASS_FRACTION,
            "devices": {s.label: str(s.device) for s in subjects},
            "dataset": images.name,
        },
        "models": models,
        "figures": {
            "distance": DISTANCE_PNG,
            "grids": {m["label"]: m["figure"] for m in models if m.get("figure")},
        },
        "tables": {"distance": DISTANCE_CSV},
    }
    (out_dir / ATTENTION_JSON).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _advancer(bar: Any, label: str, images: int) -> Callable[[int], None]:
    """A function that advances this model's progress task by a number of images (or does
    nothing without a progress bar)."""
    if bar is None:
        return lambda done: None
    task = bar.add_task(f"attention {label}", total=images, rate="")
    return lambda done: bar.advance(task, done)


def _check_inputs(subjects: Sequence[Subject], images: ImageSet, num_images: int) -> None:
    if not subjects:
        raise ValueError("run_attention needs at least one model")
    labels = [s.label for s in subjects]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique, got {labels}; give each a label")
    if len(images) == 0:
        raise ValueError("run_attention needs at least one image")
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")


def _vit_entry(
    subject: Subject,
    distance_set: ImageSet,
    grid_set: ImageSet,
    figure: Path,
    advance: Callable[[int], None],
) -> dict[str, Any]:
    layout = _layout(subject)
    size = subject.image_size
    total: np.ndarray | None = None
    batch_size = _attention_batch_size(subject, layout)
    for batch, _ in distance_set.batches(batch_size):
        part = mean_attention_distance(capture_attention(subject, batch), layout, size)
        total = part * len(batch) if total is None else total + part * len(batch)
        advance(len(batch))
    assert total is not None
    distance = total / len(distance_set)  # (L, heads)
    attentions = capture_attention(subject, grid_set.images)
    maps = class_token_maps(attentions, layout)  # (L, B, rows, cols)
    rollout = attention_rollout(attentions, layout)  # (B, rows, cols)
    predicted = subject.logits(grid_set.images).argmax(1)
    _save_figure(_grid_figure(subject, grid_set, predicted, maps, rollout), figure)
    advance(len(grid_set))
    layers = vit_block_layers(subject.model)  # blocks.i, or vit.blocks.i in a hybrid
    depth = len(layers)
    centres = patch_centres(layout, size)
    return {
        "label": subject.label,
        "family": subject.family,
        "kind": "attention",
        "image_size": size,
        "grid": list(layout.grid),
        "num_prefix": layout.num_prefix,
        "patch": list(layout.patch),
        "layers": layers,
        "relative_depth": [(i + 1) / depth for i in range(depth)],
        "heads": int(distance.shape[1]),
        "batch_size": batch_size,
        "distance_px": distance.tolist(),
        "mean_distance_px": distance.mean(1).tolist(),
        "uniform_distance_px": float(torch.cdist(centres, centres).mean()),
        "half_diagonal_px": size * math.sqrt(2) / 2,
        "figure": figure.name,
    }


def _attention_batch_size(subject: Subject, layout: TokenLayout) -> int:
    """Images per pass such that the captured weights of all blocks, (B, heads, N, N) float32
    each, stay under ATTENTION_BYTES (ViT-B/16 at 224 px: 12 images; vit_mini: 64)."""
    tokens = layout.num_prefix + layout.num_patches
    per_image = sum(int(getattr(m, "num_heads", 1)) for m in attention_modules(subject.model))
    per_image *= tokens * tokens * 4
    return max(1, min(BATCH_SIZE, ATTENTION_BYTES // per_image))


def _cnn_entry(
    subject: Subject, erf_set: ImageSet, advance: Callable[[int], None]
) -> dict[str, Any]:
    stages = receptive_field_distance(subject, erf_set)
    for i, stage in enumerate(stages):
        stage["relative_depth"] = (i + 1) / len(stages)
    advance(len(erf_set))
    return {
        "label": subject.label,
        "family": subject.family,
        "kind": "receptive_field",
        "image_size": subject.image_size,
        "layers": [s["layer"] for s in stages],
        "stages": stages,
        "half_diagonal_px": subject.image_size * math.sqrt(2) / 2,
        "figure": None,
    }


def _write_csv(models: list[dict[str, Any]], path: Path) -> None:
    header = ["model", "kind", "layer", "relative_depth", "head", "distance_px", "radius90_px",
              "theoretical_rf_px"]  # fmt: skip
    rows = []
    for m in models:
        if m["kind"] == "attention":
            for layer, depth, heads in zip(
                m["layers"], m["relative_depth"], m["distance_px"], strict=True
            ):
                rows += [
                    [m["label"], "attention", layer, depth, h, d, "", ""]
                    for h, d in enumerate(heads)
                ]
        else:
            for s in m["stages"]:
                rf = "" if s["theoretical_rf_px"] is None else s["theoretical_rf_px"]
                rows.append([m["label"], "receptive_field", s["layer"], s["relative_depth"], "",
                             s["erf_distance_px"], s["erf_radius90_px"], rf])  # fmt: skip
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


# --- figures ------------------------------------------------------------------------------------


def _save_figure(fig: Figure, path: Path) -> None:
    from cnnvit.plotting import save_png

    save_png(fig, path)


def _style():
    from cnnvit.plotting import STYLE

    return mpl.rc_context(STYLE)


def _overlay_maps(maps: torch.Tensor, size: int) -> np.ndarray:
    """(B, rows, cols) -> (B, size, size) upsampled bilinearly, each scaled to [0, 1]."""
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear")[:, 0]
    low = up.flatten(1).min(1).values.view(-1, 1, 1)
    high = up.flatten(1).max(1).values.view(-1, 1, 1)
    return ((up - low) / (high - low).clamp_min(1e-12)).numpy()  # (B, size, size)


def _grid_figure(
    subject: Subject,
    images: ImageSet,
    predicted: torch.Tensor,
    maps: torch.Tensor,
    rollout: torch.Tensor,
) -> Figure:
    """Rows: images; columns: the input (true class, prediction), each block's class-token map,
    the rollout; maps overlaid on the input."""
    from cnnvit.plotting import plain

    size = subject.image_size
    rgb = subject.unnormalize(subject.prepare(images.images)).permute(0, 2, 3, 1).cpu().numpy()
    panels = [_overlay_maps(m, size) for m in maps] + [_overlay_maps(rollout, size)]
    titles = [f"block {i + 1}" for i in range(len(maps))] + ["rollout"]
    rows, cols = len(images), 1 + len(panels)
    with _style():
        fig = Figure(figsize=(1.35 * cols, 1.5 * rows + 0.5), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        for r in range(rows):
            truth = images.classes[int(images.labels[r])]
            guess = subject.classes[int(predicted[r])]
            _show(axes[r, 0], rgb[r], None, "input" if r == 0 else "")
            axes[r, 0].set_xlabel(plain(f"{truth}\n→ {guess}"), fontsize=7)
            for c, panel in enumerate(panels, start=1):
                _show(axes[r, c], rgb[r], panel[r], titles[c - 1] if r == 0 else "")
        fig.suptitle(plain(f"{subject.label}: class-token attention per block and rollout"))
    return fig


def _show(ax, image: np.ndarray, heat: np.ndarray | None, title: str) -> None:
    ax.imshow(image, interpolation="nearest")
    if heat is not None:
        ax.imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize=8)


def _distance_figure(models: list[dict[str, Any]]) -> Figure:
    """Mean attention distance per head (dots) and mean (line) against relative depth per ViT,
    each CNN's effective receptive field distance per stage (squares, dashed), half the image
    diagonal for scale."""
    from cnnvit.plotting import model_colors, plain

    colors = model_colors([m["label"] for m in models])
    with _style():
        fig = Figure(figsize=(7.0, 4.4), layout="constrained")
        ax = fig.add_subplot()
        for m in models:
            color = colors[m["label"]]
            if m["kind"] == "attention":
                depth = np.asarray(m["relative_depth"])
                heads = np.asarray(m["distance_px"])  # (L, heads)
                for h in range(heads.shape[1]):
                    ax.scatter(depth, heads[:, h], s=14, color=color, alpha=0.45, lw=0)
                ax.plot(depth, heads.mean(1), "-o", color=color, ms=4,
                        label=plain(f"{m['label']}: attention distance"))  # fmt: skip
                ax.axhline(m["uniform_distance_px"], color=color, ls=":", lw=1,
                           label=plain(f"{m['label']}: uniform attention"))  # fmt: skip
            else:
                depth = [s["relative_depth"] for s in m["stages"]]
                erf = [s["erf_distance_px"] for s in m["stages"]]
                ax.plot(depth, erf, "--s", color=color, ms=5,
                        label=plain(f"{m['label']}: effective receptive field"))  # fmt: skip
        for half in sorted({m["half_diagonal_px"] for m in models}):
            ax.axhline(half, color="0.55", lw=1)
            ax.annotate(f"half the image diagonal ({half:.1f} px)", (0.01, half),
                        xycoords=("axes fraction", "data"), va="bottom", fontsize=8,
                        color="0.4")  # fmt: skip
        ax.set_xlim(0, 1.05)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("relative depth (block or stage / number of them)")
        ax.set_ylabel("mean distance (pixels of the model's input)")
        ax.set_title("How far each layer looks")
        ax.legend(fontsize=8, loc="lower right")
    return fig
