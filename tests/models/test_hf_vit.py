"""Hugging Face transformers ViT checkpoint folders loaded into timm ViTs (``weights=FOLDER``).

Small random transformers models are built and saved locally: nothing is downloaded (the
conftests set HF_HUB_OFFLINE=1 before transformers is imported).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from transformers import ViTConfig, ViTForImageClassification, ViTModel

from cnnvit.models import ModelError, create_model
from cnnvit.models.hf_vit import (
    convert_hf_vit_state_dict,
    find_hf_vit_checkpoint,
    hf_vit_class_names,
)

# hidden 64, 2 layers, 4 heads, MLP 128 (ratio 2), 32 x 32 images in 8 x 8 patches
SMALL: dict[str, Any] = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    image_size=32,
    patch_size=8,
)
TIMM_SMALL: dict[str, Any] = dict(
    img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2
)
TIMM_NAME = "vit_base_patch16_224"


def _perturb(model: nn.Module) -> nn.Module:
    """Move every tensor off its init (LayerNorm 1/0, zero biases) so a mix-up shows."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return model.eval()


def _hf_classifier(num_labels: int = 10, **config: Any) -> ViTForImageClassification:
    return _perturb(
        ViTForImageClassification(ViTConfig(**{**SMALL, **config}, num_labels=num_labels))
    )


def _save(model: nn.Module, folder: Path, layout: str = "safetensors") -> Path:
    """save_pretrained, then optionally rewrite the weights as another layout."""
    model.save_pretrained(folder)
    weights = folder / "model.safetensors"
    if layout == "bin":
        # transformers 5 writes safetensors even with safe_serialization=False, so the torch file
        # of older checkpoints is written here (same keys as save_pretrained's).
        torch.save(load_file(str(weights)), folder / "pytorch_model.bin")
        weights.unlink()
    elif layout == "native":
        # a state dict taken from a live transformers 5 model: layers.{i}.attention.q_proj...
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return folder


def _timm(folder: Path, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    kwargs = {**TIMM_SMALL, **kwargs}
    return create_model(TIMM_NAME, num_classes=num_classes, weights=folder, **kwargs).eval()


def _pre_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


@pytest.mark.parametrize("layout", ["safetensors", "bin", "native"])
def test_classifier_logits_match_transformers(tmp_path: Path, layout: str) -> None:
    hf = _hf_classifier()
    model = _timm(_save(hf, tmp_path / "vit", layout))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want, got = hf(pixel_values=x).logits, model(x)
    assert got.shape == (4, 10)
    assert (got - want).abs().max().item() < 1e-4
    # the checkpoint's LayerNorm eps, not timm's 1e-6
    assert model.norm.eps == 1e-12 and model.blocks[1].norm2.eps == 1e-12


def test_no_qkv_bias_checkpoint(tmp_path: Path) -> None:
    hf = _hf_classifier(qkv_bias=False)
    model = _timm(_save(hf, tmp_path / "vit"))
    assert model.blocks[0].attn.qkv.bias is None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), hf(pixel_values=x).logits, atol=1e-4)


def test_vit_model_without_classifier_gets_a_new_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hf = _perturb(ViTModel(ViTConfig(**SMALL)))  # has a pooler, no classifier
    model = _timm(_save(hf, tmp_path / "backbone"), num_classes=7)
    assert model.head.weight.shape == (7, 64)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the class token after the final norm is what the head reads
        want = hf(pixel_values=x).last_hidden_state[:, 0]
        assert torch.allclose(_pre_logits(model, x), want, atol=1e-4)
        assert model(x).shape == (2, 7)
    line = capsys.readouterr().err
    assert "backbone/model.safetensors (Hugging Face ViT, converted)" in line
    assert "no head in the file, new 7-class head" in line
    assert "2 missing, left at init: head.weight, head.bias" in line
    assert "2 unexpected, not used: pooler.dense.bias, pooler.dense.weight" in line


def test_other_num_classes_replaces_the_head(tmp_path: Path) -> None:
    hf = _hf_classifier(num_labels=10)
    model = _timm(_save(hf, tmp_path / "vit"), num_classes=3)
    assert model.head.weight.shape == (3, 64)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = hf.vit(pixel_values=x).last_hidden_state[:, 0]
        assert torch.allclose(_pre_logits(model, x), want, atol=1e-4)


