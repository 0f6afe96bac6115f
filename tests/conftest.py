"""Shared test set-up: never touch the network, keep torch to the machine's cores."""

import os

# Before anything imports timm or huggingface_hub: nothing may wait on a network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["CNNVIT_OFFLINE"] = "1"

import pytest

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture
def has_fashion_mnist() -> bool:
    return os.path.isdir(FASHION_MNIST_DIR)
