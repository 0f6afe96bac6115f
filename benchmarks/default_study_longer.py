"""Does the default study's answer survive three times the training? (Issue: the conclusions must
not be an artefact of the budget.)

Runs the default study (``cnnvit compare``) as shipped and again with every cell's step budget
multiplied by ``--factor`` (default 3), each into its own folder, then prints, side by side, each
size's test top-1 of both models (mean over seeds), the paired difference and the verdict's
outcome, the cells still improving, the data-efficiency exponents and the crossover statement,
and whether every per-size outcome is the same. Finished cells are skipped on a re-run, so the
script resumes. Usage::

    python benchmarks/default_study_longer.py --out runs/longer-check
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from cnnvit.cli import main as cnnvit_main
from cnnvit.report.collect import load_study_data
from cnnvit.report.context import ReportContext
from cnnvit.study.config import load_study


def run(out: Path, steps: int) -> float:
    start = time.perf_counter()
    code = cnnvit_main(
        [
            "compare",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            f"recipe.train.budget.steps={steps}",
        ]
    )
    if code not in (0, 1):
        raise SystemExit(f"cnnvit compare exited {code} for {out}")
    return time.perf_counter() - start


def summary(out: Path) -> tuple[pd.DataFrame, list[str]]:
    data = load_study_data(out)
    table = data.summary.pivot_table(
        index="num_train_images", columns="model", values="test_top1_mean"
    )
    improving = data.results.groupby("model")["still_improving"].apply(
        lambda s: int(s.fillna(False).astype(bool).sum())
    )
    table.loc["cells still improving"] = improving
    return table, ReportContext(data).verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/longer-check"))
    parser.add_argument("--factor", type=int, default=3)
    args = parser.parse_args()
    steps = load_study(None).recipe.train.budget.steps or 0
    folders = {"as shipped": args.out / "x1", f"{args.factor}x steps": args.out / f"x{args.factor}"}
    budgets = {"as shipped": steps, f"{args.factor}x steps": steps * args.factor}
    for name, folder in folders.items():
        seconds = run(folder, budgets[name])
        print(f"{name}: {budgets[name]} steps per cell, {seconds:.0f} s (cells done earlier: 0 s)")
    for name, folder in folders.items():
        table, lines = summary(folder)
        print(f"\n== {name} ({budgets[name]} steps per cell): test top-1, mean over seeds")
        print(table.to_string(float_format=lambda x: f"{x:.4f}"))
        print("\n".join(f"- {line}" for line in lines))


if __name__ == "__main__":
    main()
