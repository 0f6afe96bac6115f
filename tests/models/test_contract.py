"""Every model the registry creates meets timm's model contract (one test per property).

Parametrised over the built-ins and two stock timm models, at 32 x 32 with batch 2 (GResNet's
ImageNet-style configs are checked in test_model_gresnet.py, the hybrids in test_model_hybrid.py).
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn

from cnnvit.models import create_model, list_builtin_models, model_family

CIFAR_BUILTINS = ["resnet18_cifar", "resnet_mini", "vit_mini", "vit_small_data"]
GRESNETS = ["gresnet18", "gresnet26", "gresnet50"]  # ImageNet-style (224); run at 32 x 32 here
# ImageNet-size hybrids (ViT-B/16, ViT-Ti/16 inside): listed here, run in test_model_hybrid.py at
# reduced width/depth to keep this file fast
HYBRIDS = ["vit_convblock_base_patch16", "vit_convblock_tiny_patch16"]
BUILTINS = CIFAR_BUILTINS + GRESNETS + HYBRIDS
STOCK = ["resnet18", "vit_tiny_patch16_224"]  # timm's own classes, through the same registry
# gresnet26 differs from gresnet50 only in depth: listed, but not run through the contract
MODELS = [n for n in CIFAR_BUILTINS + GRESNETS if n != "gresnet26"] + STOCK
IMG = 32  # every model under test takes 32 x 32 (vit_tiny_patch16: a 2 x 2 token grid)
NUM_CLASSES = 7


def _make(name: str, *, in_chans: int = 3, img_size: int = IMG) -> nn.Module:
    return create_model(name, num_classes=NUM_CLASSES, in_chans=in_chans, img_size=img_size)


def _first_conv(model: nn.Module) -> nn.Module:
    return model.get_submodule(model.pretrained_cfg["first_conv"])


def test_builtins_are_listed_and_registered_with_timm() -> None:
    assert list_builtin_models() == sorted(BUILTINS)
    for name in BUILTINS:
        assert timm.is_model(name)
    model = timm.create_model("resnet18_cifar")  # plain timm, defaults from the pretrained_cfg
    assert model.num_classes == 10
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_reaches_the_stem(name: str) -> None:
    model = _make(name)
    x = torch.randn(2, 3, IMG, IMG)  # (B, C, H, W)
    logits = model(x)  # (B, num_classes)
    assert logits.shape == (2, NUM_CLASSES)
    logits.sum().backward()
    grad = _first_conv(model).weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["resnet_mini", "vit_mini"])
def test_fashion_mnist_geometry(name: str) -> None:
    model = _make(name, in_chans=1, img_size=28)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", MODELS)
def test_features_and_head(name: str) -> None:
    model = _make(name).eval()
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        feats = model.forward_features(x)  # CNN: (B, C, H, W); ViT: (B, N, C)
        pre = model.forward_head(feats, pre_logits=True)  # (B, num_features)
        logits = model.forward_head(feats)
        assert pre.shape == (2, model.num_features)
        assert torch.allclose(logits, model(x), atol=1e-5)
    assert model.get_classifier().out_features == NUM_CLASSES


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier(name: str) -> None:
    model = _make(name)
    model.reset_classifier(5)
    assert model.num_classes == 5
    assert model(torch.randn(2, 3, IMG, IMG)).shape == (2, 5)


@pytest.mark.parametrize("name", MODELS)
def test_intermediates_match_feature_info(name: str) -> None:
    model = _make(name).eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(2, 3, IMG, IMG), intermediates_only=True)
    assert len(maps) == len(model.feature_info)
    for fmap, info in zip(maps, model.feature_info, strict=True):
        side = math.ceil(IMG / info["reduction"])
        assert fmap.shape == (2, info["num_chs"], side, side), info  # NCHW


@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet_mini"])
def test_cifar_stem(name: str) -> None:
    model = _make(name)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert [info["reduction"] for info in model.feature_info] == [1, 1, 2, 4, 8]


@pytest.mark.parametrize("name", CIFAR_BUILTINS)
def test_pretrained_cfg(name: str) -> None:
    cfg = _make(name).pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32)
    assert len(cfg["mean"]) == len(cfg["std"]) == 3
    assert cfg["num_classes"] == 10
    assert cfg["first_conv"] in ("conv1", "patch_embed.proj")
    assert cfg["classifier"] in ("fc", "head")


def _params(name: str, **kwargs: int) -> int:
    model = create_model(name, num_classes=10, **kwargs)
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts() -> None:
    assert _params("resnet18_cifar") == 11_173_962  # the usual CIFAR ResNet-18
    assert _params("vit_small_data") == pytest.approx(9.6e6, rel=0.03)  # seed 004's "9.6M"
    mini_cnn, mini_vit = _params("resnet_mini"), _params("vit_mini")
    assert 250_000 < mini_cnn < 400_000
    assert abs(mini_vit - mini_cnn) / mini_cnn < 0.20


@pytest.mark.parametrize(
    ("name", "family"),
    [
        *((n, "cnn") for n in ["resnet18_cifar", "resnet_mini", "resnet18"]),
        *((n, "vit") for n in ["vit_small_data", "vit_mini", "vit_tiny_patch16_224"]),
    ],
)
def test_model_family(name: str, family: str) -> None:
    assert model_family(name) == family
    assert model_family(_make(name)) == family


def test_model_family_hybrid() -> None:
    assert model_family("vit_small_r26_s32_224") == "hybrid"  # ResNet stem + ViT, built on 'meta'


def test_vit_rejects_bad_geometry() -> None:
    with pytest.raises(ValueError, match="not a multiple of patch_size 4"):
        _make("vit_mini", img_size=30)


# The hybrids train here at reduced ViT width and depth; their conv blocks are the seed's.
TRAINED = [(n, {}) for n in MODELS] + [
    (n, dict(embed_dim=32, depth=2, num_heads=2)) for n in HYBRIDS
]


@pytest.mark.parametrize(("name", "kwargs"), TRAINED, ids=[n for n, _ in TRAINED])
def test_two_training_steps_move_the_weights(name: str, kwargs: dict) -> None:
    """Two SGD steps on CPU: finite losses, and nearly every parameter tensor moved (the first
    conv among them; residual branches whose last BatchNorm starts at zero move in step 2)."""
    model = create_model(name, num_classes=NUM_CLASSES, img_size=IMG, **kwargs)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(4, 3, IMG, IMG), torch.tensor([0, 1, 2, 3])
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(x), y)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert len(moved) > 0.9 * len(before), sorted(set(before) - moved)[:5]
    assert f"{model.pretrained_cfg['first_conv']}.weight" in moved
