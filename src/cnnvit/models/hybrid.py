"""Seed 000's hybrid ViTs (§4.4): a small convolutional block in front of a timm ViT.

* ``vit_convblock_base_patch16`` (§4.4): two 3 x 3 convolutions (padding 1), each followed by
  ReLU, 3 -> C -> 3 channels (``conv_chs=64``), no downsampling, in front of ViT-B/16
  (``vit_base_patch16_224``: embed 768, depth 12, 12 heads, patch 16, 224 px).
* ``vit_convblock_tiny_patch16`` (§4.4.1, appendix B): conv 3 -> 32, BN, ReLU, conv 32 -> 64, BN,
  ReLU, MaxPool2d(2), conv 64 -> 3, BN, ReLU (all 3 x 3, padding 1), in front of ViT-Tiny/16
  (``vit_tiny_patch16_224``: embed 192, depth 12, 3 heads). The max-pool halves the image, so at
  224 px the ViT sees 112 px: a 7 x 7 grid of 16-px patches.

``img_size=`` is always the image the *hybrid* receives; the inner ViT is built for
``img_size // reduction``. ViT overrides (``embed_dim``, ``depth``, ``num_heads``, ``patch_size``,
``drop_path_rate``...) pass through to timm's ViT factory.

Weights: ``vit_weights=FILE`` loads a timm-layout ViT state dict (safetensors, or a torch file
read with ``weights_only=True``) into the inner ``vit``; its classifier is dropped when the class
count differs and its position embedding resampled when the token grid differs (14 x 14 -> 7 x 7
for the tiny hybrid at 224). There are no published hybrid weights: ``pretrained=True`` without
a file means the inner ViT's published weights (``vit_base_patch16_224`` / ``vit_tiny_patch16_224``
from the hub or its local cache, fetched through the registry, so offline it fails in seconds
with a message naming ``vit_weights``), loaded the same way; the conv block keeps its fresh init.
``pretrained=True, vit_weights=FILE`` is the same as ``vit_weights=FILE``. A whole hybrid
checkpoint (``conv_block.*`` + ``vit.*``) loads through the registry's ``weights=``.

Freezing (:mod:`cnnvit.models.surgery`): the blocks are the ViT's transformer blocks, the head is
``vit.head`` + ``vit.norm`` / ``vit.fc_norm``, and the conv block is part of the body, so
``freeze_all_but_last_blocks(model, k)`` freezes it (its BatchNorms become frozen BatchNorms).
Seed 000 trains the conv block: ``freeze_all_but_last_blocks(model, k, also_trainable=
["conv_block"])``, in a config ``model.freeze.also_trainable: [conv_block]``.

Registered with timm: ``vit_convblock_base_patch16`` and ``vit_convblock_tiny_patch16``.
"""

# No `from __future__ import annotations` here: torch.fx copies forward()'s annotations into the
# code it generates as written, and a string annotation ('torch.Tensor') becomes an unknown type
# name when that traced graph is then scripted (timm's fx + TorchScript path).
from pathlib import Path
from typing import Any, Literal

import timm
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from cnnvit.models.hub import ModelError, load_weights_file, published_state_dict

# Built-ins whose `pretrained=True` means their inner ViT's published weights.
PRETRAINED_FROM_INNER_VIT = ("vit_convblock_base_patch16", "vit_convblock_tiny_patch16")

__all__ = [
    "PRETRAINED_FROM_INNER_VIT",
    "ConvStemViT",
    "appendix_b_conv_block",
    "load_vit_weights",
    "two_conv_block",
]

ConvBlockKind = Literal["two_conv", "appendix_b"]


def _cfg(description: str) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": True,  # takes img_size (the hybrid's input side)
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv_block.0",
        "classifier": "vit.head",
        "license": "apache-2.0",
        "description": description,
    }


default_cfgs = generate_default_cfgs(
    {
        "vit_convblock_base_patch16": _cfg(
            "seed 000 §4.4: two 3x3 conv+ReLU (3->64->3, no downsampling) before ViT-B/16"
        ),
        "vit_convblock_tiny_patch16": _cfg(
            "seed 000 §4.4.1/app. B: conv-BN-ReLU block with max-pool (224->112) before ViT-Ti/16"
        ),
    }
)


