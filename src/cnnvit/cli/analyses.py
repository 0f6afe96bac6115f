"""The analysis verbs, one per command of the registry (:mod:`cnnvit.analyze.registry`):
``explain``, ``similarity``, ``knn``, ``shape-bias``, ``robustness`` and any analysis registered
later.

Each works on run folders (their trained model, preprocessing and test images) or on model
names with weights and a ``--data`` spec, takes its analyses' options as flags (names, types and
defaults from their typed options, the verb's own defaults where they differ from a study's), and
writes the same folder a study's ``analysis/<name>/`` holds, so ``cnnvit report`` shows it when it
lies inside a study.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cnnvit.analyze.registry import Analysis, Command, commands
from cnnvit.cli.options import ConfigFlags, add_config_flags
from cnnvit.config import ConfigError, RuntimeConfig
from cnnvit.folders import AnalysisFolder
from cnnvit.ui import console

__all__ = ["add_commands", "write_classify_cams"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """A verb per command of the registry."""
    for analyses in commands().values():
        _add_verb(sub, analyses[0].command, analyses)


def _add_verb(sub: argparse._SubParsersAction, command: Command, analyses: list[Analysis]) -> None:
    p = sub.add_parser(command.name, help=command.help)
    _add_subject_options(p)
    per_analysis = {
        item.name: add_config_flags(p, item.options, defaults=command.defaults, owner=item.name)
        for item in analyses
    }
    if len(analyses) > 1:
        p.add_argument(
            "--only",
            action="append",
            choices=[a.name for a in analyses],
            help=f"run only this part (repeatable; default all {len(analyses)})",
        )
    p.set_defaults(func=_handler(analyses, per_analysis))


def _add_subject_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", type=Path, help="run folders (their model and weights)")
    p.add_argument(
        "--model", dest="models", action="append", default=[], help="a model name; repeatable"
    )
    p.add_argument(
        "--weights",
        type=Path,
        action="append",
        default=[],
        help="a weights file (or Hugging Face ViT folder) per --model, in the same order",
    )
    p.add_argument("--pretrained", action="store_true", help="--model with published weights")
    p.add_argument(
        "--data",
        help="NAME or NAME:PATH of the images (default with run folders: the first run's "
        "test split)",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        help="classes of --model's weights (default: the --data classes)",
    )
    p.add_argument("--image-size", type=int, help="input side for --model (default: its own)")
    add_config_flags(p, RuntimeConfig, ["device"])
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _handler(
    analyses: list[Analysis], flags: dict[str, ConfigFlags]
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        # The analyses raise ValueError for bad settings (batch size, layer names): user errors.
        try:
            return _run_verb(args, analyses, flags)
        except (ValueError, KeyError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(str(err).strip("'\"")) from err

    return run


def _run_verb(
    args: argparse.Namespace, analyses: list[Analysis], flags: dict[str, ConfigFlags]
) -> int:
    from cnnvit.analyze.run import run_analysis  # runs the models: imports torch

    chosen = [a for a in analyses if not getattr(args, "only", None) or a.name in args.only]
    inputs = _inputs(args)
    out = Path(args.out) if args.out else Path("runs") / "analysis" / args.command
    for item in chosen:
        options = item.options.model_validate(flags[item.name].values(args))
        folder = AnalysisFolder(out / item.name if len(analyses) > 1 else out, item.name)
        result = run_analysis(item, inputs, folder, options)
        if len(analyses) == 1:
            _print_headlines(result)
        console.print(f"wrote {folder.path}/: {', '.join(folder.files())}", highlight=False)
    return 0


def _print_headlines(result: dict[str, Any]) -> None:
    """The per-model headline numbers (scalars only) as JSON on stdout."""
    models = result.get("models")
    if isinstance(models, list):
        rows = {
            str(m.get("label")): {
                k: v for k, v in m.items() if isinstance(v, (int, float, str)) and k != "label"
            }
            for m in models
            if isinstance(m, dict)
        }
        print(json.dumps(rows, indent=2))


# --- the models and images of a command -----------------------------------------------------


def _inputs(args: argparse.Namespace) -> Any:
    from cnnvit.analyze.inputs import Inputs  # builds models: imports torch

    _check_subjects(args)
    # --data's images are cut at the first model's input size, so the loader reads the models.
    inputs = Inputs(
        lambda: _subjects(args),
        lambda split, count: _images(args, inputs.subjects[0].image_size, split, count),
        progress=not args.no_progress,
    )
    return inputs


def _check_subjects(args: argparse.Namespace) -> None:
    if not args.runs and not args.models:
        raise ConfigError("give run folders, or --model NAME (with --weights FILE or --pretrained)")
    if args.weights and len(args.weights) != len(args.models):
        raise ConfigError(
            f"{len(args.weights)} --weights for {len(args.models)} --model: give one per model"
        )
    if args.models and not (args.weights or args.pretrained):
        raise ConfigError("--model needs --weights FILE (one per model) or --pretrained")
    if args.models and not args.data and args.num_classes is None:
        raise ConfigError("--model needs --data (its classes and images) or --num-classes")


def _subjects(args: argparse.Namespace) -> list:
    """Subjects for the run folders and --model names, with unique labels."""
    from cnnvit.analyze.subject import subject_from_name, subject_from_run
    from cnnvit.models.weights import Preprocessing

    device = getattr(args, "device", "auto")
    subjects = [subject_from_run(run, device=device) for run in args.runs]
    if len({s.label for s in subjects}) < len(subjects):  # two runs of one model
        for subject, run in zip(subjects, args.runs, strict=True):
            subject.label = f"{subject.label} ({run.resolve().name})"
    classes = _model_classes(args) if args.models else None
    for i, name in enumerate(args.models):
        weights = args.weights[i] if args.weights else None
        subject = subject_from_name(
            name,
            classes=classes if args.data else _recorded_classes(weights, classes),
            weights=weights,
            pretrained=args.pretrained,
            image_size=args.image_size,
            device=device,
        )
        used = Preprocessing(subject.image_size, subject.channels, subject.mean, subject.std)
        console.print(
            f"{subject.label} preprocessing: {used.describe()} (from {subject.preprocessing_from})",
            highlight=False,
        )
        subjects.append(subject)
    return subjects


def _recorded_classes(weights: Path | None, classes: list[str] | None) -> list[str] | None:
    """Without --data: None (the classes the weights file records) where it records them,
    else ``classes`` (--num-classes')."""
    from cnnvit.models.weights import read_preprocessing

    prep = read_preprocessing(weights) if weights is not None else None
    return None if prep is not None and prep.class_names is not None else classes


def _model_classes(args: argparse.Namespace) -> list[str]:
    from cnnvit.data.readers import read_dataset
    from cnnvit.evaluate.classify import class_names_for

    if args.num_classes is not None:
        return class_names_for(args.num_classes)
    return [str(c) for c in read_dataset(args.data, download=False).classes]


def _images(args: argparse.Namespace, size: int, split: str, count: int | None) -> Any:
    """A command's images: --data's split at ``size``, or the first run folder's own."""
    from cnnvit.analyze.images import images_from_run, images_from_spec

    if args.data:
        return images_from_spec(args.data, split, image_size=size, max_images=count)
    if not args.runs:
        raise ConfigError("give --data: --model has no images of its own")
    return images_from_run(args.runs[0], split, max_images=count)


# --- classify --cam ---------------------------------------------------------------------------


def write_classify_cams(
    paths: Sequence[Path], models: list, class_names: dict[str, list[str]], out: Path, method: str
) -> Path:
    """Each model's Grad-CAM (last layer, its predicted class) for each image, side by side."""
    import numpy as np
    import torch

    from cnnvit.analyze.analyses.gradcam import cam_figure
    from cnnvit.analyze.images import ImageSet
    from cnnvit.analyze.subject import Subject
    from cnnvit.data.decode import load_uint8
    from cnnvit.models import model_family
    from cnnvit.plotting import save_png

    subjects = [
        Subject(
            label=m.label,
            model=m.model,
            family=model_family(m.model),
            classes=class_names[m.label],
            image_size=m.preprocess.size,
            channels=m.preprocess.channels,
            mean=m.preprocess.mean,
            std=m.preprocess.std,
            device=next(m.model.parameters()).device,
        )
        for m in models
    ]
    size = max(s.image_size for s in subjects)
    pixels = np.stack([load_uint8(p, size) for p in paths])  # (n, S, S, 3)
    images = ImageSet(
        torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(),
        torch.full((len(paths),), -1, dtype=torch.int64),  # unknown labels
        subjects[0].classes,
        "classify",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(cam_figure(subjects, images, method=method), out)
    return out
