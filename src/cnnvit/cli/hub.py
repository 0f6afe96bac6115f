"""``cnnvit hub-folder``: a trained run as a timm hub folder (config.json + model.safetensors).

What timm's ``push_to_hub`` would upload, written locally; nothing is uploaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnvit.ui import console

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hub-folder",
        help="save a run as a timm hub folder (config.json + model.safetensors), loadable by "
        "timm.create_model('local-dir:FOLDER', pretrained=True)",
    )
    p.add_argument("run_dir", type=Path, help="a run folder written by `cnnvit train`")
    p.add_argument("--out", type=Path, required=True, help="the folder to write")
    p.set_defaults(func=cmd_hub_folder)


def cmd_hub_folder(args: argparse.Namespace) -> int:
    from cnnvit.models.timm_folder import save_timm_folder  # torch and timm

    folder = save_timm_folder(args.run_dir, args.out)
    console.print(f"wrote {folder / 'config.json'} and {folder / 'model.safetensors'}")
    return 0
