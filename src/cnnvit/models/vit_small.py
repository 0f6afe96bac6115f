"""Small-image Vision Transformers: timm's ``VisionTransformer`` configured for 28-32 px inputs.

``vit_small_data`` is seed 004's ViT (patch 4 on 32 x 32, embed 512, depth 6, 8 heads of 64,
MLP hidden 512, dropout 0.1, class token); ``vit_mini`` is a ViT of about the size of
``resnet_mini`` for fast CPU runs. Both take ``img_size=`` (28 for Fashion-MNIST, 32 for CIFAR)
and ``in_chans=``; the position embedding is sized for ``img_size`` at construction, and weights
saved at another size are resampled on load by timm's ``checkpoint_filter_fn``.

Registered with timm: ``vit_small_data`` and ``vit_mini``.
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from cnnvit.models._cfg import cifar_cfg
from cnnvit.models.hub import ModelError

__all__: list[str] = []

default_cfgs = generate_default_cfgs(
    {
        # fixed_input_size tells timm the model takes img_size (default: input_size[-2:])
        "vit_small_data": cifar_cfg(
            first_conv="patch_embed.proj",
            classifier="head",
            fixed_input_size=True,
            description="seed 004: small-data ViT, patch 4, depth 6, 8 heads of 64, MLP 512",
        ),
        "vit_mini": cifar_cfg(
            first_conv="patch_embed.proj",
            classifier="head",
            fixed_input_size=True,
            description="cnnvit: a CPU-sized ViT, matched to resnet_mini",
        ),
    }
)


def _check_geometry(variant: str, kwargs: dict[str, Any]) -> None:
    """Fail at construction, not at the first forward, when the patches do not tile the image."""
    img_size = kwargs.get("img_size", 32)
    patch_size = kwargs["patch_size"]
    sizes = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if any(s % patch_size for s in sizes) and not kwargs.get("dynamic_img_pad", False):
        raise ModelError(
            f"{variant}: img_size {img_size} is not a multiple of patch_size {patch_size}; "
            f"use an image size divisible by {patch_size} (--set data.image_size=...) or pass "
            "dynamic_img_pad=True (--set model.kwargs.dynamic_img_pad=true)"
        )


def _create_small_vit(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    _check_geometry(variant, kwargs)
    out_indices = kwargs.pop("out_indices", 3)  # features_only: last 3 blocks, as timm's ViTs
    return build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,  # resamples pos_embed when img_size differs
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


@register_model
def vit_small_data(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Seed 004's small-data ViT: patch 4, embed 512, depth 6, 8 heads (64 each), MLP 512,
    dropout 0.1 on the embeddings, the attention/MLP outputs and before the head.
    9,532,938 parameters at 32 x 32 with 10 classes (9,579,108 with 100)."""
    model_args = dict(
        img_size=32,
        patch_size=4,
        embed_dim=512,
        depth=6,
        num_heads=8,
        mlp_ratio=1.0,
        drop_rate=0.1,
        pos_drop_rate=0.1,
        proj_drop_rate=0.1,
        class_token=True,
        global_pool="token",
    )
    return _create_small_vit("vit_small_data", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vit_mini(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """A ~0.3 M-parameter ViT matched to ``resnet_mini``: patch 4, embed 96, depth 4,
    3 heads (32 each), mlp_ratio 2, class token, no dropout."""
    model_args = dict(
        img_size=32,
        patch_size=4,
        embed_dim=96,
        depth=4,
        num_heads=3,
        mlp_ratio=2.0,
        class_token=True,
        global_pool="token",
    )
    return _create_small_vit("vit_mini", pretrained=pretrained, **dict(model_args, **kwargs))
