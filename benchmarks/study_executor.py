"""Study cells side by side: the same small study with ``--executor local`` and ``--executor ray``,
in one process, on this machine's cores.

``local`` trains the cells one after another, each with torch's default threads (every core);
``ray`` starts a Ray instance on this machine's cores and runs the cells as tasks of
``cpus_per_cell`` CPUs each, each cell with that many torch threads, so that on 2 cores two
cells train at once with one thread each. A third arm, ``local-1t``, trains one after another
with one thread, to tell what running side by side buys from what one thread per cell buys.
Each repeat trains every cell into a fresh folder (nothing skipped), without the profile and
the report (the same on the driver for all); the Ray repeat's wall time includes starting and
stopping Ray and its workers' imports. The arms alternate within each repeat; the median and
the spread (min-max) are printed, with the load average after each run (other work on the
machine skews the figures), and the ratios of medians. Usage::

    python benchmarks/study_executor.py                      # default study, seed 0, 100 steps
    python benchmarks/study_executor.py --set recipe.train.budget.steps=200 --repeats 1
    python benchmarks/study_executor.py --arms local ray    # without the one-thread arm
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cnnvit.folders import RunFolder
from cnnvit.runtime import device_name
from cnnvit.study.config import cells, load_study
from cnnvit.study.run import run_study

# Each arm: the executor and the overrides that make it.
ARMS = {
    "local": ["executor.kind=local"],
    "local-1t": ["executor.kind=local", "recipe.train.threads=1"],
    "ray": ["executor.kind=ray"],
}


def one_run(overrides: list[str], arm: str) -> tuple[float, dict[str, float]]:
    """Wall time of one whole run of the cells, and each cell's test top-1."""
    study = load_study(None, [*overrides, *ARMS[arm]])
    with tempfile.TemporaryDirectory(prefix=f"bench-{arm}-") as folder:
        start = time.perf_counter()
        outcomes = run_study(study, Path(folder) / "study", command="benchmark", progress=False)
        seconds = time.perf_counter() - start
        top1 = {
            o.cell.id: RunFolder(o.cell.config.output.dir).read_results()["test_top1"]
            for o in outcomes
        }
    statuses = {o.status for o in outcomes}
    if statuses != {"completed"}:
        raise SystemExit(f"{arm}: cells ended {statuses}, not all completed")
    return seconds, top1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="study override (the default study, seed 0, is the base)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    args = parser.parse_args()
    overrides = [
        "seeds=[0]",
        "recipe.train.budget.steps=100",
        "profile.enabled=false",
        "recipe.train.progress=false",
        *args.overrides,
    ]
    study = load_study(None, overrides)
    grid = cells(study, Path("unused"))
    times: dict[str, list[float]] = {arm: [] for arm in args.arms}
    accuracies: dict[str, list[dict[str, float]]] = {arm: [] for arm in args.arms}
    for repeat in range(args.repeats):
        for arm in times:
            seconds, top1 = one_run(overrides, arm)
            times[arm].append(seconds)
            accuracies[arm].append(top1)
            load = os.getloadavg()[0]  # others' work on the machine skews every arm
            print(f"repeat {repeat + 1}: {arm} {times[arm][-1]:.1f} s (load {load:.1f})")

    models = ", ".join(m.display for m in study.models)
    steps = study.recipe.train.budget.steps
    print(
        f"\nstudy {study.name}: {len(grid)} cells ({models}; {study.data.spec}; {steps} steps "
        f"of {study.recipe.train.batch_size}), device {device_name(torch.device('cpu'))}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    cpus = study.executor.cpus_per_cell
    labels = {
        "local": f"one after another, {torch.get_num_threads()} threads",
        "local-1t": "one after another, 1 thread",
        "ray": f"side by side, {cpus} CPU and {cpus} thread per cell, Ray start-up included",
    }
    for arm, runs in times.items():
        print(
            f"{arm:8s}: {statistics.median(runs):7.1f} s (min {min(runs):.1f}, max "
            f"{max(runs):.1f}; {labels[arm]})"
        )
    if "ray" in times:
        ray_s = statistics.median(times["ray"])
        for arm in ("local", "local-1t"):
            if arm in times:
                print(f"ratio   : {statistics.median(times[arm]) / ray_s:.2f}x ({arm} / ray)")
    # Equal threads give equal numbers; another thread count may change the last digits.
    first = {arm: runs[0] for arm, runs in accuracies.items()}
    for arm, runs in accuracies.items():
        same = [other for other in first if first[other] == runs[0]]
        steady = all(r == runs[0] for r in runs)
        print(
            f"test top-1, {arm}: {'the same' if steady else 'NOT the same'} in every repeat; "
            f"equal to {', '.join(same)}"
        )


if __name__ == "__main__":
    main()
