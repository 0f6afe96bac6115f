"""Training throughput: cnnvit's pipeline against the usual torchvision recipe, in one process.

Both train the same model (same initial weights) on the same images for the same number of
steps at the same batch size:

* **cnnvit**: the dataset as one uint8 tensor on the device, augmentation batched on the device
  (random crop with padding 4, horizontal flip, normalisation), bf16 autocast and channels_last
  on CUDA, fp32 on CPU; cnnvit's own ``train_one_epoch``.
* **baseline**: a torchvision-style ``Dataset`` returning PIL images, per-sample
  ``transforms`` (RandomCrop(padding=4), RandomHorizontalFlip, ToTensor, Normalize), a
  ``DataLoader`` with 2 workers, fp32.

Each side is warmed up, then timed over ``--repeats`` runs of ``--steps`` steps with the device
synchronised before the clock is read; the median and the spread (min-max) are printed, and the
ratio of medians. Usage::

    python benchmarks/train_throughput.py --model resnet_mini --data fashion-mnist
    python benchmarks/train_throughput.py --model resnet18_cifar --data cifar10:/data/cifar \
        --batch-size 512 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cnnvit.config import AugmentConfig, DataConfig, OptimConfig, TrainConfig
from cnnvit.data.augment import BatchTransform
from cnnvit.data.loaders import InMemoryLoader
from cnnvit.data.pipeline import load_splits, normalization
from cnnvit.data.types import ArraySource
from cnnvit.models import create_model
from cnnvit.runtime import Runtime, device_name, resolve_runtime
from cnnvit.train.loop import TrainingStep, make_loss, train_one_epoch
from cnnvit.train.optim import build_optimizer, build_scheduler


class PILDataset(Dataset):
    """The usual way: one PIL image per ``__getitem__``, transformed one at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform  # (N, H, W, C) uint8

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        return self.transform(pil), int(self.labels[i])


def _timed(fn: Callable[[], int], device: torch.device, repeats: int) -> list[float]:
    """Images/s of ``fn`` (which returns the number of images it trained on) over ``repeats``."""
    fn()  # warm-up: allocator, cuDNN autotuning, worker start-up
    rates = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        images = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(images / (time.perf_counter() - start))
    return rates


def cnnvit_side(model, source: ArraySource, runtime: Runtime, args, mean, std) -> Callable[[], int]:
    gen = torch.Generator().manual_seed(0)
    loader = InMemoryLoader(
        source, device=runtime.device, batch_size=args.batch_size, shuffle=True, generator=gen
    )
    transform = BatchTransform(
        size=source.images.shape[1],
        channels=3,
        mean=mean,
        std=std,
        augment=AugmentConfig(crop_padding=4, hflip=True),
    )
    optim_cfg = OptimConfig(name="sgd", lr=0.01, weight_decay=5e-4)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = build_scheduler(
        optimizer, optim_cfg, steps_per_epoch=len(loader), total_steps=1000 * len(loader)
    )
    loss_fn = make_loss(0.0)

    def run() -> int:
        step = TrainingStep(model, optimizer, scheduler, loss_fn, runtime)
        stats = train_one_epoch(step, loader, transform, generator=gen, first_step=0)
        return stats.images

    return run


def baseline_side(
    model, source: ArraySource, device: torch.device, args, mean, std
) -> Callable[[], int]:
    size = source.images.shape[1]
    tf = transforms.Compose(
        [
            transforms.RandomCrop(size, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.Grayscale(num_output_channels=3)
            if source.images.shape[-1] == 1
            else transforms.Lambda(lambda x: x),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    loader = DataLoader(
        PILDataset(source.images, source.labels, tf),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=2,
        persistent_workers=True,
        pin_memory=device.type == "cuda",
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def run() -> int:
        model.train()
        seen = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        return seen

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet_mini")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    runtime = resolve_runtime(TrainConfig(device=args.device))
    data_cfg = DataConfig(spec=args.data)
    splits = load_splits(data_cfg)
    n = min(len(splits.train), args.steps * args.batch_size)
    source = splits.train.subset(np.arange(n))
    assert isinstance(source, ArraySource), "this benchmark needs an in-memory dataset"
    c = 3
    mean, std = normalization(data_cfg, splits, c)

    torch.manual_seed(0)
    model = create_model(
        args.model, num_classes=len(splits.classes), in_chans=c, img_size=source.images.shape[1]
    ).to(runtime.device)
    baseline_model = copy.deepcopy(model)

    ours = _timed(
        cnnvit_side(model, source, runtime, args, mean, std), runtime.device, args.repeats
    )
    base = _timed(
        baseline_side(baseline_model, source, runtime.device, args, mean, std),
        runtime.device,
        args.repeats,
    )

    print(
        f"model {args.model}, data {args.data} ({n} images, {n // args.batch_size} steps), "
        f"batch {args.batch_size}, device {device_name(runtime.device)}, torch {torch.__version__}"
    )
    print(
        f"cnnvit   : {statistics.median(ours):8.0f} img/s"
        f"  (min {min(ours):.0f}, max {max(ours):.0f}; "
        f"{str(runtime.dtype).removeprefix('torch.')}, channels_last={runtime.channels_last})"
    )
    print(
        f"baseline : {statistics.median(base):8.0f} img/s"
        f"  (min {min(base):.0f}, max {max(base):.0f}; "
        "float32, PIL + per-sample transforms, DataLoader 2 workers)"
    )
    print(f"ratio    : {statistics.median(ours) / statistics.median(base):.2f}x")


if __name__ == "__main__":
    main()