def two_conv_block(
    in_chans: int = 3, conv_chs: int = 64, device: Any = None, dtype: Any = None
) -> nn.Sequential:
    """Seed 000 §4.4: conv 3x3 (in -> C), ReLU, conv 3x3 (C -> 3), ReLU; padding 1, stride 1."""
    dd = {"device": device, "dtype": dtype}
    return nn.Sequential(
        nn.Conv2d(in_chans, conv_chs, kernel_size=3, padding=1, **dd),
        nn.ReLU(inplace=True),
        nn.Conv2d(conv_chs, 3, kernel_size=3, padding=1, **dd),
        nn.ReLU(inplace=True),
    )


def appendix_b_conv_block(
    in_chans: int = 3, device: Any = None, dtype: Any = None
) -> nn.Sequential:
    """Seed 000 appendix B, verbatim: halves the image (MaxPool2d(2)) and returns 3 channels."""
    dd = {"device": device, "dtype": dtype}
    return nn.Sequential(
        nn.Conv2d(in_chans, 32, kernel_size=3, padding=1, **dd),
        nn.BatchNorm2d(32, **dd),
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, kernel_size=3, padding=1, **dd),
        nn.BatchNorm2d(64, **dd),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 3, kernel_size=3, padding=1, **dd),
        nn.BatchNorm2d(3, **dd),
        nn.ReLU(inplace=True),
    )


