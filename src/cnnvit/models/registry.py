"""One registry for every model: every timm model by name, plus the cnnvit built-ins.

The built-ins register themselves with timm's ``@register_model`` (importing this module imports
them), so ``create_model`` is a thin, checked front door to ``timm.create_model``:

* unknown names fail with the closest registered names (:class:`UnknownModelError`);
* ``img_size`` reaches only models that take it (timm's ``fixed_input_size`` models: ViTs);
* ``weights=FILE`` loads a local file through timm's own pretrained path
  (``pretrained_cfg_overlay=dict(file=...)``), so timm adapts the classifier to ``num_classes``,
  the first conv to ``in_chans`` and a ViT's position embedding to ``img_size``;
* ``weights=FOLDER`` loads a Hugging Face ``transformers`` ViT checkpoint folder (config.json +
  model.safetensors / pytorch_model.bin) into a timm ViT: converted by :mod:`cnnvit.models.hf_vit`,
  then loaded through the same path;
* each load prints one line (file, head kept or replaced, unexpected and missing tensors);
* ``pretrained=True`` never hangs without network: huggingface_hub retries an unreachable hub for
  about 45 s, so the hub is probed first (offline mode or no answer in a few seconds means no
  download), weights already in the local cache are used, and otherwise :class:`ModelError` says
  how to pass a local file.

Weight files are safetensors (preferred) or torch files read with ``weights_only=True``: a file
that needs arbitrary pickled objects is refused, never unpickled.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, Literal

import timm
import torch
import torch.nn as nn
from timm.models import get_pretrained_cfg, is_model, split_model_name_tag

from cnnvit.models import gresnet, hf_vit, hybrid, resnet_cifar, vit_small
from cnnvit.models.hub import (
    WEIGHTS_HINT,
    ModelError,
    UnknownModelError,
    cached_weights,
    hub_reachable,
    load_weights_file,
)
from cnnvit.ui import console

__all__ = [
    "ModelError",
    "UnknownModelError",
    "create_model",
    "family_of_name",
    "list_builtin_models",
    "load_weights_file",
    "model_family",
]

Family = Literal["cnn", "vit", "hybrid"]

# Family modules whose @register_model functions are cnnvit built-ins (timm keys them by the
# module's last name component).
_BUILTIN_MODULES = tuple(
    m.__name__.rsplit(".", 1)[-1] for m in (gresnet, hybrid, resnet_cifar, vit_small)
)
_REPORT_NAMES = 5  # tensor names shown per kind in the load report line


def list_builtin_models() -> list[str]:
    """Names of the cnnvit built-in models (all registered with timm), sorted."""
    return sorted(timm.list_models(module=list(_BUILTIN_MODULES)))


def describe_builtin_models() -> list[dict[str, Any]]:
    """Name, family, parameter count (10 classes, 3 channels) and origin of each built-in.

    Models are built on the meta device: the count needs shapes, not memory or initialisation.
    """
    rows = []
    for name in list_builtin_models():
        with torch.device("meta"):
            model = timm.create_model(name, num_classes=10)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        rows.append(
            {
                "name": name,
                "family": model_family(model),
                "params": sum(p.numel() for p in model.parameters()),
                "description": cfg.get("description") or "",
            }
        )
    return rows


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    img_size: int | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create the timm model or built-in ``name`` with a ``num_classes`` head.

    Args:
        name: a timm model name (optionally with a pretrained tag, ``resnet50.a1_in1k``) or a
            built-in (:func:`list_builtin_models`).
        num_classes: classifier outputs.
        in_chans: input channels (1 for Fashion-MNIST); timm adapts pretrained first convs.
        img_size: input side in pixels; passed only to models that take it (ViT-like), ignored
            by the others, which accept any size.
        pretrained: load the published weights (hub or local cache); fails fast offline.
        weights: a local weights file (``.safetensors`` preferred, or a torch file readable with
            ``weights_only=True``), or a Hugging Face ViT checkpoint folder (``config.json`` with
            ``model_type: vit``; ``name`` must then be a timm ViT of the same architecture);
            takes precedence over ``pretrained``.
        **kwargs: passed to the model constructor (``drop_path_rate=0.1``...).

    Raises:
        UnknownModelError: ``name`` is not registered.
        ModelError: the weights cannot be fetched, found or read.
    """
    name = current_name(name)
    _check_name(name)
    model_kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if img_size is not None and _takes_img_size(name):
        model_kwargs["img_size"] = img_size
    if weights is not None:
        return _create_from_file(name, Path(weights), model_kwargs)
    if pretrained:
        return _create_pretrained(name, model_kwargs)
    return timm.create_model(name, pretrained=False, **model_kwargs)


