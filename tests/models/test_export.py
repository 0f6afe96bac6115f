"""Every built-in compiles and exports like a timm model, and meets what timm's own tests read.

Compilation (each built-in from the registry's list, eval mode, fp32, batch 2, 32 x 32; the
hybrids at 64 x 64 so that their ViTs see a 2 x 2 / 4 x 4 patch grid): ``torch.jit.script``,
``torch.fx.symbolic_trace``, timm's fx feature-extraction tracer with its graph then scripted (the
path timm's ``test_model_forward_fx`` / ``..._fx_torchscript`` take) and ``torch.export.export``
with a dynamic batch (what ONNX export and deployment use; checked at batch 3 as well, so no
batch size is baked in). Each result must equal eager within ``ATOL`` / ``RTOL``.

Contract (what timm's ``tests/test_models.py`` reads): the pretrained_cfg keys, the head API
(``forward_features`` / ``forward_head`` / ``reset_classifier`` / ``num_classes=0``), the
``feature_info`` / ``forward_intermediates`` / ``features_only`` shapes and the factory
(``device=``, unknown kwargs, parameter groups). Shapes at the cfg's native input size are
checked on the meta device (no compute). timm's tests pick their ViT checks by name (``vit_*``);
here the family (:func:`model_family`) decides, so the hybrids get the ViT checks.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from collections.abc import Callable

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import create_feature_extractor, get_graph_node_names, get_pretrained_cfg
from timm.models._manipulate import group_parameters
from torch.export import Dim

from cnnvit.models import create_model, list_builtin_models, model_family
from cnnvit.models.gresnet import fuse_split_norm

BUILTINS = list_builtin_models()
ATOL, RTOL = 1e-5, 1e-5  # fp32; the compiled graphs run the same kernels, observed error is 0
NUM_CLASSES = 5
# The costliest parametrisations are marked slow (run by CI): gresnet26 (gresnet50's code at
# another depth), vit_convblock_base_patch16 (ViT-B/16, 86 M parameters) and gresnet50's export
# (the slowest single case, 3-9 s on 2 CPU cores); gresnet18/50 and the tiny hybrid stay fast.
SLOW_MODELS = {"gresnet26", "vit_convblock_base_patch16"}
SLOW_CASES = {("gresnet50", "export")}

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def _side(name: str) -> int:
    return 64 if model_family(name) == "hybrid" else 32


@functools.lru_cache(maxsize=1)  # tests run name by name: each model is built once
def _eager(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The model (eval), a batch-2 input and eager's output for it."""
    side = _side(name)
    model = create_model(name, num_classes=NUM_CLASSES, img_size=side).eval()
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model, x, model(x)


