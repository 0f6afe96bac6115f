"""Hugging Face ``transformers`` ViT checkpoints (a local folder) as timm ViT weights.

A folder saved by ``ViTModel`` / ``ViTForImageClassification`` (``google/vit-base-patch16-224``
downloaded by the user) holds ``config.json`` (``"model_type": "vit"``) and ``model.safetensors``
or ``pytorch_model.bin``. :func:`find_hf_vit_checkpoint` recognises it,
:func:`check_timm_architecture` compares it with the timm model the user named,
:func:`load_hf_vit_state_dict` reads and converts the tensors to timm's layout, and
:func:`hf_vit_class_names` gives the checkpoint's class names. The registry
(``create_model(name, weights=FOLDER)``) ties them together.

Nothing in the folder is executed: ``config.json`` is read with :mod:`json`, the weights with
safetensors or ``torch.load(..., weights_only=True)`` (a pickle that needs objects is refused).
``transformers`` itself is not needed.

The key layout was checked against transformers 5.x ``models/vit/modeling_vit.py`` and its
``conversion_mapping.py``: files on the hub and those written by ``save_pretrained`` use the
original layout (``encoder.layer.{i}.attention.attention.query``...); transformers 5 renames the
modules in memory (``layers.{i}.attention.q_proj``...), so a state dict saved from a live
transformers 5 model has that layout. Both are read.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from cnnvit.models.hub import ModelError, load_weights_file

__all__ = [
    "HFViTCheckpoint",
    "check_timm_architecture",
    "convert_hf_vit_state_dict",
    "find_hf_vit_checkpoint",
    "hf_vit_class_names",
    "load_hf_vit_state_dict",
    "timm_model_kwargs",
]

CONFIG_FILE = "config.json"
# safetensors first: it holds tensors only
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# ViTConfig's defaults (transformers), for config.json files that leave a field out.
_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "qkv_bias": True,
}
_TIMM_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}

# Per-layer tensors, the original layout and transformers 5's in-memory one -> timm's block names.
_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_LAYER_MAP = {
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
}
_QKV = {
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
}
_TOP_MAP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}


@dataclass(frozen=True)
class HFViTCheckpoint:
    """A Hugging Face ViT checkpoint folder: its parsed config and its weights file."""

    folder: Path
    config: dict[str, Any]
    weights_file: Path

    def get(self, key: str) -> Any:
        """A config field, or ViTConfig's default when config.json leaves it out."""
        return self.config.get(key, _DEFAULTS.get(key))


def find_hf_vit_checkpoint(folder: str | Path) -> HFViTCheckpoint:
    """Recognise a Hugging Face ViT checkpoint folder (config.json, then the weights file).

    Raises:
        ModelError: no config.json, a config that is not a ViT's (the model_type found is named),
            or no weights file (``model.safetensors`` / ``pytorch_model.bin``).
    """
    folder = Path(folder)
    config = _read_config(folder)
    model_type = config.get("model_type")
    if model_type != "vit":
        raise ModelError(
            f"{folder} holds a Hugging Face checkpoint with model_type {model_type!r} "
            f"(architectures: {config.get('architectures')}); only model_type 'vit' "
            "(ViTModel / ViTForImageClassification) can be converted to a timm ViT"
        )
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return HFViTCheckpoint(folder=folder, config=config, weights_file=folder / name)
    sharded = [p.name for p in folder.glob("*.index.json")]
    detail = f"; sharded checkpoints ({', '.join(sharded)}) are not supported" if sharded else ""
    raise ModelError(
        f"Hugging Face ViT folder {folder} has no weights file: expected one of "
        f"{', '.join(WEIGHT_FILES)}{detail}"
    )


def hf_vit_class_names(checkpoint: HFViTCheckpoint | str | Path) -> list[str] | None:
    """The checkpoint's class names (``config.json``'s ``id2label``) in class-index order.

    ``None`` when there are none, when the ids are not 0..n-1, or when the names are
    transformers' placeholders (``LABEL_0``, ``LABEL_1``...), which ``ViTModel`` configs carry.
    """
    if not isinstance(checkpoint, HFViTCheckpoint):
        checkpoint = find_hf_vit_checkpoint(checkpoint)
    id2label = checkpoint.config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        return None
    if sorted(by_index) != list(range(len(by_index))):
        return None
    names = [by_index[i] for i in range(len(by_index))]
    if all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None
    return names