def family_of_name(name: str) -> Family | None:
    """The family of a model name; None for a name the registry does not know (building the
    model reports that error properly later). What :func:`cnnvit.config.load_run_config`
    needs to split a preset by family."""
    try:
        return model_family(name)
    except ModelError:
        return None


def model_family(model_or_name: nn.Module | str) -> Family:
    """``'vit'``, ``'hybrid'`` or ``'cnn'`` for a model or a registered model name.

    A model with transformer blocks (modules with ``attn`` and ``mlp`` children, timm's naming,
    or ``patch_embed`` + ``blocks``) is a ViT when its only convolutions are patchify convs
    (kernel == stride), and a hybrid when it has other convolutions too (a conv stem or conv
    stages); a model without transformer blocks is a CNN. A model may declare its family in a
    ``cnnvit_family`` attribute, which wins.
    """
    model = _model_skeleton(model_or_name) if isinstance(model_or_name, str) else model_or_name
    declared = getattr(model, "cnnvit_family", None)
    if declared in ("cnn", "vit", "hybrid"):
        return declared
    modules = list(model.modules())
    # patch_embed + blocks: ViTs whose blocks name their attention differently (TNT)
    has_attention = (hasattr(model, "patch_embed") and hasattr(model, "blocks")) or any(
        hasattr(m, "attn") and hasattr(m, "mlp") for m in modules
    )
    if not has_attention:
        return "cnn"
    has_other_convs = any(isinstance(m, nn.Conv2d) and not _is_patchify(m) for m in modules)
    return "hybrid" if has_other_convs else "vit"


# --- names --------------------------------------------------------------------------------


# Built-ins renamed so that timm's tests (which pick their ViT checks by a `vit_` prefix) treat
# them as the ViTs they are; the old names keep working.
RENAMED = {
    "hybrid_convblock_vit_base": "vit_convblock_base_patch16",
    "hybrid_convblock_vit_tiny": "vit_convblock_tiny_patch16",
}


def current_name(name: str) -> str:
    """``name`` under its current name (a renamed built-in's new one, with its tag)."""
    arch, sep, tag = name.partition(".")
    return RENAMED.get(arch, arch) + sep + tag


def _check_name(name: str) -> None:
    arch, tag = split_model_name_tag(name)
    if is_model(name):
        if tag:
            _check_tag(name, arch)
        return
    candidates = sorted(set(timm.list_models()) | set(list_builtin_models()))
    close = difflib.get_close_matches(arch, candidates, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}{hint} (built-ins: {', '.join(list_builtin_models())}; "
        "every timm model: `cnnvit models --all`)"
    )


def _check_tag(name: str, arch: str) -> None:
    try:
        get_pretrained_cfg(name)
    except RuntimeError as exc:  # timm: "Invalid pretrained tag"
        tags = timm.list_pretrained(f"{arch}.*")
        raise UnknownModelError(
            f"unknown pretrained tag in {name!r}; {arch} has: {', '.join(tags)}"
        ) from exc


def _takes_img_size(name: str) -> bool:
    # timm's own convention: a fixed_input_size model takes img_size (its pos-embed depends on it).
    cfg = get_pretrained_cfg(name)
    return bool(cfg is not None and cfg.fixed_input_size)


def _model_skeleton(name: str) -> nn.Module:
    """The architecture of ``name`` without allocating or initialising weights."""
    name = current_name(name)
    _check_name(name)
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


