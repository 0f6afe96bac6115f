"""Which layers to look at, named from the model itself.

Stage outputs come from timm's ``feature_info`` (every timm CNN, ViT and the cnnvit built-ins
declare it); residual blocks are the children of each stage's block sequence; ViT blocks are
``blocks.i``. The token grid and the number of prefix tokens (class token, distillation token,
registers) are read from the transformer's ``patch_embed`` and ``num_prefix_tokens`` — never
assumed to be 14 x 14 with one class token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnvit.analyze.hooks import named_module

__all__ = [
    "LAYER_SETS",
    "TokenLayout",
    "block_layers",
    "conv_layers",
    "every_layer",
    "resolve_layers",
    "stage_layers",
    "token_layout",
    "transformer_of",
    "vit_block_layers",
]

LAYER_SETS = ("stages", "blocks", "convs", "all")


def transformer_of(model: nn.Module) -> nn.Module | None:
    """The timm ``VisionTransformer`` in ``model``: the model itself, a hybrid's ``vit``, or None
    for a CNN."""
    if hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed"):
        return model
    inner = getattr(model, "vit", None)
    if inner is not None and hasattr(inner, "num_prefix_tokens"):
        return inner
    return None


def _prefix(model: nn.Module) -> str:
    """Module-name prefix of the transformer inside ``model`` ('' or 'vit.')."""
    vit = transformer_of(model)
    if vit is None or vit is model:
        return ""
    for name, module in model.named_modules():
        if module is vit:
            return name + "."
    raise ValueError("the transformer is not a submodule of the model")


@dataclass(frozen=True)
class TokenLayout:
    """How a ViT lays its tokens out: ``num_prefix`` tokens, then a ``grid`` of patches, row by
    row, each ``patch`` pixels of the transformer's input."""

    grid: tuple[int, int]  # (rows, cols) of patches
    num_prefix: int  # class / distillation / register tokens before the patches
    patch: tuple[int, int]  # patch size in pixels of the transformer's input

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens -> (B, C, rows, cols) patch map, prefix tokens dropped."""
        if tokens.ndim != 3 or tokens.shape[1] != self.num_prefix + self.num_patches:
            raise ValueError(
                f"expected (B, {self.num_prefix} + {self.num_patches}, C) tokens, "
                f"got {tuple(tokens.shape)}"
            )
        patches = tokens[:, self.num_prefix :]  # (B, rows*cols, C)
        b, _, c = patches.shape
        return patches.transpose(1, 2).reshape(b, c, *self.grid)  # (B, C, rows, cols)


def token_layout(model: nn.Module, image_size: int | None = None) -> TokenLayout | None:
    """The token layout of ``model``'s transformer for square inputs of ``image_size`` pixels
    (None: the size it was built for); None for a CNN.

    A hybrid's conv block changes the transformer's input size; the grid is then the transformer's
    own (its ``patch_embed.grid_size``), which is only right at the model's built size.
    """
    vit = transformer_of(model)
    if vit is None:
        return None
    embed = vit.patch_embed
    patch = tuple(int(p) for p in embed.patch_size)
    grid = tuple(int(g) for g in embed.grid_size)
    if image_size is not None and vit is model:
        grid = (image_size // patch[0], image_size // patch[1])
    return TokenLayout(grid=grid, num_prefix=int(vit.num_prefix_tokens), patch=patch)


def stage_layers(model: nn.Module) -> list[str]:
    """Module names of the model's stage outputs, shallow to deep (timm's ``feature_info``)."""
    info = getattr(model, "feature_info", None)
    if info is None:
        raise ValueError(
            f"{type(model).__name__} declares no feature_info; name its layers explicitly"
        )
    names = [f["module"] for f in info] if isinstance(info, list) else list(info.module_name())
    return [n for n in names if n]


def vit_block_layers(model: nn.Module) -> list[str]:
    """``blocks.i`` (or ``vit.blocks.i`` in a hybrid) for every transformer block."""
    vit = transformer_of(model)
    if vit is None:
        return []
    prefix = _prefix(model)
    return [f"{prefix}blocks.{i}" for i in range(len(vit.blocks))]


def block_layers(model: nn.Module) -> list[str]:
    """Every block: ViT blocks, or each residual block of each CNN stage (the children of the
    stage's block sequence: ``layer2.0``, ``stages.1.blocks.0``); a hybrid's conv block first."""
    vit_blocks = vit_block_layers(model)
    if vit_blocks:
        before = [n for n in stage_layers(model) if n not in vit_blocks and "blocks" not in n]
        return before + vit_blocks
    out: list[str] = []
    for stage in stage_layers(model):
        seq = _block_sequence(named_module(model, stage))
        if seq is None:
            out.append(stage)  # a stem or a stage that is one module
        else:
            out += [f"{stage}.{seq[0]}{child}" for child, _ in seq[1].named_children()]
    return out


def _block_sequence(stage: nn.Module) -> tuple[str, nn.Sequential] | None:
    """The stage itself if it is a Sequential of blocks, else its ``blocks`` child."""
    if isinstance(stage, nn.Sequential) and len(stage) > 0:
        return "", stage
    blocks = getattr(stage, "blocks", None)
    if isinstance(blocks, nn.Sequential):
        return "blocks.", blocks
    return None


_CONV = (nn.Conv1d, nn.Conv2d)
_NORM = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)
_ACT = (nn.ReLU, nn.GELU, nn.SiLU, nn.ReLU6, nn.Hardswish, nn.LeakyReLU)


def conv_layers(model: nn.Module) -> list[str]:
    """Every convolution, in registration order (which is forward order for timm models)."""
    return [n for n, m in model.named_modules() if isinstance(m, _CONV)]


def every_layer(model: nn.Module) -> list[str]:
    """Convolutions, linear layers, normalisations and activations, in registration order
    (forward order for timm models); the classifier head excluded. A module called twice in one
    forward pass (torchvision's shared ``relu``) is recorded at its last call."""
    head = {n for n, _ in _classifier_modules(model)}
    keep = (*_CONV, *_NORM, *_ACT, nn.Linear)
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, keep) and not any(n == h or n.startswith(h + ".") for h in head)
    ]
    return names


def _classifier_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    modules = dict(model.named_modules())
    return [(n, modules[n]) for n in names if n in modules]


def resolve_layers(model: nn.Module, which: str | Sequence[str]) -> list[str]:
    """Layer names for ``which``: one of :data:`LAYER_SETS`, or explicit module names (checked)."""
    if isinstance(which, str):
        if which == "stages":
            return stage_layers(model)
        if which == "blocks":
            return block_layers(model)
        if which == "convs":
            return conv_layers(model)
        if which == "all":
            return every_layer(model)
        raise ValueError(
            f"unknown layer set {which!r}: use one of {', '.join(LAYER_SETS)} or module names"
        )
    for name in which:
        named_module(model, name)
    return list(which)