def test_other_img_size_resamples_the_position_embedding(tmp_path: Path) -> None:
    model = _timm(_save(_hf_classifier(), tmp_path / "vit"), img_size=64)
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 64)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_architecture_mismatch_names_the_field(tmp_path: Path) -> None:
    folder = _save(_hf_classifier(), tmp_path / "vit")
    with pytest.raises(ModelError, match=r"num_hidden_layers=2 vs vit_base_patch16_224 depth=3"):
        _timm(folder, depth=3)
    with pytest.raises(ModelError, match=r"image_size=\(32, 32\) vs .* img_size=\(224, 224\)"):
        # no img_size: vit_base_patch16_224's 224 is not the checkpoint's 32
        kwargs = {k: v for k, v in TIMM_SMALL.items() if k != "img_size"}
        create_model(TIMM_NAME, num_classes=10, weights=folder, **kwargs)


def test_mismatch_suggests_the_timm_name(tmp_path: Path) -> None:
    # google/vit-base-patch16-224's config (ViTConfig defaults); the weights are never read
    folder = tmp_path / "vit-base-patch16-224"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(
        ModelError, match=r"hidden_size=768 vs .* embed_dim=384.*vit_base_patch16_224"
    ):
        create_model("vit_small_patch16_224", num_classes=10, weights=folder)


def test_non_gelu_activation_is_refused(tmp_path: Path) -> None:
    folder = _save(_hf_classifier(hidden_act="gelu_new"), tmp_path / "vit")
    with pytest.raises(ModelError, match=r"hidden_act 'gelu_new'"):
        _timm(folder)


def test_not_a_vit_model_type_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "deit"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "deit", "architectures": ["DeiTForImageClassification"]})
    )
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match=r"model_type 'deit'"):
        _timm(folder)


def test_folder_without_config_or_weights(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"has no config\.json"):
        _timm(empty)
    (empty / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(
        ModelError, match=r"no weights file.*model\.safetensors, pytorch_model\.bin"
    ):
        _timm(empty)


def test_not_a_vit_model_name_is_refused(tmp_path: Path) -> None:
    folder = _save(_hf_classifier(), tmp_path / "vit")
    with pytest.raises(ModelError, match=r"timm VisionTransformer.*not resnet_mini"):
        create_model("resnet_mini", num_classes=10, weights=folder)


class _Marker:
    """Unpickling this creates a file: a pickle that runs code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_pickle_with_objects_is_refused_without_running_it(tmp_path: Path) -> None:
    folder = _save(_hf_classifier(), tmp_path / "vit", "bin")
    marker = tmp_path / "pwned"
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "evil": _Marker(marker)}, folder / "pytorch_model.bin")
    assert not marker.exists()
    with pytest.raises(ModelError, match="weights_only"):
        _timm(folder)
    assert not marker.exists()


def test_class_names_from_id2label(tmp_path: Path) -> None:
    labels = {0: "cat", 1: "dog", 2: "bird"}
    hf = _hf_classifier(num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    assert hf_vit_class_names(_save(hf, tmp_path / "named")) == ["cat", "dog", "bird"]
    # transformers' LABEL_0... placeholders are not class names
    placeholder = _save(_hf_classifier(num_labels=3), tmp_path / "placeholder")
    assert hf_vit_class_names(find_hf_vit_checkpoint(placeholder)) is None


def test_conversion_keeps_names_and_fuses_qkv() -> None:
    hf = _hf_classifier()
    converted, unused = convert_hf_vit_state_dict(hf.state_dict())
    assert unused == []
    d = 64
    qkv = converted["blocks.1.attn.qkv.weight"]
    assert qkv.shape == (3 * d, d)
    layer = hf.vit.layers[1].attention
    assert torch.equal(qkv[:d], layer.q_proj.weight)
    assert torch.equal(qkv[d : 2 * d], layer.k_proj.weight)
    assert torch.equal(qkv[2 * d :], layer.v_proj.weight)
    assert torch.equal(converted["head.bias"], hf.classifier.bias)