def _is_patchify(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == conv.stride


# --- local weights ------------------------------------------------------------------------


def _create_from_file(name: str, path: Path, model_kwargs: dict[str, Any]) -> nn.Module:
    """Build ``name`` with the weights in ``path`` (a file, or a HF ViT folder) through timm."""
    if path.is_dir():
        return _create_from_hf_folder(name, path, model_kwargs)
    state_dict = load_weights_file(path)
    return _load_through_timm(name, path, state_dict, model_kwargs, shown=path.name)


def _create_from_hf_folder(name: str, folder: Path, model_kwargs: dict[str, Any]) -> nn.Module:
    """Build the timm ViT ``name`` from a Hugging Face ViT checkpoint folder.

    The config is checked against the model before the weights are read; the converted state
    dict then goes through timm's pretrained path in memory (``pretrained_cfg['state_dict']``).
    The checkpoint's LayerNorm eps and qkv_bias are passed to the constructor (the caller's own
    kwargs win, and are then checked like the rest of the architecture).
    """
    checkpoint = hf_vit.find_hf_vit_checkpoint(folder)
    vit_kwargs = {**hf_vit.timm_model_kwargs(checkpoint), **model_kwargs}
    try:
        with torch.device("meta"):
            skeleton = timm.create_model(name, pretrained=False, **vit_kwargs)
    except TypeError as exc:  # takes no norm_layer / qkv_bias: say what the model is instead
        with torch.device("meta"):
            plain = timm.create_model(name, pretrained=False, **model_kwargs)
        hf_vit.check_timm_architecture(checkpoint, plain, name)  # raises: not a timm ViT
        raise ModelError(f"{name} cannot take {folder}'s ViT settings: {exc}") from exc
    hf_vit.check_timm_architecture(
        checkpoint, skeleton, name, img_size_given="img_size" in model_kwargs
    )
    state_dict, unused = hf_vit.load_hf_vit_state_dict(checkpoint)
    return _load_through_timm(
        name,
        checkpoint.weights_file,
        state_dict,
        vit_kwargs,
        shown=f"{folder.name}/{checkpoint.weights_file.name} (Hugging Face ViT, converted)",
        in_memory=True,
        unused=unused,
    )


def _load_through_timm(
    name: str,
    path: Path,
    state_dict: dict[str, torch.Tensor],
    model_kwargs: dict[str, Any],
    *,
    shown: str,
    in_memory: bool = False,
    unused: list[str] | None = None,
) -> nn.Module:
    """``timm.create_model(pretrained=True)`` with ``state_dict`` (read from ``path``), checked.

    ``in_memory``: timm takes the tensors from the pretrained_cfg instead of reading ``path``
    (converted checkpoints). ``unused``: source keys a conversion dropped, reported as
    unexpected. ``shown``: how the report line names the source.
    """
    overlay = _file_overlay(name, path, state_dict)
    if in_memory:
        overlay["state_dict"] = dict(state_dict)  # timm pops the classifier from what it gets
    try:
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=overlay, **model_kwargs
        )
    except RuntimeError as exc:  # shape mismatches, unexpected keys
        raise ModelError(f"weights in {path} do not fit {name}: {exc}") from exc
    cfg = getattr(model, "pretrained_cfg", None)
    if in_memory and isinstance(cfg, dict):
        cfg.pop("state_dict", None)  # the model's cfg stays small; the weights are in the model
    classifiers = _classifier_names(model)
    file_classes, model_classes = overlay["num_classes"], model_kwargs["num_classes"]
    head_replaced = bool(classifiers) and file_classes != model_classes
    unexpected, left_at_init = _check_body_loaded(
        model, name, path, state_dict, classifiers, head_replaced=head_replaced
    )
    head = (file_classes if file_classes >= 0 else None, model_classes) if classifiers else None
    _print_load_report(name, shown, head, [*(unused or []), *unexpected], left_at_init)
    return model


