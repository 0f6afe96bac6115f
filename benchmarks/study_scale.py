"""Study scale: the report over 100 to 10,000 cells, and what a cell costs as a Ray task on a
simulated cluster of several nodes. Both parts run in one process; docs/scale.md reads them.

* **report**: studies of 100, 1,000 and 10,000 fabricated run folders (two models, training
  sizes × seeds, every file of a completed run: results.json, epochs.csv, metrics.json,
  predictions.parquet, config.yaml, environment.json; ``tests/report/fabricate.py``). For each
  size: ``load_study_data`` (collect: every run folder read into tables; the first read, which
  also brings the files into the OS cache, is shown apart) and ``write_report`` (tables,
  figures, report.html), after one untimed warm-up on the smallest; median and min-max
  of ``--repeats`` timings (``--large-repeats`` above 1,000 cells), milliseconds per cell, and
  the growth exponent between sizes (log ratio of times / log ratio of cells: 1 is linear),
  and the memory the collected tables hold (tracemalloc: Python, NumPy and pandas objects).
* **ray**: a local Ray cluster of ``--nodes`` simulated nodes of 1 CPU each
  (``ray.cluster_utils.Cluster``). A stand-in cell does a cell's bookkeeping (writes results.json
  into its own run folder, atomically, as training does) and nothing else, so what is measured
  is the engine's cost per cell. (a) A plain Ray task, one at a time: the round trip less the
  task's own work. (b) ``--cells`` stand-in cells of a two-model study (the default study's
  recipe, sizes × seeds) through cnnvit's own Ray executor, the loop ``cnnvit compare
  --executor ray`` runs (``run_in_pool`` over a ``RayPool``: skip finished cells, submit the
  rest, collect): the cells held back by a gate until the last is submitted, so all are in
  flight at once; the time to build the cell list and to submit it, the driver's RSS (before,
  holding the cell list, with every cell in flight, after), the wall time, per cell and in slot
  time beyond the cells' own work, the same writes done inline by the driver (the baseline,
  same process), and a re-run that skips every finished cell.

Usage::

    python benchmarks/study_scale.py                      # both parts, about 15 min on 2 cores
    python benchmarks/study_scale.py --part report --sizes 100,1000 --root /tmp/scale
    python benchmarks/study_scale.py --part ray --cells 100,1000,10000
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "report"))
from fabricate import grid_for, make_scaled_study  # the report tests' fabricator

from cnnvit.folders import RunFolder, StudyFolder
from cnnvit.report.build import write_report
from cnnvit.report.collect import load_study_data


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def spread(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} s ({min(times):.2f}–{max(times):.2f})"


# --- report ----------------------------------------------------------------------------------


def study_of(root: Path, cells: int) -> Path:
    """The fabricated study of ``cells`` cells under ``root``, made once and reused."""
    study = root / f"cells-{cells}"
    if not StudyFolder(study).info.is_file():
        start = time.perf_counter()
        make_scaled_study(study, cells)
        print(f"  fabricated {cells:,} run folders in {time.perf_counter() - start:.0f} s")
    return study


def report_part(args: argparse.Namespace, root: Path) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    studies = {n: study_of(root, n) for n in sizes}
    print(f"\nReport over fabricated run folders ({machine()}, {date.today()}, {root}):")
    write_report(studies[sizes[0]])  # warm-up: imports, font cache, the first figures
    rows = {}
    for n, study in studies.items():
        repeats = args.repeats if n <= 1_000 else args.large_repeats
        cold = timed(lambda s=study: load_study_data(s))  # also brings the files into the cache
        collect = [timed(lambda s=study: load_study_data(s)) for _ in range(repeats)]
        tracemalloc.start()  # NumPy and pandas report their arrays to it
        data = load_study_data(study)
        held, peak = (b / 2**20 for b in tracemalloc.get_traced_memory())
        tracemalloc.stop()
        del data
        report = [timed(lambda s=study: write_report(s)) for _ in range(repeats)]
        rows[n] = (collect, report, held)
        print(
            f"  {n:>6,} cells: collect {spread(collect)} (first read {cold:.2f} s), report "
            f"{spread(report)} (median of {repeats}); the collected tables hold {held:.1f} MB "
            f"(peak while reading {peak:.1f} MB)"
        )
    print(
        f"  {'cells':>6}  {'collect ms/cell':>15}  {'report ms/cell':>14}  growth (collect, report)"
    )
    previous = None
    for n, (collect, report, _) in rows.items():
        c, r = statistics.median(collect), statistics.median(report)
        growth = ""
        if previous is not None:
            pn, pc, pr = previous
            k = math.log(n / pn)
            growth = f"n^{math.log(c / pc) / k:.2f}, n^{math.log(r / pr) / k:.2f}"
        print(f"  {n:>6,}  {1e3 * c / n:>15.2f}  {1e3 * r / n:>14.2f}  {growth}")
        previous = (n, c, r)


# --- ray -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bookkeeping:
    """A stand-in cell's work on a worker: wait until ``gate`` exists (so that every cell is in
    flight before any runs), then write the cell's results.json into its run folder, atomically,
    as training does, and nothing else; the outcome says how long the writing took."""

    gate: str

    def __call__(self, cell):
        from cnnvit.study.cell import CellOutcome

        while not os.path.exists(self.gate):
            time.sleep(0.01)
        start = time.perf_counter()
        RunFolder(cell.config.output.dir).write_results(
            {"status": "completed", "model": cell.model, "seed": cell.seed, "test_top1": 0.5}
        )
        return CellOutcome(cell, "completed", time.perf_counter() - start)


def prime() -> None:
    """A worker's imports of a cell's modules, done once."""
    import cnnvit.study.cell  # noqa: F401

    time.sleep(1.0)


def one_write(root: str, cell: str) -> float:
    """A plain Ray task: a results.json written; returns its seconds."""
    start = time.perf_counter()
    RunFolder(Path(root) / cell).write_results({"status": "completed", "cell": cell})
    return time.perf_counter() - start


def study_cells(cells: int, out: Path) -> list:
    """The cells of a two-model study of about ``cells`` cells (the built-in default study's
    recipe; training sizes × seeds as in the report part), run folders under ``out``."""
    from cnnvit.study.config import cells as grid_cells
    from cnnvit.study.config import load_study

    fractions, seeds = grid_for(cells)
    return grid_cells(load_study(None, values={"fractions": fractions, "seeds": seeds}), out)


def ray_part(args: argparse.Namespace, root: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": 100 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    unadvertise(cluster.address)
    for _ in range(args.nodes - 1):
        cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    try:
        _ray_measure(ray, args, root)
    finally:
        ray.shutdown()
        cluster.shutdown()


def unadvertise(address: str) -> None:
    """Take the simulated cluster's address out of /tmp/ray/ray_current_cluster, where Ray's
    Cluster writes it: any ``ray.init()`` without an address on this machine (a test, another
    benchmark, ``cnnvit compare --executor ray`` without ``--address``) would otherwise join
    this cluster, and both would measure each other."""
    from ray._private.utils import get_ray_address_file

    advertised = Path(get_ray_address_file(None))
    if advertised.is_file() and advertised.read_text().strip() == address:
        advertised.unlink()


def _ray_measure(ray, args: argparse.Namespace, root: Path) -> None:
    from cnnvit.study.config import ExecutorSettings
    from cnnvit.study.executors.base import Tracker, run_in_pool
    from cnnvit.study.executors.ray_tasks import RayPool
    from cnnvit.ui import console

    slots = int(ray.cluster_resources().get("CPU", 0))
    nodes = len([n for n in ray.nodes() if n["Alive"]])
    print(
        f"\nRay {ray.__version__}: {nodes} simulated nodes of 1 CPU ({slots} slots) on "
        f"{machine()}, {date.today()}; a stand-in cell writes its results.json and nothing else"
    )
    write = ray.remote(num_cpus=1, max_retries=0)(one_write)
    shared = str(root / "ray-trips")
    ray.get([write.remote(shared, f"warm-{i}") for i in range(4 * slots)])  # start the workers

    # (a) the engine alone, one cell at a time: the round trip less the task's own work
    trips, works = [], []
    for i in range(args.round_trips):
        start = time.perf_counter()
        works.append(ray.get(write.remote(shared, f"trip-{i}")))
        trips.append(time.perf_counter() - start)
    trip, work = statistics.median(trips), statistics.median(works)
    print(
        f"  (a) a plain Ray task, one at a time ({args.round_trips}): round trip "
        f"{1e3 * trip:.2f} ms, its own work {1e3 * work:.2f} ms: {1e3 * (trip - work):.2f} ms "
        "per cell"
    )

    # (b) cnnvit's executor (run_in_pool over a RayPool, as `compare --executor ray` runs it)
    settings = ExecutorSettings(kind="ray", max_retries=0)  # on the Ray joined above
    console.quiet = True  # the executor prints a line per cell
    print(
        "  (b) cnnvit's Ray executor: all cells submitted at once, held until the last is "
        "submitted, then run; inline = the same writes in the driver, one after another"
    )
    print(
        f"  {'cells':>6}  {'build':>7}  {'submit':>14}  {'driver RSS':>24}  {'wall':>8}  "
        f"{'per cell':>8}  {'beyond work':>11}  {'inline':>7}  {'re-run':>13}"
    )
    try:
        # warm-up: every slot's worker imports cnnvit's study modules (and torch) before the
        # clock starts; each task holds its slot a while, so that they spread over the slots
        ray.get([ray.remote(num_cpus=1)(prime).remote() for _ in range(2 * slots)])
        warm = study_cells(4 * slots, root / "executor-warm-up")
        (root / "executor-warm-up").mkdir(parents=True, exist_ok=True)
        (root / "executor-warm-up" / "go").touch()
        run_in_pool(RayPool(settings, Bookkeeping(str(root / "executor-warm-up" / "go"))), warm,
                    Tracker(), 0)  # fmt: skip
        for n in [int(s) for s in args.cells.split(",")]:
            _executor_row(n, root, settings, slots, RayPool, Tracker, run_in_pool)
    finally:
        console.quiet = False


def _executor_row(n, root, settings, slots, pool_class, tracker_class, run_in_pool) -> None:
    out = root / f"executor-{n}"
    out.mkdir(parents=True)
    gate = out / "go"
    gc.collect()
    before = rss_mb()
    start = time.perf_counter()
    cells = study_cells(n, out)
    build = time.perf_counter() - start
    listed = rss_mb()
    seen: dict[str, float] = {}

    class Measured(pool_class):
        """The executor's pool, noting when every cell is in flight, then opening the gate."""

        def submit(self, batch):
            begun = time.perf_counter()
            handles = super().submit(batch)
            seen.setdefault("submit", time.perf_counter() - begun)
            seen.setdefault("rss", rss_mb())
            gate.touch()
            return handles

    start = time.perf_counter()
    outcomes = run_in_pool(Measured(settings, Bookkeeping(str(gate))), cells, tracker_class(), 0)
    wall = time.perf_counter() - start
    assert all(o.status == "completed" for o in outcomes), {o.status for o in outcomes}
    work = sum(o.seconds for o in outcomes)
    del outcomes
    gc.collect()
    after = rss_mb()
    start = time.perf_counter()
    again = run_in_pool(Measured(settings, Bookkeeping(str(gate))), cells, tracker_class(), 0)
    rerun = time.perf_counter() - start
    assert all(o.status == "skipped" for o in again)
    inline_out = root / f"inline-{n}"
    inline_cells = study_cells(n, inline_out)
    inline_out.mkdir(parents=True)
    (inline_out / "go").touch()
    stand_in = Bookkeeping(str(inline_out / "go"))
    inline = timed(lambda: [stand_in(c) for c in inline_cells])
    print(
        f"  {n:>6,}  {build:>6.1f}s  {seen['submit']:>5.1f}s "
        f"{1e3 * seen['submit'] / n:>5.2f}ms  "
        f"{before:>5.0f}→{listed:>5.0f}→{seen['rss']:>5.0f}→{after:>5.0f}MB  {wall:>7.1f}s  "
        f"{1e3 * wall / n:>6.2f}ms  {1e3 * (wall * slots - work) / n:>9.2f}ms  "
        f"{inline:>6.1f}s  {rerun:>5.1f}s {1e3 * rerun / n:>4.2f}ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["report", "ray", "both"], default="both")
    parser.add_argument("--sizes", default="100,1000,10000", help="cells per fabricated study")
    parser.add_argument("--root", type=Path, help="keep (and reuse) the fabricated studies here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large-repeats", type=int, default=1, help="above 1,000 cells")
    parser.add_argument("--nodes", type=int, default=3, help="simulated Ray nodes, 1 CPU each")
    parser.add_argument("--round-trips", type=int, default=200)
    parser.add_argument("--cells", default="100,1000,10000", help="stand-in cells on Ray")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="study-scale-") as tmp:
        # Ray first: its driver-memory figures need a process that has not yet built reports
        if args.part in ("ray", "both"):
            ray_part(args, Path(tmp) / "ray")  # fresh run folders every time
        if args.part in ("report", "both"):
            root = args.root or Path(tmp) / "studies"
            root.mkdir(parents=True, exist_ok=True)
            report_part(args, root)


if __name__ == "__main__":
    main()
