"""GResNet (seed 003): a ResNet-D-like ResNet with SiLU and *split* normalisation.

Seed 003's modifications of ResNet-50, each behind a plain keyword switch so its ablation can be
run as a study (``model.kwargs``). The defaults are GResNet; all switches off
(``deep_stem=False, stride_on_3x3=False, no_maxpool=False, avg_down=False, act='relu',
split_norm=False``) is the original ResNet-50 (v1, stride on the first 1x1 of the bottleneck);
turning ``stride_on_3x3`` on as well gives exactly timm's ``resnet50`` (v1.5), state-dict keys
and shapes included.

* ``deep_stem``: three 3x3 convs with 32, 64, 128 output channels, stride 2 on the first,
  instead of the 7x7 stride-2 conv. timm's ``stem_type='deep'`` stems are (w, w, 2w) or, tiered,
  (3w/4, w, 2w), neither of which is 32/64/128, so the stem ``Sequential`` is built here in
  timm's layout (conv, norm, act, conv, norm, act, conv; ``bn1``/``act1`` follow it).
* ``stride_on_3x3``: the downsampling stride on the bottleneck's 3x3 conv (timm's
  ``Bottleneck``); off, on its first 1x1 conv (:class:`BottleneckStride1x1`, which timm lacks).
  BasicBlock models (``gresnet18``) have no 1x1 conv: turning it off there is an error rather
  than a silent no-op ablation arm.
* ``no_maxpool``: no stem max-pool; the first block of ``layer1`` downsamples with stride 2 like
  the first block of every other stage (timm's ``make_blocks`` hard-codes stride 1 for the first
  stage, so the stride and the shortcut pooling are moved into ``layer1.0`` after construction).
  The total reduction stays 32 and timm's ``feature_info`` reductions stay right.
* ``avg_down``: downsampling shortcuts are 2x2 average pooling + 1x1 conv (timm's ``avg_down``)
  instead of a strided 1x1 conv.
* ``act``: the activation, any timm name (``'silu'``, ``'relu'``...).
* ``split_norm``: every conv normalises its *input* with a non-affine BatchNorm
  (:class:`SplitNormConv2d`), and the per-channel affine (:class:`ChannelAffine`) sits where
  the BatchNorm was, right after the conv. timm has no such layer; ``ChannelAffine`` is passed
  to timm as the ``norm_layer`` so timm's blocks, stem and shortcuts are reused unchanged.

For inference, :func:`fuse_split_norm` (or ``model.fuse()``) folds each normalisation and affine
into its conv (eval mode, running statistics), exactly, borders included (see
:class:`MeanPadConv2d`).

Registered with timm: ``gresnet50`` (Bottleneck 3-4-6-3), ``gresnet26`` (Bottleneck 2-2-2-2)
and ``gresnet18`` (BasicBlock 2-2-2-2, for small inputs / CPU).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "BottleneckStride1x1",
    "ChannelAffine",
    "GResNet",
    "MeanPadConv2d",
    "SplitNormConv2d",
    "checkpoint_filter_fn",
    "fuse_split_norm",
]

STEM_CHANNELS = (32, 64, 128)


class ChannelAffine(nn.Module):
    """Per-channel scale and shift, ``y = x * weight + bias`` (the affine half of a BatchNorm).

    Takes ``norm_layer``'s signature so timm builds it wherever it would build a BatchNorm; its
    ``weight`` is what timm's ``zero_init_last`` zeroes.
    """

    def __init__(self, num_features: int, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.num_features = num_features
        self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return str(self.num_features)


class SplitNormConv2d(nn.Conv2d):
    """A conv that first normalises its input with a non-affine BatchNorm (``self.norm``).

    Still an ``nn.Conv2d`` (same ``weight``, kaiming init, timm's first-conv adaptation, the
    registry's conv-based family detection); the normalised input is zero-padded by the conv
    as usual.
    """

    def __init__(self, *args: Any, eps: float = 1e-5, momentum: float = 0.1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        dd = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.norm = nn.BatchNorm2d(self.in_channels, eps=eps, momentum=momentum, affine=False, **dd)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> SplitNormConv2d:
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # `_conv_forward`, not `super().forward`: TorchScript cannot compile super() calls
        return self._conv_forward(self.norm(x), self.weight, self.bias)


class MeanPadConv2d(nn.Conv2d):
    """The fused form of ``SplitNormConv2d`` + ``ChannelAffine``: a conv whose padding is the
    per-channel running mean (``pad_value``) instead of zero.

    Why: BN-before-conv folds into the conv as ``W' = W / sigma`` and ``b' = -W' * mu``, but only
    where the conv sees real pixels. The unfused module zero-pads the *normalised* input, and a
    normalised zero is the raw value ``mu`` (``(mu - mu) / sigma = 0``); so normalise-then-zero-pad
    equals pad-with-mu-then-normalise, and the fused conv must pad its raw input with ``mu``. The
    alternative, a zero-padded conv plus a precomputed border bias map, is as exact but depends
    on the input size (a cache per H x W, device and dtype, stale if weights change); padding
    with the mean is stateless and works for any input size and stride. The conv itself then
    runs with ``padding=0``.
    """

    def __init__(self, *args: Any, pad: tuple[int, int] = (0, 0), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pad = tuple(pad)
        self.register_buffer(
            "pad_value",
            torch.zeros(self.in_channels, device=self.weight.device, dtype=self.weight.dtype),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.pad
        # the border is concatenated rather than written into a filled tensor: slice assignment
        # cannot be traced by torch.fx, and no shape is unpacked, so fx, TorchScript and
        # torch.export all follow the input's (symbolic) size
        fill = self.pad_value.to(x.dtype)[None, :, None, None]
        if pw:
            side = fill.expand(x.shape[0], -1, x.shape[2], pw)
            x = torch.cat([side, x, side], dim=3)
        if ph:
            top = fill.expand(x.shape[0], -1, ph, x.shape[3])
            x = torch.cat([top, x, top], dim=2)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pad={self.pad} (with the channel means)"


@torch.no_grad()
def _fold(conv: SplitNormConv2d, affine: ChannelAffine | None) -> MeanPadConv2d:
    """``affine(conv(norm(x)))`` (eval mode) as one :class:`MeanPadConv2d`."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError("fuse_split_norm supports zero padding given as integers only")
    norm = conv.norm
    mean = norm.running_mean
    inv_std = torch.rsqrt(norm.running_var + norm.eps)  # (C_in,)
    out_ch, in_per_group = conv.out_channels, conv.in_channels // conv.groups
    # the input-channel scale seen by each weight row: group g of the output reads inputs of g
    scale_in = inv_std.view(conv.groups, 1, in_per_group).expand(
        conv.groups, out_ch // conv.groups, in_per_group
    )
    mean_in = mean.view(conv.groups, 1, in_per_group).expand_as(scale_in)
    weight = conv.weight * scale_in.reshape(out_ch, in_per_group, 1, 1)
    bias = -(weight * mean_in.reshape(out_ch, in_per_group, 1, 1)).sum(dim=(1, 2, 3))
    if conv.bias is not None:
        bias = bias + conv.bias
    if affine is not None:
        weight = weight * affine.weight[:, None, None, None]
        bias = bias * affine.weight + affine.bias
    fused = MeanPadConv2d(
        conv.in_channels,
        out_ch,
        conv.kernel_size,
        stride=conv.stride,
        padding=0,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        pad=conv.padding,
        device=weight.device,
        dtype=weight.dtype,
    )
    fused.weight.copy_(weight)
    fused.bias.copy_(bias)
    fused.pad_value.copy_(mean)
    return fused


def _conv_affine_pairs(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module, str | None]]:
    """``(conv_parent, conv_name, affine_parent, affine_name)`` for every split-norm conv.

    timm's layout pairs ``convK`` with ``bnK`` (blocks; the stem ``conv1`` Sequential's last conv
    with the model's ``bn1``) and, inside Sequentials (stem, shortcut), a conv with the module
    right after it.
    """
    pairs: list[tuple[nn.Module, str, nn.Module, str | None]] = []
    seen: set[int] = set()
    for parent in model.modules():
        children = dict(parent.named_children())
        for name, child in children.items():
            if not name.startswith("conv") or f"bn{name[4:]}" not in children:
                continue
            owner, conv_name = parent, name
            if isinstance(child, nn.Sequential):
                owner, conv_name = child, list(child._modules)[-1]
            if isinstance(owner.get_submodule(conv_name), SplitNormConv2d):
                pairs.append((owner, conv_name, parent, f"bn{name[4:]}"))
                seen.add(id(owner.get_submodule(conv_name)))
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            for i, name in enumerate(names):
                conv = parent._modules[name]
                if not isinstance(conv, SplitNormConv2d) or id(conv) in seen:
                    continue
                nxt = names[i + 1] if i + 1 < len(names) else None
                if nxt is not None and isinstance(parent._modules[nxt], ChannelAffine):
                    pairs.append((parent, name, parent, nxt))
                else:
                    pairs.append((parent, name, parent, None))
                seen.add(id(conv))
    return pairs


