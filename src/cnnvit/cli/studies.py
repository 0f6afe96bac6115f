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
    from cnnvit.api.study import compare_all
    from cnnvit.report import print_summary  # pandas, scipy and matplotlib

    studies = compare_all(
        args.study,
        args.out,
        executor=args.executor,
        address=args.address,
        progress=not args.no_progress,
        settings=args.overrides,
        command=args.command_line,
        each=lambda study: print_summary(study.path, console),  # ends with the report's path
    )
    failed = [f"{study.name}/{cell}" for study in studies for cell in study.failed]
    if failed:
        console.print(f"[red]{len(failed)} cell(s) failed:[/] {', '.join(failed)}")
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from cnnvit.report import print_summary, write_report  # pandas, scipy and matplotlib

    StudyFolder(args.study_dir).require()
    write_report(args.study_dir)
    print_summary(args.study_dir, console)
    return 0
