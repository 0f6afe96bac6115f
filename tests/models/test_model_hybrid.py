"""Seed 000's hybrid conv-block ViTs (§4.4, appendix B): structure, contract, weights, freezing.

Real-size models are built on the meta device (shapes only); forward/backward runs use the same
conv blocks in front of a narrow, shallow ViT (``SMALL``) to stay fast on CPU.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from cnnvit.models import (
    ModelError,
    count_parameters,
    create_model,
    freeze_all_but_last_blocks,
    head_modules,
    list_builtin_models,
    model_blocks,
    model_family,
)
from cnnvit.models.hybrid import ConvStemViT
from stand_in_data import hub_cache_entry

BASE, TINY = "vit_convblock_base_patch16", "vit_convblock_tiny_patch16"
HYBRIDS = [BASE, TINY]
SMALL = dict(embed_dim=32, depth=2, num_heads=2)  # a narrow ViT behind the seed's conv blocks


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_params(c_in: int, c_out: int) -> int:
    return c_in * c_out * 9 + c_out  # 3 x 3 kernel + bias


def _small(name: str, *, img_size: int = 64, num_classes: int = 5, **kwargs) -> ConvStemViT:
    return create_model(name, num_classes=num_classes, img_size=img_size, **SMALL, **kwargs)


# --- registration -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", HYBRIDS)
def test_registered_with_description(name: str) -> None:
    assert name in list_builtin_models()
    assert timm.is_model(name)
    with torch.device("meta"):
        model = timm.create_model(name)
    assert isinstance(model, ConvStemViT)
    cfg = model.pretrained_cfg
    assert cfg["description"].startswith("seed 000 §4.4")
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN
    assert cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    assert cfg["first_conv"] == "conv_block.0" and cfg["classifier"] == "vit.head"
    assert model.get_submodule(cfg["first_conv"]) is model.conv_block[0]
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()


@pytest.mark.parametrize("name", HYBRIDS)
def test_model_family_is_hybrid(name: str) -> None:
    assert model_family(name) == "hybrid"
    assert model_family(_small(name)) == "hybrid"


# --- structure and parameter counts -------------------------------------------------------


def test_base_conv_block_is_seed_000_section_4_4() -> None:
    with torch.device("meta"):
        model = timm.create_model(BASE)
    block = list(model.conv_block)
    assert [type(m) for m in block] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU]
    convs = [block[0], block[2]]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 64), (64, 3)]
    for conv in convs:
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1)
    vit = model.vit
    assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads) == (768, 12, 12)
    assert vit.patch_embed.patch_size == (16, 16) and vit.patch_embed.grid_size == (14, 14)
    with torch.device("meta"):
        wide = timm.create_model(BASE, conv_chs=16)
    assert wide.conv_block[0].out_channels == 16 and wide.conv_block[2].in_channels == 16


def test_tiny_conv_block_is_seed_000_appendix_b() -> None:
    with torch.device("meta"):
        model = timm.create_model(TINY)
    block = list(model.conv_block)
    conv, bn, relu, pool = nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d
    assert [type(m) for m in block] == [conv, bn, relu, conv, bn, relu, pool, conv, bn, relu]
    convs = [m for m in block if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 32), (32, 64), (64, 3)]
    for c in convs:
        assert c.kernel_size == (3, 3) and c.padding == (1, 1) and c.stride == (1, 1)
    assert [m.num_features for m in block if isinstance(m, nn.BatchNorm2d)] == [32, 64, 3]
    assert block[6].kernel_size == 2
    vit = model.vit
    assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads) == (192, 12, 3)
    assert vit.patch_embed.grid_size == (7, 7)  # 224 -> max-pool -> 112 -> 7 x 7 patches of 16
    assert vit.pos_embed.shape == (1, 1 + 49, 192)


def test_parameter_counts() -> None:
    with torch.device("meta"):
        base, vit_b = timm.create_model(BASE), timm.create_model("vit_base_patch16_224")
        tiny, vit_ti = timm.create_model(TINY), timm.create_model("vit_tiny_patch16_224")
        vit_ti_112 = timm.create_model("vit_tiny_patch16_224", img_size=112)
    assert _params(vit_b) == 86_567_656  # ViT-B/16, 1000 classes
    two_conv = _conv_params(3, 64) + _conv_params(64, 3)
    assert two_conv == 3_523
    assert _params(base) == _params(vit_b) + two_conv == 86_571_179
    appendix_b = (
        _conv_params(3, 32) + _conv_params(32, 64) + _conv_params(64, 3) + 2 * (32 + 64 + 3)
    )
    assert appendix_b == 21_321
    assert _params(vit_ti) == 5_717_416
    # the inner ViT-Ti sees 112 px: 49 + 1 position embeddings instead of 196 + 1
    assert _params(vit_ti_112) == _params(vit_ti) - 147 * 192
    assert _params(tiny) == _params(vit_ti_112) + appendix_b == 5_710_513


# --- forward / backward and the timm contract ---------------------------------------------


@pytest.mark.parametrize("img_size", [224, 64])
@pytest.mark.parametrize("name", HYBRIDS)
def test_forward_backward(name: str, img_size: int) -> None:
    model = _small(name, img_size=img_size)
    x = torch.randn(2, 3, img_size, img_size)
    logits = model(x)
    assert logits.shape == (2, 5)
    logits.sum().backward()
    grad = model.conv_block[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    reduction = 2 if name == TINY else 1
    side = img_size // reduction // 16
    assert model.vit.patch_embed.grid_size == (side, side)


@pytest.mark.parametrize("name", HYBRIDS)
def test_features_head_and_classifier(name: str) -> None:
    model = _small(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)  # (B, N, D)
        assert feats.shape == (2, 1 + model.vit.patch_embed.num_patches, 32)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        assert torch.allclose(model.forward_head(feats), model(x), atol=1e-5)
    assert model.num_features == 32 and model.num_classes == 5
    assert model.get_classifier() is model.vit.head
    model.reset_classifier(3)
    assert model.num_classes == 3 and model.vit.num_classes == 3
    assert model(x).shape == (2, 3)


@pytest.mark.parametrize("name", HYBRIDS)
def test_intermediates_match_feature_info(name: str) -> None:
    model = _small(name).eval()
    assert len(model.feature_info) == 1 + 2  # conv block + each ViT block
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(2, 3, 64, 64), intermediates_only=True)
        final, last = model.forward_intermediates(torch.randn(2, 3, 64, 64), indices=1)
    assert len(maps) == len(model.feature_info)
    for fmap, info in zip(maps, model.feature_info, strict=True):
        side = math.ceil(64 / info["reduction"])
        assert fmap.shape == (2, info["num_chs"], side, side), info  # NCHW
    assert final.ndim == 3 and len(last) == 1 and last[0].shape == maps[-1].shape
    features = create_model(name, num_classes=5, img_size=64, features_only=True, **SMALL)
    assert [f.shape[1] for f in features(torch.randn(1, 3, 64, 64))] == [3, 32, 32]


def test_no_weight_decay_and_group_matcher() -> None:
    model = _small(TINY)
    assert model.no_weight_decay() == {f"vit.{n}" for n in model.vit.no_weight_decay()}
    assert "vit.pos_embed" in model.no_weight_decay()
    groups = timm.models.group_parameters(model, model.group_matcher())
    grouped = {n for names in groups.values() for n in names}
    assert grouped == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("img_size", [225, 48])
def test_bad_geometry_is_refused(img_size: int) -> None:
    with pytest.raises(ValueError, match="img_size"):
        _small(TINY, img_size=img_size)


# --- weights ----------------------------------------------------------------------------------


def _save_small_vit(path: Path, *, img_size: int, num_classes: int = 10, depth: int = 2) -> dict:
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=img_size,
        num_classes=num_classes,
        **dict(SMALL, depth=depth),
    )
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    save_file(state, str(path))
    return state


def test_vit_weights_resampled_and_head_replaced(tmp_path: Path) -> None:
    path = tmp_path / "vit.safetensors"
    state = _save_small_vit(path, img_size=64)  # 4 x 4 grid, 10 classes
    model = _small(TINY, img_size=64, num_classes=3, vit_weights=path)  # inner 32 px: 2 x 2 grid
    own = model.vit.state_dict()
    for key, value in state.items():
        if key.startswith("head.") or key == "pos_embed":
            continue
        assert torch.equal(own[key], value), key
    assert own["head.weight"].shape == (3, 32)
    expected = resample_abs_pos_embed(state["pos_embed"], new_size=(2, 2), num_prefix_tokens=1)
    assert own["pos_embed"].shape == (1, 1 + 4, 32)
    assert torch.allclose(own["pos_embed"], expected)


def test_vit_weights_same_grid_load_exactly(tmp_path: Path) -> None:
    path = tmp_path / "vit.pt"
    state = _save_small_vit(path.with_suffix(".safetensors"), img_size=64)
    torch.save(state, path)  # a plain torch file, read with weights_only=True
    model = _small(BASE, img_size=64, num_classes=10, vit_weights=path)
    own = model.vit.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())  # head kept: same classes
    # timm's pretrained=True with vit_weights: the ViT part is pretrained, from the file
    again = timm.create_model(BASE, pretrained=True, img_size=64, vit_weights=path, **SMALL)
    assert torch.equal(again.vit.pos_embed, state["pos_embed"])


def test_vit_weights_missing_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "vit.safetensors"
    _save_small_vit(path, img_size=64, depth=1)  # the model has 2 blocks
    with pytest.raises(ModelError, match=r"missing.*blocks\.1\."):
        _small(BASE, img_size=64, vit_weights=path)


def test_whole_hybrid_checkpoint_through_registry_weights(tmp_path: Path) -> None:
    source = _small(TINY, num_classes=5)
    path = tmp_path / "hybrid.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_model(TINY, num_classes=3, img_size=64, weights=path, **SMALL)
    own = model.state_dict()
    assert torch.equal(own["conv_block.0.weight"], source.conv_block[0].weight)
    assert torch.equal(own["vit.blocks.1.mlp.fc2.weight"], source.vit.blocks[1].mlp.fc2.weight)
    assert own["vit.head.weight"].shape == (3, 32)


@pytest.mark.parametrize("via_timm", [False, True])
def test_pretrained_fails_fast_offline(monkeypatch: pytest.MonkeyPatch, via_timm: bool) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", "/nonexistent")
    start = time.monotonic()
    with pytest.raises(ModelError, match=r"no pretrained vit_tiny_patch16_224.*vit_weights="):
        if via_timm:
            timm.create_model(TINY, pretrained=True)
        else:
            create_model(TINY, num_classes=3, pretrained=True)
    assert time.monotonic() - start < 5


# --- surgery ------------------------------------------------------------------------------


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_blocks_and_head_for_surgery() -> None:
    model = _small(TINY)
    assert model_blocks(model) == list(model.vit.blocks)
    heads = head_modules(model)
    assert heads[0] is model.vit.head
    assert model.vit.norm in heads
    assert not any(k.startswith("blocks.") for k in model.state_dict())  # no duplicate keys


def test_freeze_last_block_then_train_conv_block() -> None:
    model = _small(TINY)
    total = _params(model)
    freeze_all_but_last_blocks(model, 1)
    expected = {
        n
        for n, _ in model.named_parameters()
        if n.startswith(("vit.blocks.1.", "vit.head.", "vit.norm.", "vit.fc_norm."))
    }
    assert _trainable(model) == expected
    assert count_parameters(model)[0] == total
    # seed 000 trains the conv block with the last blocks
    freeze_all_but_last_blocks(model, 1, also_trainable=["conv_block"])
    conv = {n for n, _ in model.named_parameters() if n.startswith("conv_block.")}
    assert len(conv) == 12  # 3 convs + 3 BNs, weight and bias each
    assert _trainable(model) == expected | conv
    assert all(type(m) is nn.BatchNorm2d for m in model.conv_block if "Norm" in type(m).__name__)
    model.train()
    before = model.conv_block[1].running_mean.clone()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert not torch.equal(model.conv_block[1].running_mean, before)  # BN statistics update
    assert model.conv_block[0].weight.grad is not None
    assert model.vit.blocks[0].attn.qkv.weight.grad is None


def test_pretrained_loads_the_published_vit_from_the_hub_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    published = timm.create_model("vit_tiny_patch16_224")
    hub_cache_entry(monkeypatch, tmp_path, "vit_tiny_patch16_224", published.state_dict())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    model = create_model(TINY, num_classes=2, img_size=224, pretrained=True)
    own = model.vit.state_dict()
    assert torch.equal(own["blocks.11.mlp.fc2.weight"], published.blocks[11].mlp.fc2.weight)
    assert own["pos_embed"].shape == (1, 1 + 7 * 7, 192)  # 14x14 grid resampled to 7x7
    assert model.vit.head.weight.shape == (2, 192)


def test_the_old_names_still_build_the_renamed_hybrids():
    from cnnvit.models import family_of_name

    for old, new in (("hybrid_convblock_vit_base", BASE), ("hybrid_convblock_vit_tiny", TINY)):
        with torch.device("meta"):
            a = create_model(old, num_classes=3, img_size=64)
            b = create_model(new, num_classes=3, img_size=64)
        assert {k: v.shape for k, v in a.state_dict().items()} == {
            k: v.shape for k, v in b.state_dict().items()
        }
        assert a.pretrained_cfg["architecture"] == new
        assert family_of_name(old) == "hybrid"
