"""Inference throughput: cnnvit's batched evaluation against seed 002's loop, in one process.

Both classify the same JPEG files with the same model and weights:

* **baseline** (seed 002's loop): one image at a time: ``PIL.Image.open(...).convert("RGB")``,
  timm's eval transform, ``model(x[None])``, softmax.
* **cnnvit**: :func:`cnnvit.evaluate.inference.evaluate_models`: decoding and cropping in
  DataLoader workers, batches of uint8 to the device, normalisation there, bf16 and
  channels_last on CUDA.

Each side runs once untimed on the first ``--warmup`` images, then ``--repeats`` timed passes
over all images (the device synchronised before the clock is read); the median images/s, the
spread (min-max) and the ratio of medians are printed. The images are generated JPEGs
(``--images`` of ``--size`` px, smooth random colour fields so they compress like photos).
Usage::

    python benchmarks/inference_pipeline.py --model resnet18                  # 2-core CPU
    python benchmarks/inference_pipeline.py --model resnet18 --workers 2 --batch-size 16
    python benchmarks/inference_pipeline.py --model resnet50 --device cuda --batch-size 256 \
        --workers 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import timm.data
import torch
from PIL import Image

from cnnvit.config import InferenceConfig
from cnnvit.data.readers import read_dataset
from cnnvit.evaluate.inference import EvalModel, evaluate_models
from cnnvit.runtime import device_name, resolve_device


def write_jpegs(folder: Path, count: int, size: int) -> None:
    """``count`` JPEGs of ``size`` x ``size`` in two class folders; smooth colour fields."""
    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        path = folder / f"class{i % 2}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)


def baseline(model: torch.nn.Module, paths: list[Path], device: torch.device) -> None:
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.inference_mode():
        for path in paths:
            x = transform(Image.open(path).convert("RGB"))[None].to(device)
            torch.softmax(model(x), dim=1).cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8, help="8 is fastest on 2 CPU cores")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="decoding workers; on 2 CPU cores they compete with the forward pass, so 0",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=64)
    parser.add_argument(
        "--variants",
        default="fp32,bf16",
        help="cnnvit dtypes to time (channels_last on): fp32 is the baseline's precision; bf16 "
        "autocast pays off on CPUs with AVX512-BF16/AMX and on GPUs",
    )
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=2).eval().to(device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        write_jpegs(folder, args.images, args.size)
        splits = read_dataset(f"folder:{folder}")
        paths = [Path(p) for p in splits.train.paths]
        out = Path(tmp) / "out"

        def run_cnnvit(source, dtype: str) -> None:
            evaluate_models(
                [EvalModel.of(args.model, model)], source, splits.classes, out / dtype,
                InferenceConfig(
                    batch_size=args.batch_size, num_workers=args.workers, device=str(device),
                    precision=dtype, channels_last="on",
                ),
                progress=False,
            )  # fmt: skip

        variants = args.variants.split(",")
        warm = np.arange(min(args.warmup, len(paths)))
        baseline(model, paths[: len(warm)], device)
        for dtype in variants:
            run_cnnvit(splits.train.subset(warm), dtype)
        work = {"seed 002 loop": lambda: baseline(model, paths, device)}
        for dtype in variants:
            work[f"cnnvit {dtype}"] = lambda dtype=dtype: run_cnnvit(splits.train, dtype)
        timings: dict[str, list[float]] = {name: [] for name in work}
        for _ in range(args.repeats):
            for name, run in work.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                run()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                timings[name].append(len(paths) / (time.perf_counter() - start))
        predictions = {
            dtype: pd.read_parquet(out / dtype / args.model / "predictions.parquet")["prediction"]
            for dtype in variants
        }

    print(
        f"{args.model}, {len(paths)} JPEGs at {args.size} px, device {device_name(device)}, "
        f"torch threads {torch.get_num_threads()}; cnnvit: batch {args.batch_size}, "
        f"{args.workers} workers, channels_last; baseline: batch 1, fp32, contiguous; "
        f"{args.repeats} repeats"
    )
    base = statistics.median(timings["seed 002 loop"])
    for name, rates in timings.items():
        ratio = statistics.median(rates) / base
        print(
            f"  {name:>14}: {statistics.median(rates):8.1f} images/s "
            f"(min {min(rates):.1f}, max {max(rates):.1f})  ratio {ratio:.2f}x"
        )
    if "fp32" in predictions and "bf16" in predictions:
        same = (predictions["fp32"] == predictions["bf16"]).mean()
        print(f"  bf16 and fp32 predict the same class for {100 * same:.2f} % of the images")


if __name__ == "__main__":
    main()
