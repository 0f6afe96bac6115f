"""Model surgery: replace the head, list the residual/transformer blocks, freeze all but the last k.

Seed 000's appendix sweeps k, the number of trailing blocks left trainable when fine-tuning.
"Blocks" are a model's repeated units in forward order:

* ResNet family (``layer1`` .. ``layerN``, timm ResNet / ResNet-D / ResNeXt / SE-ResNet and the
  CIFAR built-ins): every BasicBlock / Bottleneck of every layer.
* ``blocks`` (ViT, DeiT, hybrids whose conv stem sits in ``patch_embed``, MLP-Mixer): the
  transformer blocks; where ``blocks`` holds sequential stages (EfficientNet, MobileNet), the
  blocks of every stage.
* Staged models (``stages`` or ``layers`` whose stages hold ``blocks`` or are sequences of
  blocks: ConvNeXt, ResNetV2, Swin, ByobNet, NFNet): the blocks of every stage. Stage-level
  modules outside ``blocks`` (ConvNeXt's and Swin's ``downsample``) feed the stage's first
  block and are frozen or trained together with it.

Any other layout raises :class:`ModelError` rather than guessing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
from timm.layers import FrozenBatchNormAct2d, freeze_batch_norm_2d, unfreeze_batch_norm_2d
from torchvision.ops.misc import FrozenBatchNorm2d

from cnnvit.models.registry import ModelError

__all__ = [
    "count_parameters",
    "freeze_all_but_last_blocks",
    "head_modules",
    "model_blocks",
    "replace_head",
]

# A unit is a block plus any stage-level modules that run right before it (a stage's downsample).
Unit = tuple[nn.Module, ...]

_FROZEN_BN = (FrozenBatchNorm2d, FrozenBatchNormAct2d)
# Final norms trained with the classifier: a ViT's norm / fc_norm, ConvNeXt's head.norm.
_HEAD_NORMS = ("norm", "fc_norm", "head.norm")


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Give ``model`` a new, freshly initialised ``num_classes``-way classifier, in place.

    Uses timm's ``reset_classifier``, which keeps the pooling and the final norms."""
    if not hasattr(model, "reset_classifier"):
        raise ModelError(f"{type(model).__name__} has no reset_classifier(); is it a timm model?")
    model.reset_classifier(num_classes)


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """The residual / transformer blocks of ``model`` in forward order (see the module doc)."""
    return [unit[-1] for unit in _block_units(model)]


def head_modules(model: nn.Module) -> list[nn.Module]:
    """What "head" means for freezing: the classifier (``get_classifier()``) plus the final norms
    ``norm`` and ``fc_norm`` (a ViT's) and ``head.norm`` (ConvNeXt's) where the model has them.
    Nothing else: not a ViT's attention-pool, position embedding or class token."""
    modules = [model.get_classifier()] if hasattr(model, "get_classifier") else []
    for path in _HEAD_NORMS:
        module = _get_submodule(model, path)
        if module is not None:
            modules.append(module)
    return modules


