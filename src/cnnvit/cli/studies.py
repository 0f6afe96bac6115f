"""The verbs on studies: ``compare`` runs one (or several, from one file) and writes its report;
``report`` rebuilds a report from a study folder alone.

``report`` needs no torch (the report reads files only); ``compare`` imports the training stack
when it runs. Both import what they run inside their handlers, so that ``cnnvit --help`` does
not pay for it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnvit.cli.runs import add_set_option
from cnnvit.folders import StudyFolder
from cnnvit.ui import console

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="run a whole study (models x sizes x seeds) and its report")
    p.add_argument(
        "study",
        nargs="?",
        type=Path,
        help="study YAML (default: the built-in study); several ---separated documents run "
        "one study each",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="study folder (default: runs/<study name>); with several studies, their parent "
        "(default: runs/<file name>)",
    )
    p.add_argument(
        "--executor",
        choices=["local", "ray", "slurm"],
        help="where the cells run: local (one after another here; the default), ray (Ray tasks; "
        "pip install 'cnnvit[ray]') or slurm (a SLURM job array through submitit; pip install "
        "'cnnvit[slurm]'); overrides the study's executor.kind. ray and slurm need DIR on a "
        "filesystem every worker sees",
    )
    p.add_argument(
        "--address",
        help="the Ray cluster to join (auto, ray://HOST:10001; implies --executor ray); without "
        "it, --executor ray starts Ray on this machine's cores",
    )
    add_set_option(p, "recipe.train.epochs=3")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="rebuild a study's report from its run folders")
    p.add_argument("study_dir", type=Path)
    p.set_defaults(func=cmd_report)


def cmd_compare(args: argparse.Namespace) -> int:
    import torch  # the default study depends on whether there is a GPU

    from cnnvit.data.readers import check_spec
    from cnnvit.report import print_summary, write_report
    from cnnvit.study.config import load_studies
    from cnnvit.study.run import run_study

    values: dict = {"recipe": {"train": {"progress": False}}} if args.no_progress else {}
    executor = {"kind": args.executor or ("ray" if args.address else None), "address": args.address}
    if any(v is not None for v in executor.values()):
        values["executor"] = {k: v for k, v in executor.items() if v is not None}
    studies = load_studies(
        args.study, args.overrides, values=values, cuda=torch.cuda.is_available()
    )
    for study in studies:  # a missing data folder stops here, not once per cell
        check_spec(study.data.spec)
    failed = []
    for study in studies:
        if len(studies) == 1:
            out = args.out or Path("runs") / study.name
        else:  # one folder per study, side by side
            out = (args.out or Path("runs") / args.study.stem) / study.name
        outcomes = run_study(
            study, out, command=args.command_line, progress=not args.no_progress, then=write_report
        )
        print_summary(out, console)  # ends with the report's path
        failed += [f"{study.name}/{o.cell.id}" for o in outcomes if o.status == "failed"]
    if failed:
        console.print(f"[red]{len(failed)} cell(s) failed:[/] {', '.join(failed)}")
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from cnnvit.report import print_summary, write_report  # pandas, scipy and matplotlib

    StudyFolder(args.study_dir).require()
    write_report(args.study_dir)
    print_summary(args.study_dir, console)
    return 0
