"""Grad-CAM at every depth: geometry for CNNs, ViTs (any grid, any prefix tokens) and hybrids,
localisation on a trained CNN, every method by name, a model left as it was, the report."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
from tests.analyze.conftest import make_subject, pattern_boxes, pattern_images

from cnnvit.analyze.analyses.gradcam import cam_figure, render_gradcam
from cnnvit.analyze.cam import CAM_METHODS, cam_area, cam_layers, compute_cams
from cnnvit.analyze.layers import block_layers, stage_layers, vit_block_layers
from cnnvit.analyze.run import analyse
from cnnvit.folders import AnalysisFolder


def _check_maps(maps: np.ndarray, layers: int, images: int, size: int) -> None:
    assert maps.shape == (layers, images, size, size)
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0


def _non_constant(maps: np.ndarray) -> np.ndarray:
    """(L, B, H, W) -> (L, B) True where a map varies over the image."""
    return maps.reshape(*maps.shape[:2], -1).std(axis=-1) > 1e-6


def test_cnn_maps_at_every_stage_and_block(trained_cnn):
    images = pattern_images(8, seed=3)
    result = compute_cams(trained_cnn, images.images, labels=images.labels)
    stages = stage_layers(trained_cnn.model)
    _check_maps(result.maps, len(stages), 8, 32)
    assert result.layers == stages
    varies = _non_constant(result.maps)
    assert varies.any(axis=1).all(), "a stage gave only constant maps"
    assert varies[-1].all(), "the last stage must explain every image"
    blocks = compute_cams(trained_cnn, images.images, layers="blocks", target="predicted")
    _check_maps(blocks.maps, len(block_layers(trained_cnn.model)), 8, 32)
    # target='predicted' explains the prediction
    assert np.array_equal(blocks.targets, blocks.predicted)


def test_vit_maps_at_every_block_patch_4(trained_vit):
    images = pattern_images(8, seed=3)
    result = compute_cams(trained_vit, images.images, labels=images.labels)
    _check_maps(result.maps, len(trained_vit.model.blocks), 8, 32)
    assert result.layers == [f"block {i}" for i in range(len(trained_vit.model.blocks))]
    assert result.modules == [f"blocks.{i}.norm1" for i in range(len(trained_vit.model.blocks))]
    varies = _non_constant(result.maps)
    assert varies.mean() > 0.8, f"most ViT maps should vary, got {varies.mean():.2f}"


@pytest.mark.parametrize(
    ("name", "size", "kwargs", "depth"),
    [
        ("vit_tiny_patch16_224", 224, {}, 12),  # 14 x 14 patches of 16, class token
        ("vit_small_patch16_224", 64, {"reg_tokens": 4}, 12),  # 4 x 4, class + 4 registers
        ("deit_tiny_distilled_patch16_224", 224, {}, 12),  # class + distillation tokens
        ("vit_convblock_tiny_patch16", 224, {}, 13),  # conv block, then 12 ViT blocks
    ],
)
def test_vit_geometries_and_prefix_tokens(name, size, kwargs, depth):
    subject = make_subject(name, image_size=size, **kwargs)
    images = pattern_images(2, size=size, seed=4)
    result = compute_cams(subject, images.images, labels=images.labels)
    _check_maps(result.maps, depth, 2, size)
    # random weights: a layer's ReLU'd CAM may be empty, but gradients must reach the layers
    assert _non_constant(result.maps).any(axis=1).sum() >= depth // 2
    if name.startswith("hybrid"):
        assert result.layers[0] == "conv_block" and result.layers[1] == "block 0"
        assert result.modules[1:] == [f"{b}.norm1" for b in vit_block_layers(subject.model)]


def _gradcam_by_hand(subject, images, labels, block: int) -> np.ndarray:
    """Grad-CAM at blocks[block].norm1 written out: tokens without the prefix, laid on the grid
    read from patch_embed, channel weights = mean gradient, ReLU, min-max, resize."""
    model = vit = subject.model
    kept = {}
    handle = vit.blocks[block].norm1.register_forward_hook(
        lambda m, a, out: kept.setdefault("a", out)
    )
    try:
        x = subject.prepare(images).requires_grad_(True)
        logits = model(x)
        act = kept["a"]  # (B, N, C)
        (grad,) = torch.autograd.grad(logits[torch.arange(len(labels)), labels].sum(), act)
    finally:
        handle.remove()
    rows, cols = vit.patch_embed.grid_size
    prefix = act.shape[1] - rows * cols
    a = act[:, prefix:].detach().reshape(len(labels), rows, cols, -1)  # (B, r, c, C)
    g = grad[:, prefix:].reshape(len(labels), rows, cols, -1)
    cam = torch.relu((a * g.mean(dim=(1, 2), keepdim=True)).sum(-1)).numpy()  # (B, r, c)
    out = []
    for m in cam:
        m = (m - m.min()) / (1e-7 + (m - m.min()).max())
        out.append(cv2.resize(np.float32(m), (subject.image_size, subject.image_size)))
    return np.stack(out)


def test_vit_cam_matches_a_hand_written_gradcam_with_register_tokens():
    subject = make_subject("vit_small_patch16_224", image_size=64, reg_tokens=4)
    images = pattern_images(3, size=64, seed=5)
    result = compute_cams(subject, images.images, labels=images.labels)
    for block in (0, 6, 11):
        expected = _gradcam_by_hand(subject, images.images, images.labels, block)
        np.testing.assert_allclose(result.maps[block], expected, atol=1e-4)


def test_cnn_cam_peaks_on_the_object(trained_cnn):
    images, boxes = pattern_boxes(48, seed=2)
    result = compute_cams(trained_cnn, images.images, layers=["layer4"], labels=images.labels)
    hits = []
    margin = 4  # half a layer4 cell (8 px at 32 px): the bilinear upsampling's uncertainty
    for cam, (top, left, side) in zip(result.maps[0], boxes, strict=True):
        y, x = np.unravel_index(cam.argmax(), cam.shape)
        hits.append(
            top - margin <= y < top + side + margin and left - margin <= x < left + side + margin
        )
    # chance (a uniformly random peak) is about 0.25: a 16 x 16 px window in 32 x 32 px
    assert np.mean(hits) >= 0.8, f"peak on the object for {np.mean(hits):.0%} of images"


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_every_method_runs_by_name(method):
    subject = make_subject("resnet_mini")
    images = pattern_images(2, seed=6)
    result = compute_cams(
        subject, images.images, method=method, layers=["layer3", "layer4"], labels=images.labels
    )
    _check_maps(result.maps, 2, 2, 32)


def test_unknown_method_and_target_are_refused():
    subject = make_subject("resnet_mini")
    images = pattern_images(2)
    with pytest.raises(ValueError, match=r"unknown CAM method 'gradcam3'.*eigencam.*gradcam"):
        compute_cams(subject, images.images, method="gradcam3", labels=images.labels)
    with pytest.raises(ValueError, match="target='label' needs labels"):
        compute_cams(subject, images.images)
    with pytest.raises(ValueError, match="class indices below 4"):
        compute_cams(subject, images.images, labels=[0, 7])
    with pytest.raises(ValueError, match="unknown CAM target"):
        compute_cams(subject, images.images, target="truth")


def test_layers_in_any_order_are_returned_in_that_order(trained_cnn):
    images = pattern_images(4, seed=7)
    forward = compute_cams(
        trained_cnn, images.images, layers=["layer2", "layer4"], labels=images.labels
    )
    backward = compute_cams(
        trained_cnn, images.images, layers=["layer4", "layer2"], labels=images.labels
    )
    assert backward.layers == ["layer4", "layer2"]
    np.testing.assert_array_equal(backward.maps[0], forward.maps[1])
    np.testing.assert_array_equal(backward.maps[1], forward.maps[0])


def test_frozen_model_still_gets_cams_and_stays_frozen():
    subject = make_subject("resnet_mini")
    for p in subject.model.parameters():
        p.requires_grad_(False)
    images = pattern_images(4, seed=8)
    with torch.inference_mode():  # a caller's inference mode must not starve the gradients
        result = compute_cams(subject, images.images, labels=images.labels)
    assert _non_constant(result.maps)[-1].all()
    assert not any(p.requires_grad for p in subject.model.parameters())
    assert all(p.grad is None for p in subject.model.parameters())


def test_cam_area_counts_pixels_at_half_maximum():
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, :2, :2] = [[1.0, 0.6], [0.5, 0.2]]  # 3 of 16 pixels >= 0.5
    area = cam_area(maps)
    assert area[0] == pytest.approx(3 / 16)
    assert np.isnan(area[1])  # an empty map has no area


def _hooks(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def _state(model: torch.nn.Module):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [getattr(m, "fused_attn", None) for m in model.modules()],
    )


def test_gradcam_analysis_leaves_models_as_they_were(tmp_path):
    cnn, vit = make_subject("resnet_mini"), make_subject("vit_mini")
    # a mixed state to keep: half the parameters frozen, one module in train mode, a .grad
    for p in list(cnn.model.parameters())[:10]:
        p.requires_grad_(False)
    vit.model.blocks[0].train()
    marker = torch.ones_like(vit.model.head.weight)
    vit.model.head.weight.grad = marker
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = [cnn.model(x), vit.model(x)]
    states = [_state(cnn.model), _state(vit.model)]
    images = pattern_images(12, seed=9)
    result = analyse("gradcam", [cnn, vit], tmp_path, val=images, num_images=4, progress=False)
    with torch.no_grad():
        after = [cnn.model(x), vit.model(x)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert [_state(cnn.model), _state(vit.model)] == states
    assert _hooks(cnn.model) == 0 and _hooks(vit.model) == 0
    assert vit.model.head.weight.grad is marker
    # what was written
    assert json.loads((tmp_path / "gradcam.json").read_text()) == result
    assert result["num_images"] == 4 and len(result["image_indices"]) == 4
    for model, depth in zip(result["models"], (5, 4), strict=True):
        assert len(model["layers"]) == len(model["cam_area"]) == depth
        assert model["relative_depth"][-1] == 1.0
        assert all(a is None or 0 < a <= 1 for a in model["cam_area"])
        assert (tmp_path / model["figure"]).stat().st_size > 1000
    assert (tmp_path / "gradcam_area.png").is_file()
    rows = (tmp_path / "gradcam_area.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 + 4


def test_gradcam_analysis_area_matches_the_maps(tmp_path, trained_cnn):
    images = pattern_images(8, seed=10)
    result = analyse("gradcam", [trained_cnn], tmp_path, val=images, num_images=8, progress=False)
    cams = compute_cams(trained_cnn, images.images, labels=images.labels)
    by_hand = [np.mean([(m >= 0.5 * m.max()).mean() for m in layer]) for layer in cams.maps]
    np.testing.assert_allclose(result["models"][0]["cam_area"], by_hand, rtol=1e-6)


def test_cam_figure_shows_each_models_prediction(trained_cnn, trained_vit):
    images = pattern_images(3, seed=11)
    fig = cam_figure([trained_cnn, trained_vit], images)
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    predicted = trained_cnn.logits(images.images).argmax(1)
    assert all(trained_cnn.classes[int(k)] in texts for k in predicted)
    assert texts.count("resnet_mini") == 3 and texts.count("vit_mini") == 3


def test_cam_layers_hook_vit_norm1_and_cnn_stages():
    vit = make_subject("vit_mini").model
    layers = cam_layers(vit)
    assert [c.module for c in layers] == [b.norm1 for b in vit.blocks]
    tokens = torch.randn(2, 1 + 64, 24)  # class token + 8 x 8 patches
    assert layers[0].reshape(tokens).shape == (2, 24, 8, 8)
    cnn = make_subject("resnet_mini").model
    assert [c.reshape for c in cam_layers(cnn)] == [None] * len(stage_layers(cnn))


def test_render_gradcam_embeds_figures_and_escapes_labels(tmp_path, trained_cnn):
    subject = dataclasses.replace(trained_cnn, label="<b>")
    images = pattern_images(4, seed=12)
    analyse("gradcam", [subject], tmp_path, val=images, num_images=4, progress=False)
    html = render_gradcam(AnalysisFolder(tmp_path, "gradcam"))
    assert html.count("data:image/png;base64,") == 2  # area plot + the grid
    assert "&lt;b&gt;" in html and "<b>" not in html
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "missing" in render_gradcam(AnalysisFolder(empty, "gradcam"))
    (empty / "gradcam.json").write_text("{not json")
    assert "damaged" in render_gradcam(AnalysisFolder(empty, "gradcam"))


@pytest.mark.parametrize(
    ("name", "size", "stages"),
    [
        ("gresnet18", 32, 5),  # seed 003's GResNet: stem + 4 stages
        ("resnet18_cifar", 32, 5),
        ("vit_small_data", 32, 6),  # seed 004's ViT: patch 4, 6 blocks
        ("convnext_atto", 64, 4),  # a modernised timm ResNet
    ],
)
def test_cams_for_the_other_built_ins_and_timm_cnns(name, size, stages):
    subject = make_subject(name, image_size=size)
    images = pattern_images(2, size=size, seed=5)
    x = subject.prepare(images.images)
    with torch.no_grad():
        before = subject.model(x)
    result = compute_cams(subject, images.images, labels=images.labels)
    _check_maps(result.maps, stages, 2, size)
    with torch.no_grad():
        assert torch.equal(subject.model(x), before)
