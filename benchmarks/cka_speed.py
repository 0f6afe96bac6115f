"""CKA speed: cnnvit's all-pairs minibatch CKA against a one-pair-at-a-time loop, in one process.

Both compute the same estimate (minibatch linear CKA, unbiased HSIC_1, float64) between 20
recorded layers of a ResNet-18 (its 20 convolutions) and 20 layers of a small ViT (``vit_mini``,
20 of its layers evenly spaced from the patch embedding to the last norm), on the same images:

* **all pairs** (cnnvit): :func:`cnnvit.analyze.cka.minibatch_cka`: one forward pass per batch
  per model, every layer's output turned into its Gram matrix in the hook, all 400 pairs
  accumulated from the stacked Grams at once;
* **one pair at a time** (baseline): for each of the 400 (layer of A, layer of B) pairs, for
  each batch, both forward passes with hooks on just those two layers, then that pair's HSIC_1
  terms (the usual way a per-pair CKA function gets called in a double loop).

Each side runs once untimed (the baseline on a few pairs) as warm-up, then ``--repeats`` timed
passes, alternating, the device synchronised before each clock read; median seconds, the spread
(min-max) and the ratio of medians are printed, with the target (>= 5x), and the largest
difference between the two CKA matrices (they must agree). Usage::

    python benchmarks/cka_speed.py                       # 2-core CPU: about two minutes
    python benchmarks/cka_speed.py --images 128 --batch-size 64 --repeats 5
    python benchmarks/cka_speed.py --device cuda --images 1024 --batch-size 256 --size 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from cnnvit.analyze.cka import gram_linear, hsic1_all_pairs, minibatch_cka
from cnnvit.analyze.hooks import LayerRecorder, preserved
from cnnvit.analyze.images import ImageSet
from cnnvit.analyze.layers import conv_layers, every_layer
from cnnvit.analyze.subject import Subject, subject_from_name
from cnnvit.runtime import device_name, resolve_device

TARGET = 5.0
LAYERS = 20


def evenly(names: list[str], count: int) -> list[str]:
    """``count`` names spread evenly over ``names``, first and last included."""
    picks = np.linspace(0, len(names) - 1, count).round().astype(int)
    return [names[i] for i in picks]


def one_pair_at_a_time(
    a: Subject, b: Subject, layers_a: list[str], layers_b: list[str], images: ImageSet, bs: int
) -> np.ndarray:
    """The baseline: for each pair, for each batch, two forward passes and that pair's terms."""
    out = np.zeros((len(layers_a), len(layers_b)))
    with preserved(a.model), preserved(b.model), torch.inference_mode():
        for i, la in enumerate(layers_a):
            for j, lb in enumerate(layers_b):
                cross = self_a = self_b = 0.0
                for batch, _ in images.batches(bs):
                    k = _gram(a, la, batch)  # (1, n, n)
                    l = _gram(b, lb, batch)  # noqa: E741  (1, n, n)
                    cross += float(hsic1_all_pairs(k, l)[0, 0])
                    self_a += float(hsic1_all_pairs(k, k)[0, 0])
                    self_b += float(hsic1_all_pairs(l, l)[0, 0])
                out[i, j] = cross / np.sqrt(self_a * self_b)
    return out


def _gram(subject: Subject, layer: str, batch: torch.Tensor) -> torch.Tensor:
    with LayerRecorder(subject.model, [layer], transform=gram_linear) as rec:
        subject.model(subject.prepare(batch))
    return rec.outputs[layer][None]  # (1, n, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = resolve_device(args.device)
    classes = [str(i) for i in range(10)]
    torch.manual_seed(0)
    cnn = subject_from_name("resnet18", classes=classes, image_size=args.size, device=device)
    vit = subject_from_name("vit_mini", classes=classes, image_size=args.size, device=device)
    layers_a = conv_layers(cnn.model)
    layers_b = evenly(every_layer(vit.model), LAYERS)
    assert len(layers_a) == LAYERS and len(layers_b) == LAYERS, (len(layers_a), len(layers_b))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (args.images, 3, args.size, args.size), dtype=np.uint8)
    images = ImageSet(
        torch.from_numpy(pixels), torch.zeros(args.images, dtype=torch.int64), classes, "noise"
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def all_pairs() -> np.ndarray:
        return minibatch_cka(
            cnn, vit, images, layers_a=layers_a, layers_b=layers_b,
            batch_size=args.batch_size, progress=False,
        ).matrix  # fmt: skip

    def naive() -> np.ndarray:
        return one_pair_at_a_time(cnn, vit, layers_a, layers_b, images, args.batch_size)

    results: dict[str, np.ndarray] = {}
    work = {"all pairs": all_pairs, "one pair at a time": naive}
    work["all pairs"]()  # warm-up
    one_pair_at_a_time(cnn, vit, layers_a[:2], layers_b[:2], images, args.batch_size)
    timings: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(args.repeats):
        for name, run in work.items():
            sync()
            start = time.perf_counter()
            results[name] = run()
            sync()
            timings[name].append(time.perf_counter() - start)

    print(
        f"resnet18 ({len(layers_a)} convs) vs vit_mini ({len(layers_b)} layers): "
        f"{LAYERS * LAYERS} pairs, {args.images} images at {args.size} px, batch "
        f"{args.batch_size}, device {device_name(device)}, torch threads "
        f"{torch.get_num_threads()}, {args.repeats} repeats"
    )
    base = statistics.median(timings["one pair at a time"])
    for name, times in timings.items():
        ratio = base / statistics.median(times)
        print(
            f"  {name:>18}: {statistics.median(times):8.3f} s "
            f"(min {min(times):.3f}, max {max(times):.3f})  speed-up {ratio:.1f}x"
        )
    ratio = base / statistics.median(timings["all pairs"])
    mark = "✓" if ratio >= TARGET else "✗"
    print(f"  target >= {TARGET:g}x: {mark}")
    gap = np.nanmax(np.abs(results["all pairs"] - results["one pair at a time"]))
    print(f"  largest difference between the two CKA matrices: {gap:.2e}")


if __name__ == "__main__":
    main()