def fuse_split_norm(model: nn.Module) -> nn.Module:
    """Fold every split normalisation and its affine into the conv, in place; returns ``model``.

    For inference: the model is put in eval mode (the folds use the running statistics, and the
    result is no longer the training-time parametrisation). Each ``SplitNormConv2d`` and the
    ``ChannelAffine`` after it become one :class:`MeanPadConv2d` (the affine becomes
    ``nn.Identity``). Exact up to rounding: see :class:`MeanPadConv2d` for the border. A model
    without split normalisation is returned unchanged.

    Raises:
        ValueError: a split-norm conv or affine could not be paired (an unknown layout).
    """
    model.eval()
    for conv_parent, conv_name, affine_parent, affine_name in _conv_affine_pairs(model):
        conv = conv_parent.get_submodule(conv_name)
        affine = affine_parent.get_submodule(affine_name) if affine_name else None
        if affine is not None and not isinstance(affine, ChannelAffine):
            affine, affine_name = None, None
        setattr(conv_parent, conv_name, _fold(conv, affine))
        if affine_name is not None:
            setattr(affine_parent, affine_name, nn.Identity())
    left = [n for n, m in model.named_modules() if isinstance(m, (SplitNormConv2d, ChannelAffine))]
    if left:
        raise ValueError(f"fuse_split_norm could not fold {left[:5]}")
    return model