def timm_model_kwargs(checkpoint: HFViTCheckpoint) -> dict[str, Any]:
    """timm ``VisionTransformer`` keyword arguments that reproduce the checkpoint's numerics.

    HF ViTs use LayerNorm eps 1e-12 (timm's ViTs 1e-6) and may have no q/k/v biases.
    """
    return {
        "norm_layer": functools.partial(nn.LayerNorm, eps=float(checkpoint.get("layer_norm_eps"))),
        "qkv_bias": bool(checkpoint.get("qkv_bias")),
    }


def check_timm_architecture(
    checkpoint: HFViTCheckpoint, model: nn.Module, name: str, *, img_size_given: bool = False
) -> None:
    """Refuse a timm model whose architecture differs from the checkpoint's.

    ``model`` may live on the meta device. The image size may differ when the caller asked for
    it (``img_size_given``): timm then resamples the position embedding to the new grid.

    Raises:
        ModelError: every differing field, with both values and the timm name/kwargs that fit.
    """
    if not isinstance(model, VisionTransformer):
        raise ModelError(
            f"{checkpoint.folder} is a Hugging Face ViT checkpoint; it loads into a timm "
            f"VisionTransformer ({_suggestion(checkpoint)}), not {name} "
            f"({type(model).__name__})"
        )
    act = checkpoint.get("hidden_act")
    if act != "gelu":
        raise ModelError(
            f"{checkpoint.folder}: hidden_act {act!r} is not supported; timm ViTs use exact GELU "
            "(hidden_act 'gelu'), so the converted model would compute something else"
        )
    hidden = int(checkpoint.get("hidden_size"))
    heads = int(checkpoint.get("num_attention_heads"))
    head_dim = checkpoint.config.get("head_dim")
    if head_dim is not None and head_dim * heads != hidden:
        raise ModelError(
            f"{checkpoint.folder}: head_dim {head_dim} x {heads} heads != hidden_size {hidden}; "
            "timm ViTs split the hidden size evenly over the heads"
        )
    block = model.blocks[0] if len(model.blocks) else None
    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    # (checkpoint field, its value, timm field, the model's value)
    found: list[tuple[str, Any, str, Any]] = [
        ("hidden_size", hidden, "embed_dim", model.embed_dim),
        ("num_hidden_layers", int(checkpoint.get("num_hidden_layers")), "depth", len(model.blocks)),
        ("num_attention_heads", heads, "num_heads", getattr(attn, "num_heads", None)),
        (
            "intermediate_size",
            int(checkpoint.get("intermediate_size")),
            "mlp hidden (mlp_ratio x embed_dim)",
            getattr(getattr(mlp, "fc1", None), "out_features", None),
        ),
        (
            "patch_size",
            _pair(checkpoint.get("patch_size")),
            "patch_size",
            tuple(model.patch_embed.patch_size),
        ),
        ("qkv_bias", bool(checkpoint.get("qkv_bias")), "qkv_bias", _has_qkv_bias(block)),
        ("layer_norm_eps", float(checkpoint.get("layer_norm_eps")), "norm eps", _norm_eps(model)),
    ]
    if not img_size_given:
        image = _pair(checkpoint.get("image_size"))
        found.append(("image_size", image, "img_size", _img_size(model)))
    problems = [
        f"checkpoint {field}={value} vs {name} {timm_field}={timm_value}"
        for field, value, timm_field, timm_value in found
        if value != timm_value
    ]
    # No parameter tells these apart, so the body check would not catch them.
    if getattr(model, "global_pool", None) != "token" or model.cls_token is None:
        problems.append(
            f"pooling: HF ViTs classify the class token, {name} uses "
            f"global_pool={getattr(model, 'global_pool', None)!r}"
        )
    if getattr(model, "num_reg_tokens", 0) or getattr(model, "no_embed_class", False):
        problems.append(f"{name} has register tokens or no class-token position embedding")
    act_layer = getattr(getattr(block, "mlp", None), "act", None)
    if block is not None and not (
        isinstance(act_layer, nn.GELU) and act_layer.approximate == "none"
    ):
        problems.append(f"{name}'s MLP activation is {act_layer!r}, not exact GELU")
    if problems:
        raise ModelError(
            f"Hugging Face ViT checkpoint {checkpoint.folder} does not fit {name}: "
            f"{'; '.join(problems)}. Use {_suggestion(checkpoint)}"
        )


