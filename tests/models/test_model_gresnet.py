"""GResNet (seed 003): shapes, config, parameter counts, the exact split-norm fold, one test per
ablation switch, surgery, and a 2-step training smoke test. Small inputs (64 x 64, batch 2)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock, Bottleneck

from cnnvit.models import (
    count_parameters,
    create_model,
    freeze_all_but_last_blocks,
    model_blocks,
    model_family,
)
from cnnvit.models.gresnet import (
    BottleneckStride1x1,
    ChannelAffine,
    MeanPadConv2d,
    SplitNormConv2d,
    fuse_split_norm,
)

IMG = 64
NUM_CLASSES = 5
# all switches off: original ResNet (v1: stride on the bottleneck's first 1x1)
OFF = dict(
    deep_stem=False,
    stride_on_3x3=False,
    no_maxpool=False,
    avg_down=False,
    act="relu",
    split_norm=False,
)


def _make(name: str = "gresnet18", **kwargs: object) -> nn.Module:
    return create_model(name, num_classes=NUM_CLASSES, **kwargs)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["gresnet18", "gresnet26"])
def test_forward_backward_shapes(name: str) -> None:
    model = _make(name)
    x = torch.randn(2, 3, IMG, IMG, requires_grad=True)  # (B, C, H, W)
    logits = model(x)  # (B, num_classes)
    assert logits.shape == (2, NUM_CLASSES)
    logits.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.abs().sum() > 0
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, IMG // 32, IMG // 32)


def test_pretrained_cfg_and_feature_info() -> None:
    model = _make("gresnet50")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN
    assert cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    assert isinstance(model.get_submodule(cfg["first_conv"]), nn.Conv2d)
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert [i["reduction"] for i in model.feature_info] == [2, 4, 8, 16, 32]
    assert [i["num_chs"] for i in model.feature_info] == [128, 256, 512, 1024, 2048]
    assert model_family(model) == "cnn"
    plain = _make("gresnet50", deep_stem=False)  # the 7x7 stem's first conv is `conv1`
    assert plain.pretrained_cfg["first_conv"] == "conv1"
    assert plain.get_submodule("conv1").kernel_size == (7, 7)


# BasicBlock has no 1x1 conv to carry the stride: stride_on_3x3 stays on for gresnet18
@pytest.mark.parametrize("switches", [{}, dict(OFF, stride_on_3x3=True)], ids=["gresnet", "off"])
def test_intermediates_match_feature_info(switches: dict[str, object]) -> None:
    model = _make("gresnet18", **switches).eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(2, 3, IMG, IMG), intermediates_only=True)
    for fmap, info in zip(maps, model.feature_info, strict=True):
        side = IMG // info["reduction"]
        assert fmap.shape == (2, info["num_chs"], side, side), info


def test_parameter_counts() -> None:
    gresnet50 = _params(timm.create_model("gresnet50"))
    assert gresnet50 == 25_661_448
    assert gresnet50 == pytest.approx(_params(timm.create_model("resnet50d")), rel=0.01)
    assert _params(timm.create_model("gresnet26")) == 16_099_592
    assert _params(timm.create_model("gresnet18")) == 11_818_632
    # split normalisation moves parameters, it adds none
    assert _params(timm.create_model("gresnet18", split_norm=False)) == 11_818_632


def test_all_switches_off_is_timm_resnet50() -> None:
    # + stride on the 3x3: exactly timm's resnet50 (v1.5), same weights, same outputs
    ours = timm.create_model("gresnet50", **dict(OFF, stride_on_3x3=True)).eval()
    ref = timm.create_model("resnet50").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
    # all off: the same tensors (v1 differs in where the stride is, not in weights)
    v1 = timm.create_model("gresnet50", **OFF)
    assert {k: v.shape for k, v in v1.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }


def _randomise_split_norm(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SplitNormConv2d):
                m.norm.running_mean.uniform_(-2.0, 2.0)
                m.norm.running_var.uniform_(0.2, 3.0)
            elif isinstance(m, ChannelAffine):
                m.weight.uniform_(0.5, 1.5)  # also undoes zero_init_last
                m.bias.uniform_(-0.5, 0.5)


@pytest.mark.parametrize(
    ("name", "switches"),
    [
        ("gresnet18", {}),
        ("gresnet26", {}),
        # 7x7 stem + max-pool, strided 1x1 shortcuts, ReLU: the fold does not depend on them
        ("gresnet18", dict(OFF, stride_on_3x3=True, split_norm=True)),
    ],
    ids=["gresnet18", "gresnet26", "gresnet18-plain"],
)
def test_fuse_split_norm_is_exact(name: str, switches: dict[str, object]) -> None:
    model = _make(name, **switches).double()
    _randomise_split_norm(model)
    model.eval()
    fused = fuse_split_norm(copy.deepcopy(model))
    assert not any(isinstance(m, (SplitNormConv2d, ChannelAffine)) for m in fused.modules())
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, MeanPadConv2d) for m in convs)
    x = torch.randn(2, 3, 45, IMG, dtype=torch.float64)  # odd side: ceil-mode shortcut pools
    with torch.no_grad():
        for a, b in zip(
            model.forward_intermediates(x, intermediates_only=True),
            fused.forward_intermediates(x, intermediates_only=True),
            strict=True,
        ):
            # every pixel, the border included (the stem map is 23 x 32: mostly border-affected)
            assert torch.allclose(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())
        assert torch.allclose(fused(x), model(x), rtol=1e-5, atol=1e-8)


def test_fuse_needs_mean_padding_at_the_border() -> None:
    # the same fold with zero padding is wrong exactly on the border pixels
    model = _make("gresnet18").double()
    _randomise_split_norm(model)
    model.eval()
    stem_conv, stem_affine = model.conv1[0], model.conv1[1]  # norm -> conv -> affine
    fused = fuse_split_norm(copy.deepcopy(model)).conv1[0]
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        ref = stem_affine(stem_conv(x))
        assert torch.allclose(fused(x), ref, rtol=1e-5, atol=1e-8)
        fused.pad_value.zero_()
        wrong = (fused(x) - ref).abs().amax(dim=(0, 1))  # (H, W)
    assert wrong[1:, 1:].max() < 1e-10  # stride 2, pad 1: only the top row / left column
    assert wrong[0].min() > 0 and wrong[:, 0].min() > 0


def test_model_fuse_method() -> None:
    model = _make("gresnet18")
    assert model.fuse() is model and not model.training
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, NUM_CLASSES)
    plain = _make("gresnet18", split_norm=False)
    before = copy.deepcopy(plain.state_dict())
    plain.fuse()  # nothing to fold
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())


# --- one test per switch -------------------------------------------------------------------


def test_switch_deep_stem() -> None:
    stem = _make(deep_stem=True).conv1
    convs = [m for m in stem if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3
    assert [c.out_channels for c in convs] == [32, 64, 128]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
    plain = _make(deep_stem=False).conv1
    assert isinstance(plain, nn.Conv2d) and plain.kernel_size == (7, 7)
    assert plain.out_channels == 64 and plain.stride == (2, 2)


def test_switch_no_maxpool() -> None:
    model = _make("gresnet26", no_maxpool=True)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.layer1[0].conv2.stride == (2, 2)  # like layer2..4's first block
    assert isinstance(model.layer1[0].downsample[0], nn.AvgPool2d)
    pooled = _make("gresnet26", no_maxpool=False)
    assert isinstance(pooled.maxpool, nn.MaxPool2d)
    assert pooled.layer1[0].conv2.stride == (1, 1)
    # BasicBlock on a 64-channel stem: layer1.0 gets a strided shortcut it did not need before
    basic = _make("gresnet18", deep_stem=False, avg_down=False, no_maxpool=True)
    assert basic.layer1[0].conv1.stride == (2, 2)
    assert basic.layer1[0].downsample[0].stride == (2, 2)


@pytest.mark.parametrize("no_maxpool", [True, False])
def test_switch_stride_on_3x3(no_maxpool: bool) -> None:
    on = _make("gresnet26", stride_on_3x3=True, no_maxpool=no_maxpool)
    off = _make("gresnet26", stride_on_3x3=False, no_maxpool=no_maxpool)
    assert type(on.layer2[0]) is Bottleneck and type(off.layer2[0]) is BottleneckStride1x1
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        s = (2, 2) if layer != "layer1" or no_maxpool else (1, 1)
        assert (getattr(on, layer)[0].conv1.stride, getattr(on, layer)[0].conv2.stride) == (
            (1, 1),
            s,
        )
        assert (getattr(off, layer)[0].conv1.stride, getattr(off, layer)[0].conv2.stride) == (
            s,
            (1, 1),
        )
    assert off(torch.randn(2, 3, IMG, IMG)).shape == (2, NUM_CLASSES)
    with pytest.raises(ValueError, match="Bottleneck"):
        _make("gresnet18", stride_on_3x3=False)


def test_switch_avg_down() -> None:
    down = _make("gresnet26", avg_down=True).layer2[0].downsample
    assert isinstance(down[0], nn.AvgPool2d) and down[0].kernel_size == 2
    assert isinstance(down[1], nn.Conv2d) and down[1].kernel_size == (1, 1)
    assert down[1].stride == (1, 1)
    strided = _make("gresnet26", avg_down=False).layer2[0].downsample
    assert isinstance(strided[0], nn.Conv2d) and strided[0].kernel_size == (1, 1)
    assert strided[0].stride == (2, 2)
    assert not any(isinstance(m, nn.AvgPool2d) for m in strided)


def test_switch_act() -> None:
    acts = {type(m) for m in _make(act="silu").modules() if isinstance(m, (nn.SiLU, nn.ReLU))}
    assert acts == {nn.SiLU}
    acts = {type(m) for m in _make(act="relu").modules() if isinstance(m, (nn.SiLU, nn.ReLU))}
    assert acts == {nn.ReLU}


def test_switch_split_norm() -> None:
    split = _make(split_norm=True)
    block = split.layer2[0]
    assert isinstance(block.conv1, SplitNormConv2d) and isinstance(block.bn1, ChannelAffine)
    assert not block.conv1.norm.affine and block.conv1.norm.num_features == block.conv1.in_channels
    assert block.bn1.weight.shape == (block.conv1.out_channels,)
    assert not any(isinstance(m, nn.BatchNorm2d) and m.affine for m in split.modules())
    convs = [m for m in split.modules() if isinstance(m, nn.Conv2d)]
    assert all(isinstance(c, SplitNormConv2d) for c in convs)  # stem and shortcuts too
    plain = _make(split_norm=False)
    assert not any(isinstance(m, (SplitNormConv2d, ChannelAffine)) for m in plain.modules())
    assert isinstance(plain.layer2[0].bn1, nn.BatchNorm2d) and plain.layer2[0].bn1.affine


# --- surgery and training ------------------------------------------------------------------


def test_surgery_freeze_keeps_split_norm_intact() -> None:
    model = _make("gresnet18")
    blocks = model_blocks(model)
    assert blocks == [*model.layer1, *model.layer2, *model.layer3, *model.layer4]
    assert all(isinstance(b, BasicBlock) for b in blocks)
    keys, total = set(model.state_dict()), count_parameters(model)[0]
    freeze_all_but_last_blocks(model, 2)
    kept = {k for k in keys if not k.endswith("num_batches_tracked")}
    assert kept <= set(model.state_dict()) <= keys  # no weight/bias keys for non-affine norms
    frozen_total, trainable = count_parameters(model)
    assert frozen_total == total and 0 < trainable < total
    assert not model.layer1[0].conv1.weight.requires_grad
    assert model.layer4[1].conv2.weight.requires_grad and model.fc.weight.requires_grad
    model.train()
    model(torch.randn(2, 3, IMG, IMG)).sum().backward()
    freeze_all_but_last_blocks(model, None)
    norm = model.layer1[0].conv1.norm
    assert type(norm) is nn.BatchNorm2d and not norm.affine
    assert count_parameters(model) == (total, total)


def test_weights_file_adapts_classes_and_channels(tmp_path) -> None:
    from safetensors.torch import save_file

    source = _make("gresnet18")
    path = tmp_path / "gresnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_model("gresnet18", num_classes=3, weights=path)
    assert torch.equal(model.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert model.fc.out_features == 3
    # 1 channel: timm sums the first conv's weight; the split norm's statistics are averaged
    gray = create_model("gresnet18", num_classes=NUM_CLASSES, in_chans=1, weights=path)
    mean = source.conv1[0].norm.running_mean.mean().reshape(1)
    assert torch.allclose(gray.conv1[0].norm.running_mean, mean)
    assert gray(torch.randn(2, 1, 32, 32)).shape == (2, NUM_CLASSES)
