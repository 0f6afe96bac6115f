"""Registry: names, img_size routing, local weight files, and pretrained=True without network."""

from __future__ import annotations

import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file

from cnnvit.models import ModelError, UnknownModelError, create_model, load_weights_file
from stand_in_data import hub_cache_entry


class NotATensor:
    """A pickled object that weights_only=True must refuse to rebuild."""


def _save(model: nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _body(model: nn.Module, head: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith(f"{head}.")}


# --- names ----------------------------------------------------------------------------------


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UnknownModelError, match="resnet18_cifar") as info:
        create_model("resnet18_cifr", num_classes=10)
    assert isinstance(info.value, ModelError) and isinstance(info.value, ValueError)


def test_unknown_pretrained_tag_lists_the_tags() -> None:
    with pytest.raises(UnknownModelError, match=r"resnet18\.a1_in1k"):
        create_model("resnet18.nope", num_classes=10)


def test_img_size_reaches_vits_only() -> None:
    vit = create_model("vit_mini", num_classes=10, in_chans=1, img_size=28)
    assert vit.patch_embed.grid_size == (7, 7)
    cnn = create_model("resnet_mini", num_classes=10, in_chans=1, img_size=28)  # ignored, no error
    assert cnn(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    stock = create_model("vit_tiny_patch16_224", num_classes=10, img_size=64)
    assert stock.patch_embed.grid_size == (4, 4)


def test_kwargs_reach_the_constructor() -> None:
    model = create_model("resnet_mini", num_classes=10, drop_rate=0.3)
    assert model.drop_rate == 0.3


# --- local weights ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "head"), [("resnet_mini", "fc"), ("vit_mini", "head")])
def test_weights_file_new_num_classes_keeps_body_and_reinits_head(
    tmp_path: Path, name: str, head: str
) -> None:
    source = create_model(name, num_classes=10)
    path = _save(source, tmp_path / "model.safetensors")
    model = create_model(name, num_classes=5, weights=path)
    assert model.get_classifier().weight.shape[0] == 5
    got, want = _body(model, head), _body(source, head)
    assert got.keys() == want.keys()
    for key, tensor in want.items():
        assert torch.equal(got[key], tensor), key


def test_weights_file_same_num_classes_keeps_head(tmp_path: Path) -> None:
    source = create_model("resnet_mini", num_classes=10)
    model = create_model(
        "resnet_mini", num_classes=10, weights=_save(source, tmp_path / "m.safetensors")
    )
    assert torch.equal(model.fc.weight, source.fc.weight)


def test_weights_file_adapts_in_chans_and_img_size(tmp_path: Path) -> None:
    source = create_model("vit_mini", num_classes=10)  # 3 x 32 x 32: 8 x 8 tokens
    path = _save(source, tmp_path / "vit.safetensors")
    model = create_model("vit_mini", num_classes=10, in_chans=1, img_size=28, weights=path)
    proj = model.patch_embed.proj.weight  # (embed, in_chans, patch, patch)
    assert proj.shape[1] == 1
    # timm folds RGB filters into one grey filter by summing over the input channels
    assert torch.allclose(proj, source.patch_embed.proj.weight.sum(dim=1, keepdim=True))
    assert model.pos_embed.shape == (1, 1 + 7 * 7, 96)  # resampled to the 7 x 7 grid
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_weights_file_in_chans_one_to_one(tmp_path: Path) -> None:
    source = create_model("resnet_mini", num_classes=10, in_chans=1)
    model = create_model(
        "resnet_mini", num_classes=3, in_chans=1, weights=_save(source, tmp_path / "g.safetensors")
    )
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_torch_file_of_tensors_loads(tmp_path: Path) -> None:
    source = create_model("resnet_mini", num_classes=10)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    model = create_model("resnet_mini", num_classes=10, weights=path)
    assert torch.equal(model.layer4[0].conv2.weight, source.layer4[0].conv2.weight)
    assert load_weights_file(path).keys() == source.state_dict().keys()


def test_pickle_with_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save(
        {"state_dict": create_model("resnet_mini", num_classes=10).state_dict(), "x": NotATensor()},
        path,
    )
    with pytest.raises(ModelError, match="weights_only"):
        create_model("resnet_mini", num_classes=10, weights=path)


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ModelError, match=r"weights file not found: .*nope\.safetensors"):
        create_model("resnet_mini", num_classes=10, weights=missing)


def test_weights_for_another_architecture_are_refused(tmp_path: Path) -> None:
    path = _save(create_model("resnet_mini", num_classes=10), tmp_path / "cnn.safetensors")
    with pytest.raises(ModelError, match="do not fit vit_mini"):
        create_model("vit_mini", num_classes=10, weights=path)


def _report(capsys: pytest.CaptureFixture[str]) -> str:
    """The load report: one line on the console (stderr)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if " weights from " in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_load_report_names_unexpected_tensors_and_the_replaced_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = dict(create_model("resnet_mini", num_classes=10).state_dict())
    state["extra.weight"] = torch.randn(3)
    path = tmp_path / "extra.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    capsys.readouterr()
    create_model("resnet_mini", num_classes=5, weights=path)
    line = _report(capsys)
    assert line == (
        "resnet_mini weights from extra.safetensors; head replaced (10 -> 5 classes); "
        "2 missing, left at init: fc.weight, fc.bias; 1 unexpected, not used: extra.weight"
    )


def test_load_report_same_head_uses_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _save(create_model("vit_mini", num_classes=10), tmp_path / "same.safetensors")
    capsys.readouterr()
    create_model("vit_mini", num_classes=10, weights=path)
    line = _report(capsys)
    assert line.endswith("same.safetensors; head kept (10 classes); all tensors used")


def test_load_report_headless_file_and_long_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _body(create_model("vit_mini", num_classes=10), "head")
    state.update({f"aux.{i}": torch.zeros(1) for i in range(7)})
    path = tmp_path / "body.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    capsys.readouterr()
    create_model("vit_mini", num_classes=4, weights=path)
    line = _report(capsys)
    assert "no head in the file, new 4-class head" in line
    assert "2 missing, left at init: head.weight, head.bias" in line
    # the first 5 names, then how many more
    assert "7 unexpected, not used: aux.0, aux.1, aux.2, aux.3, aux.4, ... (+2)" in line


# --- published weights without network -------------------------------------------------------


@pytest.mark.parametrize("offline_env", [True, False])
def test_pretrained_offline_fails_fast(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, offline_env: bool
) -> None:
    # Empty caches, so a developer's downloaded weights do not satisfy the request.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    # Without the env flag the hub must not answer (an unresolvable host) and the probe be quick.
    if not offline_env:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://hub.invalid")
    start = time.perf_counter()
    with pytest.raises(
        ModelError, match=r"could not fetch .*model\.weights: path/to/model\.safetensors"
    ):
        create_model("resnet18", num_classes=10, pretrained=True)
    assert time.perf_counter() - start < 5.0


def test_pretrained_builtin_has_no_published_weights() -> None:
    with pytest.raises(ModelError, match="no published pretrained weights"):
        create_model("resnet18_cifar", num_classes=10, pretrained=True)


def test_pretrained_offline_uses_the_local_hub_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = timm.create_model("test_resnet")
    hub_cache_entry(monkeypatch, tmp_path, "test_resnet", source.state_dict())

    model = create_model("test_resnet", num_classes=4, pretrained=True)
    assert model.get_classifier().weight.shape[0] == 4
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)
