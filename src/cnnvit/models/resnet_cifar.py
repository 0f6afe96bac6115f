"""CIFAR-style ResNets: timm's ``ResNet`` with a 3x3 stride-1 stem and no max-pool.

On 32 x 32 (or 28 x 28) images the ImageNet stem (7x7 stride-2 conv + stride-2 max-pool) throws
away three quarters of the pixels before the first block, so small-image studies (seed 004, the
usual CIFAR ResNet-18) use a single 3x3 stride-1 conv + BN + ReLU instead. Everything after the
stem is timm's own ResNet (blocks, head, ``forward_intermediates``, ``group_matcher``...); only
the stem and the ``feature_info`` reductions that depend on it change.

Registered with timm: ``resnet18_cifar`` and ``resnet_mini``.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet

from cnnvit.models._cfg import cifar_cfg

__all__ = ["CifarResNet"]


class CifarResNet(ResNet):
    """timm ResNet whose stem is one 3x3 stride-1 conv (``stem_width`` channels) + BN + ReLU.

    Feature maps (for a 32 x 32 input): stem 32 x 32 (reduction 1), layer1 32 x 32 (1),
    layer2 16 x 16 (2), layer3 8 x 8 (4), layer4 4 x 4 (8).
    """

    def __init__(
        self,
        *,
        block: type[nn.Module] = BasicBlock,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        channels: tuple[int, ...] = (64, 128, 256, 512),
        stem_width: int = 64,
        in_chans: int = 3,
        num_classes: int = 10,
        **kwargs: Any,
    ) -> None:
        for unsupported in ("stem_type", "replace_stem_pool", "output_stride"):
            if unsupported in kwargs:
                raise ValueError(
                    f"CifarResNet has a fixed 3x3 stride-1 stem; {unsupported}= is not supported"
                )
        if stem_width < 2 or stem_width % 2:
            raise ValueError(f"stem_width must be an even number >= 2, got {stem_width}")
        # timm's plain stem always has 64 channels, its 'deep' stem ends with stem_width * 2.
        # Asking for a deep stem of half our width makes timm size layer1's input (`inplanes`)
        # for our stem; the deep stem itself is then replaced below.
        super().__init__(
            block=block,
            layers=layers,
            channels=channels,
            in_chans=in_chans,
            num_classes=num_classes,
            stem_type="deep",
            stem_width=stem_width // 2,
            **kwargs,
        )
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.conv1 = nn.Conv2d(in_chans, stem_width, 3, stride=1, padding=1, bias=False, **dd)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()  # keep the attribute: timm's forward paths call it
        # timm's bookkeeping assumes a stride-2 stem (2) and a stride-2 pool (4 before layer1).
        self.feature_info[0]["reduction"] = 1
        for info in self.feature_info[1:]:
            info["reduction"] //= 4


default_cfgs = generate_default_cfgs(
    {
        "resnet18_cifar": cifar_cfg(
            first_conv="conv1",
            classifier="fc",
            pool_size=(4, 4),
            description="seed 004: ResNet-18 with a 3x3 stride-1 stem, no max-pool (CIFAR)",
        ),
        "resnet_mini": cifar_cfg(
            first_conv="conv1",
            classifier="fc",
            pool_size=(4, 4),
            description="cnnvit: a CPU-sized CIFAR-style ResNet, matched to vit_mini",
        ),
    }
)


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, variant, pretrained, **kwargs)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-18 for 32 x 32 images (seed 004): BasicBlock x (2, 2, 2, 2), 64..512 channels,
    3x3 stride-1 stem, no max-pool. 11,173,962 parameters with 10 classes."""
    model_args = dict(
        block=BasicBlock, layers=(2, 2, 2, 2), channels=(64, 128, 256, 512), stem_width=64
    )
    return _create_cifar_resnet(
        "resnet18_cifar", pretrained=pretrained, **dict(model_args, **kwargs)
    )


@register_model
def resnet_mini(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """A ~0.3 M-parameter CIFAR-style ResNet for fast CPU runs (Fashion-MNIST, tests):
    BasicBlock x (1, 1, 1, 1), channels (16, 32, 64, 128), 16-channel 3x3 stride-1 stem."""
    model_args = dict(
        block=BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=16
    )
    return _create_cifar_resnet("resnet_mini", pretrained=pretrained, **dict(model_args, **kwargs))
