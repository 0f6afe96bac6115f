"""The verbs that list what cnnvit offers: built-in models, recipe presets, dataset names."""

from __future__ import annotations

import argparse

from rich.table import Table

from cnnvit.presets import describe_presets
from cnnvit.ui import console

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the built-in models (--all: every timm model)")
    p.add_argument("--all", action="store_true")
    p.add_argument("--filter", help="wildcard for --all, e.g. 'vit_*'")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("recipes", help="list the seed recipe presets and what they set")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("datasets", help="list the dataset names --data accepts")
    p.set_defaults(func=cmd_datasets)


def cmd_models(args: argparse.Namespace) -> int:
    import timm  # the model registry: torch and timm, imported only by this verb

    from cnnvit.models.registry import describe_builtin_models

    if args.all:
        print("\n".join(timm.list_models(args.filter or "*")))
        return 0
    table = Table(title="cnnvit built-in models (parameters with 10 classes, 3 channels)")
    for column in ("name", "family", "parameters", "from"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    for row in describe_builtin_models():
        table.add_row(row["name"], row["family"], f"{row['params']:,}", row["description"])
    console.print(table)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    table = Table(title="recipe presets (preset: NAME in a run config, recipe.preset in a study)")
    for column in ("name", "reproduces", "sets", "not reproduced"):
        table.add_column(column)
    for row in describe_presets():
        table.add_row(row["name"], row["reproduces"], row["settings"], row["not_covered"] or "-")
    console.print(table)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from cnnvit.data.readers import KNOWN_DATASETS  # the readers import torch

    print("\n".join(KNOWN_DATASETS))
    return 0