def _file_overlay(name: str, path: Path, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """pretrained_cfg entries describing the file, so timm adapts what differs from the model.

    timm decides from the pretrained_cfg, not from the tensors, whether to drop the classifier
    (cfg num_classes != model num_classes) and how to adapt the first conv (cfg input_size[0] !=
    in_chans), so both are read off the file here.
    """
    cfg = get_pretrained_cfg(name)
    overlay: dict[str, Any] = {"file": str(path)}
    classifiers = _as_tuple(cfg.classifier if cfg else None)
    heads = [state_dict[f"{c}.weight"] for c in classifiers if f"{c}.weight" in state_dict]
    # -1 never equals a model's num_classes: a headless file leaves the model's head as created.
    overlay["num_classes"] = heads[0].shape[0] if heads else -1
    first_convs = [
        state_dict.get(f"{c}.weight") for c in _as_tuple(cfg.first_conv if cfg else None)
    ]
    if first_convs and first_convs[0] is not None and first_convs[0].ndim == 4:
        size = tuple(cfg.input_size[1:]) if cfg and cfg.input_size else (224, 224)
        overlay["input_size"] = (first_convs[0].shape[1], *size)  # conv weight: (out, in, kh, kw)
    return overlay


def _check_body_loaded(
    model: nn.Module,
    name: str,
    path: Path,
    state_dict: dict[str, torch.Tensor],
    skip: tuple[str, ...],
    *,
    head_replaced: bool = False,
) -> tuple[list[str], list[str]]:
    """Refuse a file that silently left body weights at their random init.

    timm loads non-strictly once it drops a classifier, so a file for another architecture would
    load "successfully". The file's keys are first passed through the model module's
    ``checkpoint_filter_fn`` (timm's convention; it converts foreign layouts such as original
    CLIP or DINOv2 checkpoints), then every non-classifier tensor of the model must be among them.

    Returns:
        The file's keys (after the filter) that the model has no tensor for (unexpected), and the
        model's classifier tensors left at their init (a replaced head, or a headless file).
    """
    filter_fn = _checkpoint_filter(name)
    keys = set(filter_fn(dict(state_dict), model) if filter_fn else state_dict)
    model_keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]

    def in_head(key: str) -> bool:
        return any(key.startswith(f"{c}.") for c in skip)

    missing = [k for k in model_keys if k not in keys and not in_head(k)]
    if missing:
        raise ModelError(
            f"weights in {path} do not fit {name}: "
            f"{len(missing)} tensors missing, e.g. {missing[:5]}"
        )
    known = set(model_keys)
    unexpected = sorted(k for k in keys if k not in known and not k.endswith("num_batches_tracked"))
    left_at_init = [k for k in model_keys if in_head(k) and (head_replaced or k not in keys)]
    return unexpected, left_at_init


def _print_load_report(
    name: str,
    shown: str,
    head: tuple[int | None, int] | None,
    unexpected: list[str],
    left_at_init: list[str],
) -> None:
    """One console line: what was loaded, the head, and the tensors not used / left at init.

    ``head``: (the file's classes, None for a headless file; the model's classes), or None for a
    model without a known classifier.
    """
    parts = [f"{name} weights from {shown}"]
    if head is not None:
        file_classes, model_classes = head
        if file_classes is None:
            parts.append(f"no head in the file, new {model_classes}-class head")
        elif file_classes != model_classes:
            parts.append(f"head replaced ({file_classes} -> {model_classes} classes)")
        else:
            parts.append(f"head kept ({model_classes} classes)")
    if left_at_init:
        parts.append(f"{len(left_at_init)} missing, left at init: {_some(left_at_init)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, not used: {_some(unexpected)}")
    if not left_at_init and not unexpected:
        parts.append("all tensors used")
    console.print("; ".join(parts), markup=False, highlight=False, soft_wrap=True)


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:_REPORT_NAMES])
    return f"{shown}, ... (+{len(keys) - _REPORT_NAMES})" if len(keys) > _REPORT_NAMES else shown


def _checkpoint_filter(name: str) -> Any:
    module = sys.modules.get(timm.models.model_entrypoint(name).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    """The classifier module names in the model's pretrained_cfg: ``('fc',)``, ``('head',)``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return _as_tuple(cfg.get("classifier"))


def _as_tuple(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


# --- published weights ----------------------------------------------------------------------


def _create_pretrained(name: str, model_kwargs: dict[str, Any]) -> nn.Module:
    if split_model_name_tag(name)[0] in hybrid.PRETRAINED_FROM_INNER_VIT:
        # no published weights of their own: they fetch their ViT's through this registry
        return timm.create_model(name, pretrained=True, **model_kwargs)
    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.has_weights:
        raise ModelError(f"{name} has no published pretrained weights; {WEIGHTS_HINT}")
    if hub_reachable(cfg):
        try:
            return timm.create_model(name, pretrained=True, **model_kwargs)
        except Exception as exc:  # network, hub and format errors all mean "could not fetch"
            raise ModelError(
                f"could not fetch pretrained weights for {name}: {exc}; {WEIGHTS_HINT}"
            ) from exc
    cached = cached_weights(cfg)
    if cached is not None:
        return _create_from_file(name, cached, model_kwargs)
    where = cfg.hf_hub_id or cfg.url
    raise ModelError(
        f"could not fetch pretrained weights for {name} from {where}: no network (or offline mode) "
        f"and not in the local cache; {WEIGHTS_HINT}"
    )
