"""How far a ViT looks: per-layer class-token attention maps, attention rollout and the mean
attention distance per layer and head; beside it, for CNNs, the effective receptive field of each
stage on the same pixel scale (:mod:`cnnvit.analyze.receptive_field`).

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
:func:`~cnnvit.analyze.layers.token_layout`. Numbers and pictures (arrays) only:
:mod:`cnnvit.analyze.analyses.attention` draws the figures and writes the files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnvit.analyze.grids import model_view
from cnnvit.analyze.hooks import preserved
from cnnvit.analyze.images import ImageSet
from cnnvit.analyze.layers import (
    TokenLayout,
    token_layout,
    transformer_of,
    vit_block_layers,
)
from cnnvit.analyze.receptive_field import ERF_IMAGES, MASS_FRACTION, receptive_field_distance
from cnnvit.analyze.subject import Subject
from cnnvit.ui import progress_bar

__all__ = [
    "BATCH_SIZE",
    "AttentionRun",
    "ReceptiveFields",
    "VitAttention",
    "attention_modules",
    "attention_rollout",
    "attention_rollout_matrix",
    "attention_run",
    "capture_attention",
    "class_token_maps",
    "mean_attention_distance",
    "patch_centres",
]

# Distances are averages: 256 images pin them to well under a pixel at a bounded cost.
DISTANCE_IMAGES = 256
BATCH_SIZE = 64
ATTENTION_BYTES = 256 * 2**20  # bound on the attention weights one pass keeps (all blocks)


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


# --- the analysis: every model's reach on the same images -------------------------------------


@dataclass
class VitAttention:
    """A ViT's (or hybrid's) attention: distances per block and head, and its grid's pictures."""

    kind: ClassVar[str] = "attention"

    grid: tuple[int, int]  # (rows, cols) of patches
    num_prefix: int  # class / distillation / register tokens
    patch: tuple[int, int]  # patch size in pixels of the transformer's input
    layers: list[str]  # the transformer blocks, shallow to deep
    distance: np.ndarray  # (L, heads) float64: mean attention distance, px of the input
    uniform_distance: float  # what uniform attention over the patches would give, px
    batch_size: int  # images per attention pass
    inputs: np.ndarray  # (G, S, S, 3) float32 in [0, 1]: what the model sees of the grid
    panels: np.ndarray  # (L + 1, G, S, S) in [0, 1]: each block's class-token map, the rollout
    predicted: np.ndarray  # (G,) class indices


@dataclass
class ReceptiveFields:
    """A CNN's effective receptive field per stage (:func:`receptive_field_distance`)."""

    kind: ClassVar[str] = "receptive_field"

    stages: list[dict[str, Any]]


@dataclass
class AttentionRun:
    """Every model's reach, in subject order, and the images it was measured on."""

    models: list[VitAttention | ReceptiveFields]
    distance_images: int  # images of the attention distances
    erf_images: int  # images of the effective receptive fields
    grid_labels: np.ndarray  # (G,) classes of the grids' images
    batch_size: int = BATCH_SIZE  # images per attention pass, at most
    mass_fraction: float = MASS_FRACTION  # of the gradient inside a receptive field's radius


def attention_run(
    subjects: Sequence[Subject], images: ImageSet, *, num_images: int = 6, progress: bool = True
) -> AttentionRun:
    """Attention maps, rollout and mean attention distance for each ViT/hybrid, the effective
    receptive field per stage for each CNN. Distances use up to :data:`DISTANCE_IMAGES` of
    ``images`` (a stratified subset), receptive fields :data:`ERF_IMAGES` of those, the grids
    ``num_images``."""
    if len(images) == 0:
        raise ValueError("the attention analysis needs at least one image")
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    grid_set = images.subset(num_images)
    distance_set = images.subset(DISTANCE_IMAGES)
    erf_set = distance_set.subset(ERF_IMAGES)
    models: list[VitAttention | ReceptiveFields] = []
    with progress_bar(progress) as bar:
        for subject in subjects:
            if transformer_of(subject.model) is None:
                advance = _advancer(bar, subject.label, len(erf_set))
                models.append(ReceptiveFields(_stages(subject, erf_set, advance)))
            else:
                advance = _advancer(bar, subject.label, len(distance_set) + len(grid_set))
                models.append(_vit_attention(subject, distance_set, grid_set, advance))
    return AttentionRun(models, len(distance_set), len(erf_set), grid_set.labels.numpy())


def _advancer(bar: Any, label: str, images: int) -> Callable[[int], None]:
    """A function that advances this model's progress task by a number of images (or does
    nothing without a progress bar)."""
    if bar is None:
        return lambda done: None
    task = bar.add_task(f"attention {label}", total=images, rate="")
    return lambda done: bar.advance(task, done)


def _vit_attention(
    subject: Subject, distance_set: ImageSet, grid_set: ImageSet, advance: Callable[[int], None]
) -> VitAttention:
    layout = _layout(subject)
    size = subject.image_size
    total: np.ndarray | None = None
    batch_size = _attention_batch_size(subject, layout)
    for batch, _ in distance_set.batches(batch_size):
        part = mean_attention_distance(capture_attention(subject, batch), layout, size)
        total = part * len(batch) if total is None else total + part * len(batch)
        advance(len(batch))
    assert total is not None
    attentions = capture_attention(subject, grid_set.images)
    maps = class_token_maps(attentions, layout)  # (L, G, rows, cols)
    rollout = attention_rollout(attentions, layout)  # (G, rows, cols)
    panels = [_overlay_maps(m, size) for m in maps] + [_overlay_maps(rollout, size)]
    predicted = subject.logits(grid_set.images).argmax(1).numpy()  # (G,)
    advance(len(grid_set))
    centres = patch_centres(layout, size)  # (P, 2)
    return VitAttention(
        grid=layout.grid,
        num_prefix=layout.num_prefix,
        patch=layout.patch,
        layers=vit_block_layers(subject.model),  # blocks.i, or vit.blocks.i in a hybrid
        distance=total / len(distance_set),  # (L, heads)
        uniform_distance=float(torch.cdist(centres, centres).mean()),
        batch_size=batch_size,
        inputs=model_view(subject, grid_set.images),  # (G, S, S, 3)
        panels=np.stack(panels),  # (L + 1, G, S, S)
        predicted=predicted,
    )


def _attention_batch_size(subject: Subject, layout: TokenLayout) -> int:
    """Images per pass such that the captured weights of all blocks, (B, heads, N, N) float32
    each, stay under ATTENTION_BYTES (ViT-B/16 at 224 px: 12 images; vit_mini: 64)."""
    tokens = layout.num_prefix + layout.num_patches
    per_image = sum(int(getattr(m, "num_heads", 1)) for m in attention_modules(subject.model))
    per_image *= tokens * tokens * 4
    return max(1, min(BATCH_SIZE, ATTENTION_BYTES // per_image))


def _stages(
    subject: Subject, erf_set: ImageSet, advance: Callable[[int], None]
) -> list[dict[str, Any]]:
    stages = receptive_field_distance(subject, erf_set)
    advance(len(erf_set))
    return stages


def _overlay_maps(maps: torch.Tensor, size: int) -> np.ndarray:
    """(B, rows, cols) -> (B, size, size) upsampled bilinearly, each scaled to [0, 1]."""
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear")[:, 0]
    low = up.flatten(1).min(1).values.view(-1, 1, 1)
    high = up.flatten(1).max(1).values.view(-1, 1, 1)
    return ((up - low) / (high - low).clamp_min(1e-12)).numpy()  # (B, size, size)
