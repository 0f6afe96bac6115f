"""Models: one registry over timm plus the cnnvit built-ins, and head/freeze surgery.

Importing this package registers the built-ins with timm, so ``timm.create_model("resnet18_cifar")``
works afterwards. Built-ins (one module per family):

* ``resnet_cifar``: ``resnet18_cifar`` (seed 004's CIFAR ResNet-18), ``resnet_mini``;
* ``vit_small``: ``vit_small_data`` (seed 004's small-data ViT), ``vit_mini``;
* ``gresnet``: ``gresnet50``, ``gresnet26``, ``gresnet18`` (seed 003's GResNet, with ablation
  switches and ``fuse_split_norm`` for inference);
* ``hybrid``: ``vit_convblock_base_patch16``, ``vit_convblock_tiny_patch16`` (seed 000's conv block
  in front of ViT-B/16 / ViT-Ti/16).
"""

from cnnvit.models import gresnet, hybrid, resnet_cifar, vit_small  # noqa: F401  (registers the built-ins)
from cnnvit.models.hub import load_into
from cnnvit.models.registry import (
    ModelError,
    UnknownModelError,
    create_model,
    family_of_name,
    list_builtin_models,
    load_weights_file,
    model_family,
)
from cnnvit.models.surgery import (
    count_parameters,
    freeze_all_but_last_blocks,
    head_modules,
    model_blocks,
    replace_head,
)

__all__ = [
    "ModelError",
    "UnknownModelError",
    "count_parameters",
    "create_model",
    "family_of_name",
    "freeze_all_but_last_blocks",
    "head_modules",
    "list_builtin_models",
    "load_into",
    "load_weights_file",
    "model_blocks",
    "model_family",
    "replace_head",
]