def _script(model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return torch.jit.script(model)


def _fx(model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return torch.fx.symbolic_trace(model)


def _timm_fx_script(model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """timm's tracer (its leaf modules and wrapped functions) up to the output node, scripted."""
    _, eval_nodes = get_graph_node_names(model)
    graph = create_feature_extractor(model, [eval_nodes[-1]])
    scripted = torch.jit.script(graph)
    return lambda inp: scripted(inp)[eval_nodes[-1]]


def _export(model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    program = torch.export.export(model, (x,), dynamic_shapes=({0: Dim("batch")},))
    return program.module()


KINDS: dict[str, Callable[[nn.Module, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    "script": _script,
    "fx": _fx,
    "timm_fx_script": _timm_fx_script,
    "export": _export,
}
CASES = [
    pytest.param(
        name,
        kind,
        marks=[pytest.mark.slow] if name in SLOW_MODELS or (name, kind) in SLOW_CASES else [],
    )
    for name in BUILTINS  # name-major, so _eager's cache builds each model once
    for kind in KINDS
]


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_compiled_model_equals_eager(name: str, kind: str) -> None:
    model, x, expected = _eager(name)
    compiled = KINDS[kind](model, x)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), expected, atol=ATOL, rtol=RTOL)
        if kind == "export":  # the batch is a dynamic dimension
            x3 = torch.randn(3, *x.shape[1:])
            torch.testing.assert_close(compiled(x3), model(x3), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("kind", KINDS)
def test_fused_gresnet_compiles_and_exports(kind: str) -> None:
    """The inference form (split norms folded into mean-padded convs) compiles too."""
    model = create_model("gresnet18", num_classes=NUM_CLASSES)
    with torch.no_grad():
        for _ in range(2):  # running statistics away from (0, 1): the mean padding matters
            model(torch.randn(4, 3, 32, 32) * 2 + 1)
    fuse_split_norm(model)
    x = torch.randn(2, 3, 32, 32) * 2 + 1
    with torch.no_grad():
        torch.testing.assert_close(KINDS[kind](model, x)(x), model(x), atol=ATOL, rtol=RTOL)


# --- the contract timm's tests read -----------------------------------------------------------


def _meta(name: str, **kwargs: object) -> nn.Module:
    return timm.create_model(name, device="meta", **kwargs).eval()


def _is_cnn(name: str) -> bool:
    return model_family(name) == "cnn"


@pytest.mark.parametrize("name", BUILTINS)
def test_pretrained_cfg_has_what_timm_reads(name: str) -> None:
    cfg = get_pretrained_cfg(name).to_dict()
    for key in ("input_size", "pool_size", "mean", "std", "first_conv", "classifier"):
        assert key in cfg, key
    for key in ("num_classes", "crop_pct", "interpolation"):
        assert cfg[key], key
    assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0]
    model = _meta(name)
    assert model.in_chans == cfg["input_size"][0]
    keys = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in keys
    assert f"{cfg['classifier']}.weight" in keys
    if _is_cnn(name):  # the unpooled map at the native size
        x = torch.empty(1, *cfg["input_size"], device="meta")
        assert model.forward_features(x).shape[-2:] == cfg["pool_size"]
    else:  # timm's ViT convention: no pooled map; the pos-embed fixes the size (img_size=)
        assert cfg["pool_size"] is None
        assert cfg["fixed_input_size"]


@pytest.mark.parametrize("name", BUILTINS)
def test_head_contract(name: str) -> None:
    """timm's test_model_default_cfgs (CNNs) / ..._non_std (ViTs), at the native size."""
    model = _meta(name)
    cfg = model.pretrained_cfg
    x = torch.empty(1, *cfg["input_size"], device="meta")
    feats = model.forward_features(x)  # CNN: (B, C, H, W); ViT: (B, N, C)
    pre = model.forward_head(feats, pre_logits=True)
    assert feats.shape[1 if feats.ndim == 4 else -1] == model.num_features > 0
    assert pre.shape == (1, model.head_hidden_size)
    assert model(x).shape == (1, cfg["num_classes"])
    assert model.get_classifier().weight.shape[0] == cfg["num_classes"]

    # reset_classifier(n) keeps the pooling: its global_pool defaults to None
    assert inspect.signature(model.reset_classifier).parameters["global_pool"].default is None
    model.reset_classifier(0)
    assert model.num_classes == 0
    assert model(x).shape == pre.shape
    assert _meta(name, num_classes=0)(x).shape == pre.shape
    model.reset_classifier(3)
    assert model(x).shape == (1, 3)
    if _is_cnn(name):  # no pooling: the map of pool_size
        model.reset_classifier(0, "")
        assert model(x).shape[-2:] == cfg["pool_size"]
        assert _meta(name, num_classes=0, global_pool="")(x).shape[-2:] == cfg["pool_size"]


@pytest.mark.parametrize("name", BUILTINS)
def test_feature_info_contract(name: str) -> None:
    model = _meta(name)
    side = model.pretrained_cfg["input_size"][-1]
    x = torch.empty(1, 3, side, side, device="meta")
    final, maps = model.forward_intermediates(x)
    assert final.shape == model.forward_features(x).shape
    assert len(maps) == len(model.feature_info) >= 3
    for fmap, info in zip(maps, model.feature_info, strict=True):
        assert fmap.shape[:2] == (1, info["num_chs"]), info  # NCHW
        reduced = side / info["reduction"]
        assert reduced / 2 < fmap.shape[-1] <= math.ceil(reduced) + 1, info

    features = _meta(name, features_only=True)
    outs = features(x)
    assert len(outs) == len(features.feature_info.channels())
    for fmap, chs, red in zip(
        outs, features.feature_info.channels(), features.feature_info.reduction(), strict=True
    ):
        assert fmap.shape[1] == chs and fmap.shape[-1] == math.ceil(side / red)


@pytest.mark.parametrize("name", BUILTINS)
def test_factory_contract(name: str) -> None:
    with pytest.raises(TypeError):
        _meta(name, not_a_model_arg=1)
    model = timm.create_model(name, device="meta")  # without a device context, as timm checks
    misplaced = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if not t.is_meta]
    assert not misplaced, misplaced[:5]
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1
    if hasattr(model, "no_weight_decay"):
        # every entry names a parameter, or an optional one this config does not use (None)
        names = {n for n, _ in model.named_parameters()}
        for entry in model.no_weight_decay():
            assert entry in names or _attr_path(model, entry) is None, entry


def _attr_path(obj: object, dotted: str) -> object:
    for attr in dotted.split("."):
        obj = getattr(obj, attr, None)
    return obj


def test_hybrid_prune_keeps_the_blocks_up_to_the_tap() -> None:
    """timm's prune contract: pruning to feature index i keeps the taps up to i unchanged.

    Index 0 is the conv block, index i >= 1 ViT block i - 1 (which timm cannot prune away)."""
    model = create_model(
        "vit_convblock_tiny_patch16", num_classes=NUM_CLASSES, img_size=64, depth=3
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        for i, kept_blocks in enumerate([1, 1, 2, 3]):
            pruned = copy.deepcopy(model)
            take = pruned.prune_intermediate_layers([i])
            assert len(pruned.vit.blocks) == kept_blocks
            (tap,) = pruned.forward_intermediates(x, indices=take, intermediates_only=True)
            torch.testing.assert_close(tap, taps[i])