class ConvStemViT(nn.Module):
    """A conv block (``conv_block``) in front of a timm ``VisionTransformer`` (``vit``).

    Args:
        vit_arch: the timm ViT architecture name (``vit_base_patch16_224``...).
        conv_block: ``'two_conv'`` (seed 000 §4.4) or ``'appendix_b'`` (seed 000 appendix B).
        conv_chs: hidden channels of ``'two_conv'``.
        img_size: the side of the image the hybrid receives; the ViT is built for
            ``img_size // reduction`` (reduction 2 for ``'appendix_b'``).
        in_chans: input channels of the conv block (the ViT always gets 3).
        num_classes: classifier outputs (0: no classifier).
        **vit_kwargs: ViT overrides passed to timm's factory (``embed_dim``, ``depth``...).
    """

    cnnvit_family = "hybrid"
    # TorchScript compiles properties unless told not to; these are Python-side aliases
    __jit_unused_properties__ = ("blocks", "norm", "fc_norm", "patch_embed")

    def __init__(
        self,
        vit_arch: str = "vit_base_patch16_224",
        conv_block: ConvBlockKind = "two_conv",
        conv_chs: int = 64,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        **vit_kwargs: Any,
    ) -> None:
        super().__init__()
        # timm's factory passes device= / dtype= (e.g. "meta"); the ViT gets them in vit_kwargs
        dd = {"device": vit_kwargs.get("device"), "dtype": vit_kwargs.get("dtype")}
        if conv_block == "two_conv":
            self.conv_block = two_conv_block(in_chans, conv_chs, **dd)
            reduction = 1
        elif conv_block == "appendix_b":
            self.conv_block = appendix_b_conv_block(in_chans, **dd)
            reduction = 2
        else:
            raise ValueError(f"unknown conv_block {conv_block!r}: use 'two_conv' or 'appendix_b'")
        self.conv_reduction = reduction
        self.in_chans = in_chans
        self.img_size = img_size
        vit_img_size = _inner_size(vit_arch, img_size, reduction, vit_kwargs.get("patch_size", 16))
        self.vit = timm.create_model(
            vit_arch,
            pretrained=False,
            img_size=vit_img_size,
            in_chans=3,
            num_classes=num_classes,
            **vit_kwargs,
        )
        self.num_classes = self.vit.num_classes
        self.num_features = self.vit.num_features
        self.head_hidden_size = getattr(self.vit, "head_hidden_size", self.num_features)
        patch = self.vit.patch_embed.patch_size[0]
        self.feature_info = [
            dict(module="conv_block", num_chs=3, reduction=reduction),
            *(
                dict(
                    module=f"vit.blocks.{i}",
                    num_chs=self.vit.embed_dim,
                    reduction=patch * reduction,
                )
                for i in range(len(self.vit.blocks))
            ),
        ]

    # surgery and model_family look for these names on the model (properties: no duplicate keys)
    @property
    def blocks(self) -> nn.Sequential:
        return self.vit.blocks

    @property
    def norm(self) -> nn.Module:
        return self.vit.norm

    @property
    def fc_norm(self) -> nn.Module:
        return self.vit.fc_norm

    @property
    def patch_embed(self) -> nn.Module:
        return self.vit.patch_embed

    # --- timm contract ----------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"vit.{name}" for name in self.vit.no_weight_decay()}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^conv_block|^vit\.cls_token|^vit\.pos_embed|^vit\.patch_embed|^vit\.reg_token",
            blocks=[(r"^vit\.blocks\.(\d+)", None), (r"^vit\.norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.vit.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.vit.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.vit.reset_classifier(num_classes, global_pool)
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, N, D) ViT tokens."""
        return self.vit.forward_features(self.conv_block(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.vit.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        **kwargs: Any,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feature maps in :attr:`feature_info` order: index 0 is the conv block's output
        (B, 3, H/r, W/r), index i >= 1 the output of ViT block i-1 (NCHW unless ``output_fmt``
        says 'NLC'). ``indices`` selects over those ``1 + depth`` maps, as timm's (an int: the
        last n)."""
        take, _ = feature_take_indices(len(self.feature_info), indices)
        y = self.conv_block(x)
        intermediates = [y] if 0 in take else []
        vit_indices = [i - 1 for i in take if i > 0]
        if not vit_indices:
            return (
                intermediates if intermediates_only else (self.forward_features(x), intermediates)
            )
        out = self.vit.forward_intermediates(
            y,
            indices=vit_indices,
            norm=norm,
            stop_early=stop_early,
            output_fmt=output_fmt,
            intermediates_only=intermediates_only,
            **kwargs,
        )
        if intermediates_only:
            return intermediates + list(out)
        final, vit_maps = out
        return final, intermediates + list(vit_maps)

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the ViT blocks after the last wanted one (indices over ``feature_info``)."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        # a list, not an int (timm reads an int as "the last n"); at least ViT block 0 is kept
        # (timm's ViT cannot drop all its blocks), so index 0 (the conv block) prunes to one block
        self.vit.prune_intermediate_layers(
            [max(max_index - 1, 0)], prune_norm=prune_norm, prune_head=prune_head
        )
        return take


def _inner_size(
    vit_arch: str, img_size: int | tuple[int, int], reduction: int, patch_size: int
) -> int | tuple[int, int]:
    """The ViT's image size, with a clear error when the geometry does not work out.

    ``img_size`` is an int or an (H, W) pair (timm passes the cfg's ``input_size[-2:]``)."""
    sides = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(sides) != 2 or not all(isinstance(s, int) and s > 0 for s in sides):
        raise ValueError(f"img_size must be an int or an (H, W) pair of ints, got {img_size!r}")
    for side in sides:
        if side % reduction:
            raise ValueError(
                f"img_size {img_size} must be divisible by {reduction}: the conv block's "
                f"max-pool halves the image before {vit_arch}"
            )
        if (side // reduction) % patch_size:
            raise ValueError(
                f"img_size {img_size}: the conv block gives {vit_arch} {side // reduction} px, "
                f"not a multiple of its patch size {patch_size}; use an img_size divisible by "
                f"{reduction * patch_size}"
            )
    inner = (sides[0] // reduction, sides[1] // reduction)
    return inner[0] if isinstance(img_size, int) else inner


def load_vit_weights(vit: nn.Module, path: str | Path) -> None:
    """Load a timm-layout ViT state dict from ``path`` into ``vit``, in place.

    The classifier is dropped when its shape differs (the model's head keeps its fresh init);
    ``pos_embed`` is resampled to the model's token grid with timm's ``resample_abs_pos_embed``.

    Raises:
        ModelError: the file is unreadable, or does not hold this ViT's (non-head) weights.
    """
    _load_vit_state(vit, dict(load_weights_file(path)), str(path))


def _load_vit_state(vit: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """:func:`load_vit_weights` for a state dict in memory (``source`` names it in errors)."""
    own = vit.state_dict()
    pos = state_dict.get("pos_embed")
    if pos is not None and "pos_embed" in own and pos.shape != own["pos_embed"].shape:
        prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
        state_dict["pos_embed"] = resample_abs_pos_embed(
            pos, new_size=vit.patch_embed.grid_size, num_prefix_tokens=prefix
        )
    head = [k for k in state_dict if k.startswith("head.")]
    if any(k not in own or state_dict[k].shape != own[k].shape for k in head):
        for k in head:
            del state_dict[k]
    missing = [k for k in own if k not in state_dict and not k.startswith("head.")]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in state_dict if k in own and state_dict[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        problems = [
            f"{len(keys)} {what}, e.g. {keys[:5]}"
            for keys, what in (
                (missing, "tensors missing"),
                (unexpected, "unexpected tensors"),
                (wrong, "tensors of the wrong shape"),
            )
            if keys
        ]
        raise ModelError(
            f"ViT weights in {source} do not fit the hybrid's ViT: {'; '.join(problems)}"
        )
    vit.load_state_dict(state_dict, strict=False)


def _create_hybrid(
    variant: str, vit_arch: str, conv_block: ConvBlockKind, pretrained: bool, **kwargs: Any
) -> ConvStemViT:
    vit_weights = kwargs.pop("vit_weights", None)
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    hub_vit = None
    if pretrained and not overlay.get("file"):
        # no published hybrid weights: "pretrained" means the inner ViT's, from a file or the hub
        pretrained = False
        if vit_weights is None:
            hub_vit = _published_vit_state(variant, vit_arch)
    out_indices = kwargs.pop("out_indices", 3)  # features_only: the last 3 maps, as timm ViTs
    model = build_model_with_cfg(
        ConvStemViT,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        vit_arch=vit_arch,
        conv_block=conv_block,
        **kwargs,
    )
    if vit_weights is not None:
        load_vit_weights(model.vit, vit_weights)
    elif hub_vit is not None:
        _load_vit_state(model.vit, hub_vit, f"the published {vit_arch}")
    return model


def _published_vit_state(variant: str, vit_arch: str) -> dict[str, torch.Tensor]:
    """The published weights of ``vit_arch`` (hub or local cache; fails in seconds offline),
    as a state dict for :func:`_load_vit_state`."""
    try:
        return published_state_dict(vit_arch)
    except ModelError as err:
        raise ModelError(
            f"{variant}: no pretrained {vit_arch} for its transformer ({err}); or pass a local "
            f"timm ViT file: vit_weights=path/to/{vit_arch}.safetensors"
        ) from err


@register_model
def vit_convblock_base_patch16(pretrained: bool = False, **kwargs: Any) -> ConvStemViT:
    """Seed 000 §4.4: two 3x3 conv + ReLU (3 -> ``conv_chs``=64 -> 3, no downsampling) before
    ViT-B/16. 86,571,179 parameters with 1000 classes (ViT-B/16's 86,567,656 + 3,523)."""
    return _create_hybrid(
        "vit_convblock_base_patch16", "vit_base_patch16_224", "two_conv", pretrained, **kwargs
    )


@register_model
def vit_convblock_tiny_patch16(pretrained: bool = False, **kwargs: Any) -> ConvStemViT:
    """Seed 000 §4.4.1: appendix B's conv block (max-pool: 224 -> 112) before ViT-Ti/16 on a
    7 x 7 grid. 5,710,513 parameters at 224 with 1000 classes."""
    return _create_hybrid(
        "vit_convblock_tiny_patch16", "vit_tiny_patch16_224", "appendix_b", pretrained, **kwargs
    )