def freeze_all_but_last_blocks(
    model: nn.Module, k: int | None, also_trainable: Sequence[str] = ()
) -> None:
    """Leave only the last ``k`` blocks and the head (:func:`head_modules`) trainable, in place.

    ``k=None`` makes everything trainable again; ``k=0`` trains the head only.
    ``also_trainable`` names submodules (``model.get_submodule`` paths) that stay trainable
    whatever ``k`` is: seed 000 trains its hybrid's ``conv_block`` with the last ViT blocks.
    In frozen parts
    (stem, earlier blocks) BatchNorm layers become timm's ``FrozenBatchNorm2d`` (via
    ``freeze_batch_norm_2d``): they normalise with their running statistics, which no longer
    update, even in ``model.train()`` mode, and their affine weights become buffers (state-dict
    keys are unchanged, so checkpoints load either way). Call this before building the optimizer:
    modules are replaced.

    Raises:
        ModelError: ``k`` is negative or larger than the number of blocks (the message gives it),
            or the model's blocks cannot be identified, or an ``also_trainable`` path does
            not exist (the message lists the model's top-level modules).
    """
    _unfreeze_batch_norms(model)  # undo an earlier call: freezing is a function of k only
    if k is None:
        model.requires_grad_(True)
        return
    units = _block_units(model)
    if not 0 <= k <= len(units):
        raise ModelError(
            f"cannot leave {k} blocks trainable: {type(model).__name__} has {len(units)} blocks "
            f"(use 0..{len(units)}, or None for the whole model)"
        )
    trainable = [m for unit in units[len(units) - k :] for m in unit] + head_modules(model)
    trainable += [_named_submodule(model, path) for path in also_trainable]
    model.requires_grad_(False)
    for module in trainable:
        module.requires_grad_(True)
    _freeze_batch_norms(model, trainable)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts.

    The total includes the affine weights of frozen BatchNorm layers (buffers in
    ``FrozenBatchNorm2d``), so it does not change when blocks are frozen.
    """
    total = sum(p.numel() for p in model.parameters())
    total += sum(
        m.weight.numel() + m.bias.numel()
        for m in model.modules()
        if isinstance(m, _FROZEN_BN) and getattr(m, "affine", True)
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


# --- block discovery ------------------------------------------------------------------------


def _block_units(model: nn.Module) -> list[Unit]:
    for rule in (_resnet_units, _blocks_units, _staged_units):
        units = rule(model)
        if units:
            return units
    raise ModelError(
        f"cannot split {type(model).__name__} into blocks: expected ResNet layers (layer1..), "
        "transformer blocks (blocks), or stages (stages/layers) of blocks"
    )


def _resnet_units(model: nn.Module) -> list[Unit]:
    units: list[Unit] = []
    index = 1
    while isinstance(layer := getattr(model, f"layer{index}", None), nn.Module):
        units.extend((block,) for block in layer.children())
        index += 1
    return units


def _blocks_units(model: nn.Module) -> list[Unit]:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Module):
        return []
    children = list(blocks.children())
    if children and all(isinstance(c, nn.Sequential) for c in children):
        # EfficientNet / MobileNet: `blocks` holds stages of blocks
        return [(block,) for stage in children for block in stage.children()]
    return [(block,) for block in children]  # ViT, DeiT, Mixer: the blocks themselves


def _staged_units(model: nn.Module) -> list[Unit]:
    for attr in ("stages", "layers"):
        stages = getattr(model, attr, None)
        if not isinstance(stages, nn.Module):
            continue
        children = list(stages.children())
        if all(hasattr(s, "blocks") or isinstance(s, nn.Sequential) for s in children):
            units = [unit for stage in children for unit in _stage_units(stage)]
            if units:
                return units
    return []


def _stage_units(stage: nn.Module) -> list[Unit]:
    if not hasattr(stage, "blocks"):
        return [(block,) for block in stage.children()]  # a plain Sequential of blocks
    blocks = list(stage.blocks.children())
    if not blocks:
        return []
    # downsample / transition modules run before the stage's first block
    extras = tuple(m for name, m in stage.named_children() if name != "blocks")
    return [(*extras, blocks[0]), *((b,) for b in blocks[1:])]


# --- helpers --------------------------------------------------------------------------------


def _named_submodule(model: nn.Module, path: str) -> nn.Module:
    module = _get_submodule(model, path)
    if module is None:
        names = ", ".join(name for name, _ in model.named_children())
        raise ModelError(
            f"{type(model).__name__} has no module {path!r} to keep trainable; "
            f"its top-level modules are: {names}"
        )
    return module


def _get_submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _freeze_batch_norms(model: nn.Module, trainable: list[nn.Module]) -> None:
    """Swap every BatchNorm outside the trainable modules for a FrozenBatchNorm2d."""
    keep = {id(m) for module in trainable for m in module.modules()}
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, (nn.BatchNorm2d, nn.SyncBatchNorm)) and id(child) not in keep
    ]
    for parent, name, child in swaps:
        frozen = freeze_batch_norm_2d(child)
        if not child.affine:
            # A non-affine BatchNorm (GResNet's split normalisation) has no weight/bias; the
            # frozen one's constant ones/zeros stay out of the state dict, so keys are unchanged.
            frozen._non_persistent_buffers_set.update(("weight", "bias"))
        setattr(parent, name, frozen)


def _unfreeze_batch_norms(model: nn.Module) -> None:
    """timm's ``unfreeze_batch_norm_2d``, keeping non-affine BatchNorms non-affine (timm always
    rebuilds an affine one)."""
    non_affine = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, _FROZEN_BN) and not getattr(child, "affine", True)
    ]
    unfreeze_batch_norm_2d(model)
    for parent, name, frozen in non_affine:
        bn = nn.BatchNorm2d(
            frozen.num_features,
            eps=frozen.eps,
            affine=False,
            device=frozen.running_mean.device,
            dtype=frozen.running_mean.dtype,
        )
        bn.running_mean.copy_(frozen.running_mean)
        bn.running_var.copy_(frozen.running_var)
        bn.train(frozen.training)
        setattr(parent, name, bn)
