"""The ``cnnvit`` command: parse arguments, call one library function per verb, report errors.

The flags come from the typed configs (:mod:`cnnvit.cli.options`), the analysis verbs from the
analysis registry. Bad input (:class:`cnnvit.errors.UserError`, a missing file, an OS error such as
a full disk) ends in one line on stderr and exit status 2; an interruption in 130, with everything
finished kept; anything unforeseen in one line and status 1, its traceback saved to a file.
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

from cnnvit.cli import analyses, deploy, hub, listing, runs, studies
from cnnvit.errors import UserError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnvit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runs.add_commands(sub)  # train, evaluate, classify, profile, agree
    analyses.add_commands(sub)  # explain, similarity, knn, shape-bias, robustness, ...
    studies.add_commands(sub)  # compare, report
    listing.add_commands(sub)  # models, recipes, datasets
    hub.add_commands(sub)  # hub-folder
    deploy.add_commands(sub)  # export
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["cnnvit", *argv])
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (UserError, FileNotFoundError) as err:
        print(f"cnnvit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a folder without write permission
        print(f"cnnvit {args.command}: error: {_os_error(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # not foreseen: one line, and the traceback kept for a bug report
        if os.environ.get("CNNVIT_TRACEBACK"):
            raise
        saved = _save_traceback(err)
        print(
            f"cnnvit {args.command}: internal error: {type(err).__name__}: {err}; the traceback "
            f"is in {saved} (set CNNVIT_TRACEBACK=1 to see it here): please report it",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(
            "interrupted; every finished epoch is checkpointed: run the same `cnnvit compare` "
            "again, or `cnnvit train --resume DIR`, to continue",
            file=sys.stderr,
        )
        return 130


def _save_traceback(err: Exception) -> Path:
    fd, name = tempfile.mkstemp(prefix="cnnvit-traceback-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write("".join(traceback.format_exception(err)))
    return Path(name)


def _os_error(err: OSError) -> str:
    """One line for an operating-system error, with what to do about the common ones."""
    where = f": {err.filename}" if err.filename else ""
    line = f"{err.strerror or err}{where}"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        line += "; free some space, then run the same command again (`cnnvit train --resume "
        line += "DIR` for a run): finished epochs and cells are kept"
    elif err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        line += "; choose a folder you can write (--out)"
    return line


if __name__ == "__main__":
    sys.exit(main())
