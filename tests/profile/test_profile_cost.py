"""Cost: FLOPs/MACs against published figures and hand counts, parameters, size on disk."""

from __future__ import annotations

import json
import struct

import pytest
import timm
import torch
import torch.nn as nn

from cnnvit.models.surgery import freeze_all_but_last_blocks
from cnnvit.profile.cost import count_flops, measure_cost, save_weights

# Published forward MACs at 224 px (ResNet paper / timm tables; ViT-B/16 with its 197 tokens).
REFERENCE_GMACS = {"resnet18": 1.82, "resnet50": 4.11, "vit_base_patch16_224": 17.58}


@pytest.fixture(scope="module")
def vit_base() -> nn.Module:
    # Real weights on the CPU, so the fused CPU attention kernel is what gets counted.
    return timm.create_model("vit_base_patch16_224", num_classes=1000).eval()


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_macs_match_the_published_figures(name: str) -> None:
    # meta device: shapes only (convolution counts do not depend on the device; see below)
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=1000)
    count = count_flops(model, 224)
    assert count.macs / 1e9 == pytest.approx(REFERENCE_GMACS[name], rel=0.02)
    assert count.macs == count.flops // 2
    assert set(count.by_op) == {"aten.convolution", "aten.addmm"}
    # the classifier alone: 2048 (or 512) inputs x 1000 outputs, one multiply-add each
    assert count.by_op["aten.addmm"] == 2 * model.num_features * 1000


def test_vit_base_macs_include_fused_attention(vit_base: nn.Module) -> None:
    assert vit_base.blocks[0].attn.fused_attn, "timm should use F.scaled_dot_product_attention"
    count = count_flops(vit_base, 224)
    assert count.macs / 1e9 == pytest.approx(REFERENCE_GMACS["vit_base_patch16_224"], rel=0.02)
    attention = {op: n for op, n in count.by_op.items() if "attention" in op}
    assert len(attention) == 1, count.by_op
    # q @ k^T and attn @ v: 2 products of 197 x 197 x 64 per head, 12 heads, 12 blocks
    tokens, heads, head_dim, depth = 197, 12, 64, 12
    assert sum(attention.values()) == 2 * 2 * heads * tokens * tokens * head_dim * depth
    assert sum(count.by_op.values()) == count.flops


def test_attention_grows_with_the_square_of_the_tokens() -> None:
    """At 4x the pixels a ViT has 4x the tokens: linear layers x4, attention x16."""
    small, large = (
        count_flops(timm.create_model("vit_mini", num_classes=10, img_size=s), s) for s in (16, 32)
    )

    def attention(c) -> int:
        return sum(n for op, n in c.by_op.items() if "attention" in op)

    tokens_small, tokens_large = (16 // 4) ** 2 + 1, (32 // 4) ** 2 + 1  # patch 4, + class token
    assert attention(large) / attention(small) == pytest.approx((tokens_large / tokens_small) ** 2)


def test_macs_of_a_small_network_equal_a_hand_count() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=3, padding=1),  # 32x32 output
        nn.ReLU(),
        nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1),  # 16x16 output
        nn.Flatten(),
        nn.Linear(16 * 16 * 16, 10),
    )
    expected = 32 * 32 * 8 * 3 * 9 + 16 * 16 * 16 * 8 * 9 + 16 * 16 * 16 * 10
    count = count_flops(model, 32)
    assert count.macs == expected
    assert count.flops == 2 * expected


def test_counting_leaves_the_train_mode_and_works_on_the_meta_device() -> None:
    real = timm.create_model("resnet18", num_classes=10)
    real.train()
    count = count_flops(real, 64)
    assert real.training
    with torch.device("meta"):
        meta = timm.create_model("resnet18", num_classes=10)
    assert count_flops(meta, 64) == count


def test_parameter_counts_are_exact() -> None:
    for name in ("resnet50", "vit_base_patch16_224"):
        with torch.device("meta"):
            model = timm.create_model(name, num_classes=1000)
        cost = measure_cost(model, 32 if name == "resnet50" else 224, disk_bytes=0)
        assert cost.params_total == sum(p.numel() for p in model.parameters())
        assert cost.params_trainable == cost.params_total
    resnet = timm.create_model("resnet18", num_classes=10)
    total = sum(p.numel() for p in resnet.parameters())
    freeze_all_but_last_blocks(resnet, 1)
    cost = measure_cost(resnet, 32)
    assert cost.params_total == total  # frozen BatchNorm affines still count
    assert cost.params_trainable == sum(p.numel() for p in resnet.parameters() if p.requires_grad)
    assert cost.params_trainable < total


def test_disk_size_is_the_safetensors_file(tmp_path) -> None:
    model = timm.create_model("resnet_mini", num_classes=10)
    path = tmp_path / "m.safetensors"
    size = save_weights(model, path)
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    tensor_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert size == len(raw) == 8 + header_len + tensor_bytes
    assert set(header) - {"__metadata__"} == set(model.state_dict())
    cost = measure_cost(model, 32)
    assert cost.disk_bytes == size
    assert cost.disk_mb == size / 1e6
    assert cost.to_dict()["disk_mb"] == size / 1e6