class BottleneckStride1x1(Bottleneck):
    """timm's Bottleneck with the downsampling stride on the first 1x1 conv (original ResNet v1).

    timm only has the stride on the 3x3 (v1.5); this is the ``stride_on_3x3=False`` ablation arm.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if kwargs.get("aa_layer") is not None:
            raise ValueError("stride_on_3x3=False does not support aa_layer")
        self.conv1.stride, self.conv2.stride = self.conv2.stride, (1, 1)


class GResNet(ResNet):
    """timm ``ResNet`` with seed 003's switches (see the module doc); ``fuse()`` for inference.

    Feature maps (224 x 224 input): stem 112 (reduction 2), layer1 56 (4), layer2 28 (8),
    layer3 14 (16), layer4 7 (32), whatever the switches.
    """

    def __init__(
        self,
        *,
        block: type[nn.Module] = Bottleneck,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        deep_stem: bool = True,
        stride_on_3x3: bool = True,
        no_maxpool: bool = True,
        avg_down: bool = True,
        act: str = "silu",
        split_norm: bool = True,
        in_chans: int = 3,
        **kwargs: Any,
    ) -> None:
        for fixed in ("stem_type", "stem_width", "replace_stem_pool", "act_layer", "norm_layer"):
            if fixed in kwargs:
                raise ValueError(f"GResNet sets {fixed}= from its switches; it cannot be passed")
        if not stride_on_3x3:
            if not issubclass(block, Bottleneck):
                raise ValueError(
                    "stride_on_3x3=False needs Bottleneck blocks (BasicBlock has no 1x1)"
                )
            block = BottleneckStride1x1 if block is Bottleneck else block
        norm_layer = ChannelAffine if split_norm else nn.BatchNorm2d
        super().__init__(
            block=block,
            layers=layers,
            in_chans=in_chans,
            # a deep stem of width 64 makes timm size layer1's input for our 128-channel stem
            stem_type="deep" if deep_stem else "",
            stem_width=STEM_CHANNELS[-1] // 2 if deep_stem else 64,
            avg_down=avg_down,
            act_layer=act,
            norm_layer=norm_layer,
            **kwargs,
        )
        self.switches = dict(
            deep_stem=deep_stem,
            stride_on_3x3=stride_on_3x3,
            no_maxpool=no_maxpool,
            avg_down=avg_down,
            act=act,
            split_norm=split_norm,
        )
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        if deep_stem:
            self.conv1 = self._deep_stem(in_chans, norm_layer, type(self.act1), dd)
        if no_maxpool:
            self.maxpool = nn.Identity()  # keep the attribute: timm's forward paths call it
            self._stride_first_block(norm_layer, dd)
        self._reinit_stem(deep_stem)
        if split_norm:
            self._split_convs()

    @staticmethod
    def _deep_stem(
        in_chans: int, norm_layer: type[nn.Module], act_layer: type[nn.Module], dd: dict[str, Any]
    ) -> nn.Sequential:
        c1, c2, c3 = STEM_CHANNELS
        return nn.Sequential(
            nn.Conv2d(in_chans, c1, 3, stride=2, padding=1, bias=False, **dd),
            norm_layer(c1, **dd),
            act_layer(inplace=True),
            nn.Conv2d(c1, c2, 3, stride=1, padding=1, bias=False, **dd),
            norm_layer(c2, **dd),
            act_layer(inplace=True),
            nn.Conv2d(c2, c3, 3, stride=1, padding=1, bias=False, **dd),
        )

    def _stride_first_block(self, norm_layer: type[nn.Module], dd: dict[str, Any]) -> None:
        """Move the max-pool's stride 2 into ``layer1.0`` (conv and shortcut), as in layer2..4.

        timm's ``make_blocks`` gives the first stage stride 1 (the max-pool downsampled), and no
        shortcut projection when channels match (BasicBlock on a 64-channel stem).
        """
        first = self.layer1[0]
        strided = (
            first.conv1 if isinstance(first, (BasicBlock, BottleneckStride1x1)) else first.conv2
        )
        strided.stride = (2, 2)
        first.stride = 2
        in_ch = first.conv1.in_channels
        out_ch = self.feature_info[1]["num_chs"]
        down = first.downsample
        if self.switches["avg_down"]:
            pool = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
            if down is None:
                conv = nn.Conv2d(in_ch, out_ch, 1, bias=False, **dd)
                down = nn.Sequential(pool, conv, norm_layer(out_ch, **dd))
            else:
                down[0] = pool
        elif down is None:
            conv = nn.Conv2d(in_ch, out_ch, 1, stride=2, bias=False, **dd)
            down = nn.Sequential(conv, norm_layer(out_ch, **dd))
        else:
            down[0].stride = (2, 2)
        nn.init.kaiming_normal_(
            next(m for m in down.modules() if isinstance(m, nn.Conv2d)).weight,
            mode="fan_out",
            nonlinearity="relu",
        )
        first.downsample = down

    def _reinit_stem(self, deep_stem: bool) -> None:
        if not deep_stem:
            return
        for m in self.conv1.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _split_convs(self) -> None:
        swaps = [
            (parent, name, child)
            for parent in self.modules()
            for name, child in parent.named_children()
            if type(child) is nn.Conv2d
        ]
        for parent, name, child in swaps:
            setattr(parent, name, SplitNormConv2d.from_conv(child))

    def fuse(self) -> GResNet:
        """Fold the split normalisation into the convs for inference (:func:`fuse_split_norm`)."""
        fuse_split_norm(self)
        return self


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.95,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1.0",
        "classifier": "fc",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "gresnet50": _cfg(
            description="seed 003: GResNet-50, ResNet-D-like, SiLU, split normalisation"
        ),
        "gresnet26": _cfg(description="seed 003: GResNet with Bottleneck x (2, 2, 2, 2)"),
        "gresnet18": _cfg(
            description="seed 003: GResNet with BasicBlock x (2, 2, 2, 2), CPU-sized"
        ),
    }
)


def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Adapt the first conv's split-norm statistics to the model's ``in_chans``.

    timm adapts the first conv's *weight* to another channel count (summed for 1 channel,
    repeated for more); the split norm in front of it also holds per-input-channel running
    statistics, which timm does not know about. They are averaged over the file's channels for
    a 1-channel model and repeated cyclically for more channels (as timm repeats the weights).
    Called by timm's pretrained loading and by the registry's weights-file check.
    """
    own = model.state_dict()
    out = dict(state_dict)
    for key, value in state_dict.items():
        if not key.endswith((".norm.running_mean", ".norm.running_var")) or key not in own:
            continue
        want = own[key].shape[0]
        if value.ndim != 1 or value.shape[0] == want:
            continue
        if want == 1:
            out[key] = value.mean().reshape(1)
        else:
            out[key] = value.repeat(-(-want // value.shape[0]))[:want].clone()
    return out


def _create_gresnet(variant: str, pretrained: bool = False, **kwargs: Any) -> GResNet:
    if not kwargs.get("deep_stem", True):
        # the plain stem's first conv is `conv1`, not the deep stem's `conv1.0`; timm reads
        # first_conv from the pretrained_cfg to adapt weight files to in_chans
        overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
        overlay.setdefault("first_conv", "conv1")
        kwargs["pretrained_cfg_overlay"] = overlay
    return build_model_with_cfg(
        GResNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs
    )


@register_model
def gresnet50(pretrained: bool = False, **kwargs: Any) -> GResNet:
    """GResNet-50 (seed 003): Bottleneck x (3, 4, 6, 3); switches as keyword arguments."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_gresnet("gresnet50", pretrained, **dict(model_args, **kwargs))


@register_model
def gresnet26(pretrained: bool = False, **kwargs: Any) -> GResNet:
    """GResNet-26: Bottleneck x (2, 2, 2, 2); switches as keyword arguments."""
    model_args = dict(block=Bottleneck, layers=(2, 2, 2, 2))
    return _create_gresnet("gresnet26", pretrained, **dict(model_args, **kwargs))


@register_model
def gresnet18(pretrained: bool = False, **kwargs: Any) -> GResNet:
    """GResNet-18 for small inputs / CPU: BasicBlock x (2, 2, 2, 2); switches as keywords
    (``stride_on_3x3=False`` is refused: BasicBlock has no 1x1 conv)."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return _create_gresnet("gresnet18", pretrained, **dict(model_args, **kwargs))
