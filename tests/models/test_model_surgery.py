"""Head replacement, block discovery, freezing all but the last k blocks, parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock
from timm.models.vision_transformer import Block
from torchvision.ops.misc import FrozenBatchNorm2d

from cnnvit.models import (
    ModelError,
    count_parameters,
    create_model,
    freeze_all_but_last_blocks,
    model_blocks,
    replace_head,
)

# name -> (block-name prefixes in forward order, head parameter prefixes), written out by hand
# so the expected sets do not come from the code under test.
LAYOUTS = {
    "resnet18_cifar": (
        [f"layer{s}.{b}." for s in (1, 2, 3, 4) for b in (0, 1)],
        ["fc."],
    ),
    "resnet_mini": (["layer1.0.", "layer2.0.", "layer3.0.", "layer4.0."], ["fc."]),
    "vit_small_data": ([f"blocks.{i}." for i in range(6)], ["head.", "norm."]),
    "vit_mini": ([f"blocks.{i}." for i in range(4)], ["head.", "norm."]),
    # ConvNeXt: a stage's downsample trains with the stage's first block
    "convnext_atto": (
        [f"stages.{s}.blocks.{b}." for s, n in enumerate((2, 2, 6, 2)) for b in range(n)],
        ["head.fc.", "head.norm."],
    ),
}


def _make(name: str, num_classes: int = 10) -> nn.Module:
    return create_model(name, num_classes=num_classes, img_size=32)


def _expected_trainable(name: str, model: nn.Module, k: int) -> set[str]:
    blocks, head = LAYOUTS[name]
    prefixes = [*blocks[len(blocks) - k :], *head]
    if name == "convnext_atto" and k >= 2:
        prefixes.append("stages.3.downsample.")
    return {n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes))}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_model_blocks_in_forward_order(name: str) -> None:
    model = _make(name)
    names = {id(m): n for n, m in model.named_modules()}
    got = [names[id(b)] + "." for b in model_blocks(model)]
    assert got == LAYOUTS[name][0]


def test_block_types() -> None:
    assert all(isinstance(b, BasicBlock) for b in model_blocks(_make("resnet18_cifar")))
    assert all(isinstance(b, Block) for b in model_blocks(_make("vit_mini")))
    assert len(model_blocks(create_model("resnet18", num_classes=3))) == 8  # stock timm ResNet


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("k", [0, 1, 2])
def test_freeze_leaves_exactly_the_last_k_blocks_and_head(name: str, k: int) -> None:
    model = _make(name)
    expected = _expected_trainable(name, model, k)  # from the unfrozen model's names
    freeze_all_but_last_blocks(model, k)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected
    assert trainable  # the head at least


def test_freeze_none_makes_everything_trainable_again() -> None:
    model = _make("resnet_mini")
    before = count_parameters(model)
    freeze_all_but_last_blocks(model, 1)
    assert count_parameters(model)[0] == before[0]  # frozen BN weights still counted
    freeze_all_but_last_blocks(model, None)
    assert count_parameters(model) == before
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


def test_refreeze_depends_on_k_only() -> None:
    model = _make("resnet_mini")
    freeze_all_but_last_blocks(model, 0)
    freeze_all_but_last_blocks(model, 2)
    fresh = _make("resnet_mini")
    freeze_all_but_last_blocks(fresh, 2)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, p in fresh.named_parameters() if p.requires_grad
    }


def test_frozen_batchnorm_keeps_running_stats() -> None:
    model = _make("resnet_mini")
    freeze_all_but_last_blocks(model, 1)  # layer4.0 trainable, the rest frozen
    assert isinstance(model.bn1, FrozenBatchNorm2d)
    assert isinstance(model.layer3[0].bn1, FrozenBatchNorm2d)
    assert isinstance(model.layer4[0].bn1, nn.BatchNorm2d)
    frozen_before = model.layer3[0].bn1.running_mean.clone()
    trained_before = model.layer4[0].bn1.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 32, 32) * 3 + 1).sum().backward()
    assert torch.equal(model.layer3[0].bn1.running_mean, frozen_before)
    assert not torch.equal(model.layer4[0].bn1.running_mean, trained_before)


def test_frozen_checkpoint_loads_into_unfrozen_model() -> None:
    frozen = _make("resnet_mini")
    freeze_all_but_last_blocks(frozen, 1)
    fresh = _make("resnet_mini")
    fresh.load_state_dict(frozen.state_dict())  # strict: same keys either way
    frozen.load_state_dict(fresh.state_dict())


def test_count_parameters_head_only() -> None:
    model = _make("resnet_mini")
    freeze_all_but_last_blocks(model, 0)
    total, trainable = count_parameters(model)
    assert trainable == 128 * 10 + 10  # fc only
    assert total == sum(p.numel() for p in _make("resnet_mini").parameters())


@pytest.mark.parametrize(("name", "blocks"), [("resnet_mini", 4), ("vit_small_data", 6)])
def test_freeze_too_many_blocks_says_how_many(name: str, blocks: int) -> None:
    with pytest.raises(ModelError, match=f"has {blocks} blocks"):
        freeze_all_but_last_blocks(_make(name), blocks + 1)
    with pytest.raises(ModelError):
        freeze_all_but_last_blocks(_make(name), -1)
    freeze_all_but_last_blocks(_make(name), blocks)  # all blocks + head: the stem stays frozen


def test_unsplittable_model_is_a_clear_error() -> None:
    with pytest.raises(ModelError, match="cannot split Sequential into blocks"):
        model_blocks(nn.Sequential(nn.Linear(2, 2)))


def test_replace_head() -> None:
    model = _make("vit_mini")
    replace_head(model, 3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ModelError, match="reset_classifier"):
        replace_head(nn.Linear(2, 2), 3)


# Seed 000's two models, real sizes; the last four blocks written out by hand (ResNet-101 has
# 3, 4, 23, 3 bottlenecks; ViT-B/16 has 12 blocks and token pooling, so fc_norm is Identity).
SEED_000_LAST_BLOCKS = {
    "resnet101": (["layer3.22.", "layer4.0.", "layer4.1.", "layer4.2."], ["fc."]),
    "vit_base_patch16_224": ([f"blocks.{i}." for i in (8, 9, 10, 11)], ["head.", "norm."]),
}


@pytest.mark.parametrize("name", sorted(SEED_000_LAST_BLOCKS))
def test_seed_000_sweep_k_1_to_4(name: str) -> None:
    model = create_model(name, num_classes=2)
    blocks, head = SEED_000_LAST_BLOCKS[name]
    total = count_parameters(model)[0]
    for k in (1, 2, 3, 4):
        freeze_all_but_last_blocks(model, k)
        prefixes = (*blocks[4 - k :], *head)
        expected = {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == expected
        assert count_parameters(model) == (
            total,
            sum(model.get_parameter(n).numel() for n in expected),
        )


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_training_step_moves_only_the_trainable_part(k: int) -> None:
    """One SGD step in train mode: frozen weights and frozen BatchNorm statistics stay put,
    the last k blocks' weights and statistics move."""
    torch.manual_seed(0)
    # zero_init_last would leave a block's convs without gradient in the first step
    model = create_model("resnet18_cifar", num_classes=10, zero_init_last=False)
    freeze_all_but_last_blocks(model, k)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.arange(8))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    trained_prefixes = (*LAYOUTS["resnet18_cifar"][0][8 - k :], "fc.")
    frozen_bns = [n for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen_bns and all(not n.startswith(trained_prefixes) for n in frozen_bns)
    for name, tensor in after.items():
        if name.endswith("num_batches_tracked"):
            continue
        moved = not torch.equal(tensor, before[name])
        assert moved == name.startswith(trained_prefixes), name


def test_also_trainable_keeps_a_module_trainable() -> None:
    model = _make("resnet_mini")
    freeze_all_but_last_blocks(model, 1, also_trainable=["conv1", "bn1"])
    assert model.conv1.weight.requires_grad
    assert type(model.bn1) is nn.BatchNorm2d  # not swapped for a frozen one
    assert not model.layer1[0].conv1.weight.requires_grad
    with pytest.raises(ModelError, match=r"no module 'stem'.*conv1, bn1"):
        freeze_all_but_last_blocks(model, 1, also_trainable=["stem"])
