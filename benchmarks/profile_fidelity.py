"""Profile fidelity: cnnvit's latency and throughput against a hand-timed loop, in one process.

For each model (same weights, same input size, same device):

* **cnnvit**: ``cnnvit.profile.profile_model`` (batch-1 latency and batch-N inference
  throughput; the training step and the size sweep are left out here), run twice;
* **reference**: the minimal correct loop: warm-up calls, then for each repeat
  ``synchronize(); t0 = time.perf_counter(); model(x); synchronize(); t1 = ...``, median, with
  the same warm-up and repeat counts as cnnvit's first run used.

Order: cnnvit run 1, reference, cnnvit run 2, so that a slow drift of the machine shows in the
run-to-run figure rather than in the cnnvit/reference ratio. Printed: medians, their ratio
(target: within 10 %), and run 2 / run 1 on median latency (target: within 10 %). Usage::

    python benchmarks/profile_fidelity.py --batch-size 8          # CPU: a few minutes
    python benchmarks/profile_fidelity.py --batch-size 8 --threads 1   # a CPU shared with others
    python benchmarks/profile_fidelity.py --device cuda --batch-size 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cnnvit.config import ProfileConfig
from cnnvit.models import create_model
from cnnvit.profile.profiler import profile_model
from cnnvit.runtime import device_name, resolve_device

TOLERANCE = 0.10


def reference_median_s(
    model: torch.nn.Module, x: torch.Tensor, device: torch.device, warmup: int, repeats: int
) -> float:
    """Seconds per forward: warm-up, synchronise, perf_counter, median."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def within(ratio: float) -> str:
    return "✓" if abs(ratio - 1) <= TOLERANCE else "✗"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", help="repeatable")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=None, help="default: by time, >= 5")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models = args.model or ["resnet50", "vit_base_patch16_224"]
    device = resolve_device(args.device)
    print(
        f"device {device_name(device)}, torch {torch.__version__}, fp32, "
        f"{args.image_size} px, batch {args.batch_size} for throughput, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    failed = False
    for name in models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=1000, img_size=args.image_size).to(device).eval()
        config = ProfileConfig(
            image_size=args.image_size,
            batch_size=args.batch_size,
            device=str(device),
            repeats=args.repeats,
            warmup=args.warmup,
            train=False,
        )
        first = profile_model(name, config, model=model, progress=False)
        x1 = torch.randn(1, 3, args.image_size, args.image_size, device=device)
        xn = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
        ref_latency_ms = 1000 * reference_median_s(
            model, x1, device, args.warmup, first.repeats["latency"]
        )
        ref_throughput = args.batch_size / reference_median_s(
            model, xn, device, args.warmup, first.repeats["throughput"]
        )
        second = profile_model(name, config, model=model, progress=False)

        lat_ratio = first.latency_ms.median / ref_latency_ms
        thr_ratio = first.throughput.median / ref_throughput
        rerun = second.latency_ms.median / first.latency_ms.median
        failed |= any(abs(r - 1) > TOLERANCE for r in (lat_ratio, thr_ratio, rerun))
        lat, thr = first.latency_ms, first.throughput
        print(f"\n{name} ({first.cost.gmacs:.2f} GMACs)")
        print(
            f"  latency b1   cnnvit {lat.median:9.2f} ms (IQR {lat.q1:.2f}-{lat.q3:.2f}, "
            f"n={lat.n})   reference {ref_latency_ms:9.2f} ms   ratio {lat_ratio:.3f} "
            f"{within(lat_ratio)}"
        )
        print(
            f"  throughput   cnnvit {thr.median:9.2f} img/s (IQR {thr.q1:.2f}-{thr.q3:.2f}, "
            f"n={thr.n})   reference {ref_throughput:9.2f} img/s   ratio {thr_ratio:.3f} "
            f"{within(thr_ratio)}"
        )
        print(
            f"  run 2/run 1  latency {second.latency_ms.median:.2f} / "
            f"{first.latency_ms.median:.2f} ms = {rerun:.3f} {within(rerun)}; throughput "
            f"{second.throughput.median / first.throughput.median:.3f}"
        )
    print(f"\nall within {TOLERANCE:.0%}: {'yes' if not failed else 'NO'}")


if __name__ == "__main__":
    main()
