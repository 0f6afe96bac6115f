"""CNN feature maps: one channel-averaged map per convolution at the conv's own resolution, a
hybrid's conv block only, ViTs skipped, wide models capped, models left as they were."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from tests.analyze.conftest import make_subject, pattern_images

from cnnvit.analyze.analyses.featuremaps import render_featuremaps
from cnnvit.analyze.featuremaps import feature_maps, featuremap_layers
from cnnvit.analyze.run import analyse
from cnnvit.folders import AnalysisFolder
from cnnvit.plotting import MAX_COLUMNS, wrap_name


def _conv_outputs_by_hand(subject, images) -> dict[str, torch.Tensor]:
    """Every Conv2d's full output, from plain forward hooks."""
    outputs, handles = {}, []
    for name, module in subject.model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            handles.append(
                module.register_forward_hook(
                    lambda m, a, out, name=name: outputs.__setitem__(name, out.detach())
                )
            )
    try:
        with torch.no_grad():
            subject.model(subject.prepare(images))
    finally:
        for h in handles:
            h.remove()
    return outputs


@pytest.mark.parametrize(("name", "size"), [("resnet_mini", 32), ("resnet18", 64)])
def test_one_map_per_conv_at_the_convs_resolution(name, size):
    subject = make_subject(name, image_size=size)
    images = pattern_images(3, size=size, seed=1)
    found = feature_maps(subject, images.images)
    by_hand = _conv_outputs_by_hand(subject, images.images)
    assert found.layers == list(by_hand)  # every conv, in forward order
    assert len(found.maps) == len(by_hand)
    for layer, m, shape in zip(found.layers, found.maps, found.shapes, strict=True):
        out = by_hand[layer]  # (B, C, h, w)
        assert shape == tuple(out.shape[1:])
        assert m.shape == (3, *out.shape[2:])
        np.testing.assert_allclose(m, out.mean(dim=1).numpy(), rtol=1e-5, atol=1e-6)


def test_hybrid_shows_its_conv_block_and_a_vit_nothing():
    hybrid = make_subject("vit_convblock_tiny_patch16", image_size=224).model
    layers = featuremap_layers(hybrid)
    assert layers and all(n.startswith("conv_block.") for n in layers)
    assert featuremap_layers(make_subject("vit_mini").model) == []


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_featuremaps_analysis_writes_grids_skips_vits_and_keeps_models(tmp_path):
    cnn, vit = make_subject("resnet_mini"), make_subject("vit_mini")
    for p in list(cnn.model.parameters())[:5]:
        p.requires_grad_(False)
    cnn.model.layer1.train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = cnn.model(x)
    modes = [m.training for m in cnn.model.modules()]
    grads = [p.requires_grad for p in cnn.model.parameters()]
    result = analyse("featuremaps", [cnn, vit], tmp_path, val=pattern_images(8), progress=False)
    with torch.no_grad():
        assert torch.equal(cnn.model(x), before)
    assert [m.training for m in cnn.model.modules()] == modes
    assert [p.requires_grad for p in cnn.model.parameters()] == grads
    assert _hooks(cnn.model) == 0 and _hooks(vit.model) == 0
    assert json.loads((tmp_path / "featuremaps.json").read_text()) == result
    cnn_entry, vit_entry = result["models"]
    assert result["num_images"] == 4
    assert len(cnn_entry["layers"]) == len(cnn_entry["shapes"]) == 12
    assert cnn_entry["shapes"][0] == [16, 32, 32] and cnn_entry["shapes"][-1][1:] == [4, 4]
    assert (tmp_path / cnn_entry["figure"]).stat().st_size > 1000
    assert "patch embedding" in vit_entry["skipped"] and "figure" not in vit_entry


def test_many_convs_are_capped_in_the_figure(tmp_path):
    subject = make_subject("resnet50", image_size=32)
    images = pattern_images(4)
    result = analyse("featuremaps", [subject], tmp_path, val=images, grid_images=2, progress=False)
    entry = result["models"][0]
    assert len(entry["layers"]) == 53
    assert len(entry["shown"]) == MAX_COLUMNS
    assert entry["shown"][0] == entry["layers"][0] and entry["shown"][-1] == entry["layers"][-1]


def test_long_layer_names_wrap_at_dots():
    assert wrap_name("layer4.0.downsample.0") == "layer4.0.\ndownsample.0"
    assert wrap_name("conv1") == "conv1"


def test_render_featuremaps_embeds_grids_escapes_labels_and_notes_missing(tmp_path):
    cnn = dataclasses.replace(make_subject("resnet_mini"), label="<b>")
    vit = dataclasses.replace(make_subject("vit_mini"), label="vit & co")
    analyse("featuremaps", [cnn, vit], tmp_path, val=pattern_images(4), progress=False)
    html = render_featuremaps(AnalysisFolder(tmp_path, "featuremaps"))
    assert html.count("data:image/png;base64,") == 1
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert "vit &amp; co" in html and "patch embedding" in html
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "missing" in render_featuremaps(AnalysisFolder(empty, "featuremaps"))
