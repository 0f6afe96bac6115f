"""The deployment verb: ``cnnvit export`` writes a run's (or a named architecture's) model as ONNX
or a ``torch.export`` program, its preprocessing recorded in the file
(:mod:`cnnvit.profile.export`). Timing it in ONNX Runtime is ``cnnvit profile --runtime
onnxruntime``."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnvit.config import ConfigError
from cnnvit.ui import console

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a run's model (or --model NAME) as ONNX or a torch.export .pt2"
    )
    p.add_argument("run_dir", nargs="?", type=Path, help="a run folder written by `cnnvit train`")
    p.add_argument("--model", help="an architecture name instead (random weights)")
    p.add_argument("--format", default="onnx", help="onnx (default) or pt2")
    p.add_argument(
        "--out", type=Path, help="the file (default: RUN_DIR/model.FORMAT, ./NAME.FORMAT)"
    )
    p.add_argument("--image-size", type=int, help="input side for --model (default: its own)")
    p.add_argument("--opset", type=int, help="ONNX opset (default 18)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from cnnvit.profile.export import (
        DEFAULT_OPSET,
        export_model,
        exportable_from_name,
        exportable_from_run,
        require_format,
    )

    if (args.run_dir is None) == (args.model is None):
        raise ConfigError("give a run folder (cnnvit export DIR) or --model NAME, not both")
    require_format(args.format)
    if args.run_dir is not None:
        target = exportable_from_run(args.run_dir, image_size=args.image_size)
        out = args.out or args.run_dir / f"model.{args.format}"
    else:
        target = exportable_from_name(args.model, image_size=args.image_size)
        out = args.out or Path(f"{args.model}.{args.format}")
    written = export_model(target, out, args.format, opset=args.opset or DEFAULT_OPSET)
    prep = target.preprocessing
    fused = ", split norms fused" if target.fused else ""
    console.print(
        f"wrote {written} ({written.stat().st_size / 1e6:.2f} MB, {args.format}{fused}): input "
        f"(batch, {prep.channels}, {prep.image_size}, {prep.image_size}), "
        f"preprocessing {prep.describe()}",
        markup=False,
        highlight=False,
    )
    return 0
