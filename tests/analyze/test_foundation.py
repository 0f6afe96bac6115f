"""Subjects, image sets, layer names and hooks: the ground every analysis stands on."""

from __future__ import annotations

import pytest
import torch
from tests.analyze.conftest import accuracy, make_subject, pattern_images

from cnnvit.analyze.hooks import LayerRecorder, preserved
from cnnvit.analyze.layers import (
    block_layers,
    resolve_layers,
    stage_layers,
    token_layout,
    vit_block_layers,
)


def test_brief_training_learns_the_patterns(trained_cnn, trained_vit):
    held_out = pattern_images(64, seed=1)
    assert accuracy(trained_cnn, held_out) > 0.9
    assert accuracy(trained_vit, held_out) > 0.9


def test_token_layout_is_read_from_the_model():
    vit32 = make_subject("vit_mini").model  # patch 4 at 32 px
    assert token_layout(vit32).grid == (8, 8) and token_layout(vit32).num_prefix == 1
    deit = make_subject("deit_tiny_distilled_patch16_224", image_size=224).model
    layout = token_layout(deit)
    assert layout.grid == (14, 14) and layout.num_prefix == 2 and layout.patch == (16, 16)
    regs = make_subject("vit_small_patch16_224", image_size=64, reg_tokens=4).model
    layout = token_layout(regs)
    assert layout.grid == (4, 4) and layout.num_prefix == 5
    tokens = torch.arange(2 * 21 * 3, dtype=torch.float32).view(2, 21, 3)
    grid = layout.to_map(tokens)  # (2, 3, 4, 4)
    assert grid.shape == (2, 3, 4, 4)
    assert torch.equal(grid[1, 2, 0, 1], tokens[1, 5 + 1, 2])  # first patch row, second column
    assert token_layout(make_subject("resnet_mini").model) is None


def test_layer_sets_follow_feature_info():
    cnn = make_subject("resnet18").model
    assert stage_layers(cnn) == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert block_layers(cnn)[1:4] == ["layer1.0", "layer1.1", "layer2.0"]
    hybrid = make_subject("vit_convblock_tiny_patch16", image_size=224).model
    assert block_layers(hybrid)[:2] == ["conv_block", "vit.blocks.0"]
    assert len(vit_block_layers(hybrid)) == 12
    with pytest.raises(KeyError, match="no module 'layer9'"):
        resolve_layers(cnn, ["layer9"])
    with pytest.raises(ValueError, match="unknown layer set 'deep'"):
        resolve_layers(cnn, "deep")


def test_recorder_keeps_outputs_and_removes_its_hooks():
    model = make_subject("resnet_mini").model
    x = torch.randn(2, 3, 32, 32)
    with LayerRecorder(model, ["layer1", "layer4"]) as rec:
        model(x)
    assert rec.outputs["layer1"].shape == (2, 16, 32, 32)
    assert rec.outputs["layer4"].shape == (2, 128, 4, 4)
    assert all(not m._forward_hooks for m in model.modules())


def test_preserved_restores_modes_flags_and_fused_attention():
    model = make_subject("vit_mini").model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    with preserved(model):
        model.train()
        for p in model.parameters():
            p.requires_grad_(False)
        for block in model.blocks:
            block.attn.fused_attn = False
    assert not model.training and all(p.requires_grad for p in model.parameters())
    assert all(block.attn.fused_attn for block in model.blocks)
    with torch.no_grad():
        assert torch.equal(model(x), before)
