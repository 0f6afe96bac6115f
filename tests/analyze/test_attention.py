"""ViT attention maps, rollout, mean attention distance and the CNN effective receptive field."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch
from tests.analyze.conftest import make_subject, pattern_images
from torch import nn

from cnnvit.analyze.analyses.attention import render_attention
from cnnvit.analyze.attention import (
    attention_modules,
    attention_rollout,
    attention_rollout_matrix,
    capture_attention,
    class_token_maps,
    mean_attention_distance,
)
from cnnvit.analyze.layers import TokenLayout, stage_layers, token_layout
from cnnvit.analyze.receptive_field import receptive_field_distance, theoretical_receptive_field
from cnnvit.analyze.run import analyse
from cnnvit.analyze.subject import Subject
from cnnvit.folders import AnalysisFolder


def random_attention(layers: int, batch: int, heads: int, tokens: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, heads, tokens, tokens, generator=gen).mul(3).softmax(-1)
        for _ in range(layers)
    ]


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# --- maps and rollout on hand-built attention ---------------------------------------------------


def test_class_token_maps_renormalise_and_keep_the_patch_share():
    layout = TokenLayout(grid=(3, 4), num_prefix=2, patch=(4, 4))
    attentions = random_attention(layers=3, batch=2, heads=4, tokens=14)
    maps = class_token_maps(attentions, layout)
    assert maps.shape == (3, 2, 3, 4)
    for layer, a in enumerate(attentions):
        mean = a.double().numpy().mean(1)  # (B, N, N)
        full = (mean + np.eye(14)) / (mean + np.eye(14)).sum(-1, keepdims=True)
        np.testing.assert_allclose(full.sum(-1), 1.0, atol=1e-12)
        # softmax rows sum to 1, so the class-token row of (A + I) sums to 2: every weight halves
        prefix = (mean[:, 0, 0] + 1 + mean[:, 0, 1]) / 2
        patch_share = maps[layer].double().flatten(1).sum(1).numpy()
        np.testing.assert_allclose(patch_share, 1 - prefix, atol=1e-6)
        expected = mean[:, 0, 2:].reshape(2, 3, 4) / 2
        np.testing.assert_allclose(maps[layer].numpy(), expected, atol=1e-6)
        # one layer's rollout matrix is that layer's renormalised matrix
        single = attention_rollout_matrix([a]).double().numpy()
        np.testing.assert_allclose(single, full, atol=1e-6)


def test_rollout_of_identity_attention_is_identity():
    layout = TokenLayout(grid=(2, 3), num_prefix=1, patch=(8, 8))
    eye = torch.eye(7).expand(2, 3, 7, 7)
    matrix = attention_rollout_matrix([eye] * 4)
    assert torch.allclose(matrix, torch.eye(7).expand(2, 7, 7))
    assert torch.count_nonzero(attention_rollout([eye] * 4, layout)) == 0


def test_rollout_is_the_product_of_renormalised_layers():
    layout = TokenLayout(grid=(2, 2), num_prefix=1, patch=(4, 4))
    attentions = random_attention(layers=3, batch=1, heads=2, tokens=5, seed=3)
    steps = []
    for a in attentions:
        m = a[0].double().numpy().mean(0) + np.eye(5)
        steps.append(m / m.sum(1, keepdims=True))
    expected = steps[2] @ steps[1] @ steps[0]  # the deepest layer on the left
    matrix = attention_rollout_matrix(attentions)[0].double().numpy()
    np.testing.assert_allclose(matrix, expected, atol=1e-6)
    np.testing.assert_allclose(matrix.sum(1), 1.0, atol=1e-6)
    roll = attention_rollout(attentions, layout)[0].double().numpy()
    np.testing.assert_allclose(roll.ravel(), expected[0, 1:], atol=1e-6)


def test_rollout_through_a_real_model_with_identity_attention():
    subject = make_subject("vit_mini")
    images = pattern_images(2).images
    tokens = 1 + 64

    def identity(module, args, output):
        return torch.eye(tokens).expand_as(output).clone()

    handles = [
        m.attn_drop.register_forward_hook(identity) for m in attention_modules(subject.model)
    ]
    try:
        attentions = capture_attention(subject, images)
    finally:
        for h in handles:
            h.remove()
    assert len(attentions) == 4
    matrix = attention_rollout_matrix(attentions)
    assert torch.allclose(matrix, torch.eye(tokens).expand(2, tokens, tokens))


# --- mean attention distance --------------------------------------------------------------------


@pytest.mark.parametrize(("image_size", "num_prefix"), [(16, 1), (32, 2)])
def test_uniform_attention_distance_is_the_mean_patch_distance(image_size, num_prefix):
    rows = cols = 4
    layout = TokenLayout(grid=(rows, cols), num_prefix=num_prefix, patch=(4, 4))
    tokens = num_prefix + rows * cols
    uniform = torch.full((3, 2, tokens, tokens), 1 / tokens)
    distance = mean_attention_distance([uniform, uniform], layout, image_size)
    assert distance.shape == (2, 2)
    # independent: every (query, key) pair of patch centres, each patch image_size / 4 wide
    step = image_size / rows
    centres = [((r + 0.5) * step, (c + 0.5) * step) for r in range(rows) for c in range(cols)]
    pairs = [math.dist(a, b) for a, b in itertools.product(centres, centres)]
    np.testing.assert_allclose(distance, sum(pairs) / len(pairs), rtol=1e-12)


def test_attention_to_self_or_a_neighbour_gives_its_distance():
    layout = TokenLayout(grid=(3, 3), num_prefix=1, patch=(4, 4))
    to_self = torch.eye(10).expand(1, 2, 10, 10)
    assert np.allclose(mean_attention_distance([to_self], layout, 12), 0.0)
    # every patch looks at the patch one row below (the last row at the first row): 4 or 8 px,
    # and half its weight on the class token, which must not count
    shifted = torch.zeros(1, 1, 10, 10)
    for q in range(9):
        shifted[0, 0, 1 + q, 1 + (q + 3) % 9] = 0.5
        shifted[0, 0, 1 + q, 0] = 0.5
    shifted[0, 0, 0, 0] = 1.0
    expected = (6 * 4 + 3 * 8) / 9
    assert np.allclose(mean_attention_distance([shifted], layout, 12), expected)


# --- capturing from real models -----------------------------------------------------------------


def test_captured_weights_equal_softmax_of_q_and_k(trained_vit):
    model = trained_vit.model
    images = pattern_images(3, seed=2).images
    inputs: dict[int, torch.Tensor] = {}
    handles = [
        block.attn.register_forward_pre_hook(
            lambda m, args, i=i: inputs.__setitem__(i, args[0].detach())
        )
        for i, block in enumerate(model.blocks)
    ]
    try:
        attentions = capture_attention(trained_vit, images)
    finally:
        for h in handles:
            h.remove()
    heads, dim = 3, 96  # vit_mini: 3 heads of 32
    for i, block in enumerate(model.blocks):
        x = inputs[i]  # (B, N, C), the normed tokens the attention received
        with torch.no_grad():
            qkv = block.attn.qkv(x).reshape(x.shape[0], x.shape[1], 3, heads, dim // heads)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)  # (B, heads, N, d)
        expected = (q @ k.transpose(-2, -1) / math.sqrt(dim // heads)).softmax(-1)
        torch.testing.assert_close(attentions[i], expected, atol=1e-5, rtol=0)


def test_fused_attention_and_the_model_are_restored(trained_vit):
    model = trained_vit.model
    for m in attention_modules(model):
        m.fused_attn = True
    x = trained_vit.prepare(pattern_images(4, seed=5).images)
    with torch.no_grad():
        before = model(x)
    seen: list[bool] = []
    probe = model.blocks[0].attn.register_forward_pre_hook(
        lambda m, args: seen.append(bool(m.fused_attn))
    )
    try:
        capture_attention(trained_vit, pattern_images(2).images)
    finally:
        probe.remove()
    assert seen == [False]
    assert all(m.fused_attn for m in attention_modules(model))
    assert no_hooks(model) and not model.training
    with torch.no_grad():
        assert torch.equal(model(x), before)


VARIANTS = [
    ("vit_mini", 32, {}, (8, 8), 1),
    ("vit_tiny_patch16_224", 224, {"depth": 3}, (14, 14), 1),
    ("deit_tiny_distilled_patch16_224", 224, {"depth": 3}, (14, 14), 2),
    ("vit_mini", 32, {"reg_tokens": 4}, (8, 8), 5),
    ("vit_convblock_tiny_patch16", 224, {"depth": 3}, (7, 7), 1),
]


@pytest.mark.parametrize(("name", "size", "kwargs", "grid", "prefix"), VARIANTS)
def test_every_vit_variant(name, size, kwargs, grid, prefix):
    subject = make_subject(name, image_size=size, **kwargs)
    layout = token_layout(subject.model, size)
    assert layout.grid == grid and layout.num_prefix == prefix
    images = pattern_images(2, size=size).images
    attentions = capture_attention(subject, images)
    tokens = prefix + grid[0] * grid[1]
    assert len(attentions) == len(attention_modules(subject.model))
    for a in attentions:
        assert a.dtype == torch.float32 and a.device.type == "cpu"
        assert a.shape == (2, a.shape[1], tokens, tokens)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5, rtol=0)
    assert class_token_maps(attentions, layout).shape == (len(attentions), 2, *grid)
    assert attention_rollout(attentions, layout).shape == (2, *grid)
    distance = mean_attention_distance(attentions, layout, size)
    assert distance.shape == (len(attentions), attentions[0].shape[1])
    assert np.isfinite(distance).all() and (distance > 0).all()
    assert (distance < size * math.sqrt(2)).all()
    assert all(m.fused_attn for m in attention_modules(subject.model))
    assert no_hooks(subject.model)


def test_a_cnn_has_no_attention_to_capture(trained_cnn):
    with pytest.raises(ValueError, match="no transformer"):
        capture_attention(trained_cnn, pattern_images(1).images)


# --- the CNN counterpart ------------------------------------------------------------------------


def conv_subject(*layers: nn.Module, size: int = 9) -> Subject:
    """A linear conv stack with all-ones kernels: its input gradient is known in closed form."""
    model = nn.Sequential(*layers).eval()
    for m in model:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    return Subject(
        "convs", model, "cnn", ["a"], size, 3, (0.0,) * 3, (1.0,) * 3, torch.device("cpu")
    )


def test_receptive_field_of_known_convolutions():
    subject = conv_subject(nn.Conv2d(3, 1, 3, padding=1), nn.Conv2d(1, 1, 3, stride=2, padding=1))
    images = pattern_images(3, size=9).images
    first, second = receptive_field_distance(subject, images, ["0", "1"])
    # a 3x3 all-ones kernel at the centre (4, 4): 4 neighbours at 1 px, 4 corners at sqrt 2
    assert first["theoretical_rf_px"] == 3 and first["centre_px"] == [4.0, 4.0]
    assert first["erf_distance_px"] == pytest.approx((4 + 4 * math.sqrt(2)) / 9)
    assert first["erf_radius90_px"] == pytest.approx(math.sqrt(2))
    # two layers, the second with stride 2: unit 2 of the 5x5 output sits at input pixel 4, and
    # the gradient is the outer product of the 1-D profile 1 2 3 2 1
    profile = {-2: 1, -1: 2, 0: 3, 1: 2, 2: 1}
    weights = {(dy, dx): profile[dy] * profile[dx] for dy in profile for dx in profile}
    expected = sum(w * math.hypot(*d) for d, w in weights.items()) / sum(weights.values())
    assert second["output_size"] == [5, 5] and second["centre_px"] == [4.0, 4.0]
    assert second["theoretical_rf_px"] == 5
    assert second["erf_distance_px"] == pytest.approx(expected)


def test_resnet_mini_fields_grow_with_depth(trained_cnn):
    model = trained_cnn.model
    requires = [p.requires_grad for p in model.parameters()]
    stages = receptive_field_distance(trained_cnn, pattern_images(16, seed=3))
    assert [s["layer"] for s in stages] == stage_layers(model)
    by_name = {s["layer"]: s for s in stages}
    assert by_name["layer4"]["erf_distance_px"] > by_name["layer1"]["erf_distance_px"]
    assert by_name["layer4"]["erf_radius90_px"] > by_name["layer1"]["erf_radius90_px"]
    # stem 3x3; each BasicBlock two 3x3 convs, the first strided from layer2 on
    assert [s["theoretical_rf_px"] for s in stages] == [3, 7, 13, 25, 49]
    fields = theoretical_receptive_field(model, ["layer4"])
    assert fields["layer4"]["jump"] == 8
    assert [p.requires_grad for p in model.parameters()] == requires and no_hooks(model)


def test_theoretical_field_is_refused_where_the_path_is_not_a_chain():
    convnext = make_subject("convnext_atto").model
    assert theoretical_receptive_field(convnext, stage_layers(convnext)) is None


# --- the analysis and its report section --------------------------------------------------------


def test_attention_analysis_writes_what_the_report_reads(trained_cnn, trained_vit, tmp_path):
    vit = dataclasses.replace(trained_vit, label="vit <b>&/x")
    images = pattern_images(40, seed=4)
    fixed = {s.label: s.prepare(images.images[:4]) for s in (trained_cnn, vit)}
    with torch.no_grad():
        before = {s.label: s.model(fixed[s.label]) for s in (trained_cnn, vit)}
    subjects = [trained_cnn, vit]
    result = analyse("attention", subjects, tmp_path, val=images, grid_images=3, progress=False)
    assert json.loads((tmp_path / "attention.json").read_text()) == result
    cnn_entry, vit_entry = result["models"]
    assert cnn_entry["kind"] == "receptive_field" and vit_entry["kind"] == "attention"
    assert (
        vit_entry["figure"] == "attention_vit_b_x.png"
        and (tmp_path / vit_entry["figure"]).is_file()
    )
    assert (tmp_path / "attention_distance.png").is_file()
    assert np.asarray(vit_entry["distance_px"]).shape == (4, 3)
    assert result["settings"]["distance_images"] == 40 and result["settings"]["grid_images"] == 3
    with (tmp_path / "attention_distance.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4 * 3 + len(cnn_entry["stages"])
    for s in (trained_cnn, vit):
        with torch.no_grad():
            assert torch.equal(s.model(fixed[s.label]), before[s.label])
        assert no_hooks(s.model)

    folder = AnalysisFolder(tmp_path, "attention")
    html = render_attention(folder)
    assert html.count("<img") == 2
    assert "vit &lt;b&gt;&amp;/x" in html and "<b>" not in html
    (tmp_path / vit_entry["figure"]).unlink()
    assert "missing" in render_attention(folder)
    (tmp_path / "attention.json").write_text("{")
    assert "damaged" in render_attention(folder)
    assert "missing" in render_attention(AnalysisFolder(tmp_path / "nowhere", "attention"))


def test_attention_analysis_rejects_duplicate_labels(trained_vit, tmp_path):
    # the check is Inputs' (every analysis's), and its message names the shared label
    subjects = [trained_vit, trained_vit]
    with pytest.raises(ValueError, match="share a label"):
        analyse("attention", subjects, tmp_path, val=pattern_images(4), progress=False)
