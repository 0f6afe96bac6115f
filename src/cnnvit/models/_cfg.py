"""Pretrained-config defaults shared by the built-in model families.

The built-ins have no published weights; their ``pretrained_cfg`` still tells timm (and the data
layer, through ``timm.data.resolve_data_config``) the native input size, the normalisation and
which modules are the first conv and the classifier, which timm needs to adapt local weight files
to another channel count or class count.
"""

from __future__ import annotations

from typing import Any

# CIFAR-10 training-set statistics: the built-ins are CIFAR-style (32 x 32, 10 classes).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def cifar_cfg(*, first_conv: str, classifier: str, **kwargs: Any) -> dict[str, Any]:
    """A timm pretrained_cfg dict for a 32 x 32, 10-class model without downloadable weights."""
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "first_conv": first_conv,
        "classifier": classifier,
        "license": "apache-2.0",
        **kwargs,
    }