def load_hf_vit_state_dict(
    checkpoint: HFViTCheckpoint,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read the checkpoint's weights file and convert it to timm's layout.

    Returns:
        The timm state dict, and the checkpoint keys (HF names) that have no timm counterpart.

    Raises:
        ModelError: unreadable file, a pickle needing objects, or an incomplete layer.
    """
    return convert_hf_vit_state_dict(load_weights_file(checkpoint.weights_file))


def convert_hf_vit_state_dict(
    hf_state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename (and fuse q/k/v of) a HF ViT state dict into timm ``VisionTransformer`` keys.

    ``vit.`` prefixes (``ViTForImageClassification``) are optional (``ViTModel`` has none).

    Returns:
        The timm state dict, and the HF keys left out: ``pooler.*`` (``ViTModel``'s pooler, a
        dense + tanh on the class token, has no timm equivalent: timm's head reads the class
        token directly, as ``ViTForImageClassification`` does), a masked-image-modelling
        ``mask_token`` or decoder, and anything else not part of a ViT classifier.
    """
    out: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    qkv: dict[int, dict[str, dict[str, torch.Tensor]]] = {}  # layer -> weight/bias -> q/k/v
    for key, tensor in hf_state_dict.items():
        short = key.removeprefix("vit.")
        if short in _TOP_MAP:
            out[_TOP_MAP[short]] = tensor
            continue
        match = _LAYER.match(short)
        if match is None:
            unused.append(key)  # pooler.*, embeddings.mask_token, decoder.*...
            continue
        index, rest = int(match.group(1)), match.group(2)
        module, _, param = rest.rpartition(".")
        if module in _LAYER_MAP and param in ("weight", "bias"):
            out[f"blocks.{index}.{_LAYER_MAP[module]}.{param}"] = tensor
        elif module in _QKV and param in ("weight", "bias"):
            qkv.setdefault(index, {}).setdefault(param, {})[_QKV[module]] = tensor
        else:
            unused.append(key)
    for index, params in sorted(qkv.items()):
        for param, parts in params.items():
            if set(parts) != {"q", "k", "v"}:
                raise ModelError(
                    f"Hugging Face ViT layer {index} has attention {param}s for "
                    f"{'/'.join(sorted(parts))} only; query, key and value are all needed"
                )
            # timm's Attention splits qkv(x) into q, k, v in this order along the output dim
            out[f"blocks.{index}.attn.qkv.{param}"] = torch.cat(
                [parts["q"], parts["k"], parts["v"]], dim=0
            )
        # qkv_bias false: HF has no q/k/v biases and the timm model is built without them
    return out, unused


# --- reading --------------------------------------------------------------------------------


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelError(
            f"weights folder {folder} has no {CONFIG_FILE}: a folder must be a Hugging Face ViT "
            "checkpoint (config.json with model_type 'vit' + model.safetensors); otherwise pass "
            "a weights file"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelError(f"{path} is not a JSON object")
    return config


# --- architecture ---------------------------------------------------------------------------


def _pair(value: int | Iterable[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = tuple(value)
    return (int(first), int(second))


def _img_size(model: nn.Module) -> tuple[int, int] | None:
    size = getattr(model.patch_embed, "img_size", None)
    return None if size is None else _pair(size)


def _has_qkv_bias(block: nn.Module | None) -> bool | None:
    qkv = getattr(getattr(block, "attn", None), "qkv", None)
    return None if qkv is None else qkv.bias is not None


def _norm_eps(model: nn.Module) -> float | None:
    eps = getattr(model.norm, "eps", None)
    return None if eps is None else float(eps)


def _suggestion(checkpoint: HFViTCheckpoint) -> str:
    """A timm name (when one has exactly this architecture) and the kwargs that build it."""
    hidden = int(checkpoint.get("hidden_size"))
    patch = _pair(checkpoint.get("patch_size"))
    image = _pair(checkpoint.get("image_size"))
    heads = int(checkpoint.get("num_attention_heads"))
    depth = int(checkpoint.get("num_hidden_layers"))
    mlp_hidden = int(checkpoint.get("intermediate_size"))
    kwargs = (
        f"patch_size={patch[0]}, embed_dim={hidden}, depth={depth}, num_heads={heads}, "
        f"mlp_ratio={mlp_hidden / hidden:g}, img_size={image[0]}"
    )
    size = _TIMM_SIZES.get(hidden)
    name = f"vit_{size}_patch{patch[0]}_{image[0]}"
    if size and patch[0] == patch[1] and image[0] == image[1] and timm.is_model(name):
        with torch.device("meta"):
            model = timm.create_model(name)
        block = model.blocks[0]
        if (len(model.blocks), block.attn.num_heads, block.mlp.fc1.out_features) == (
            depth,
            heads,
            mlp_hidden,
        ):
            return name
    return f"a timm ViT (e.g. vit_base_patch16_224) with {kwargs}"
