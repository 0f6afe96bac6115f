"""The analysis commands of ``cnnvit``: explain, similarity, knn, shape-bias, robustness.

Each works on run folders (their trained model, preprocessing and validation images) or on
model names with weights and a ``--data`` spec, and writes the same folder a study's
``analysis/<name>/`` holds, so ``cnnvit report`` shows it when it lies inside a study.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnvit.config import ConfigError

# --- inputs shared by every analysis command -----------------------------------------------------


def add_subject_options(p: argparse.ArgumentParser, *, images: int | None) -> None:
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
        "validation split)",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        help="classes of --model's weights (default: the --data classes)",
    )
    p.add_argument("--image-size", type=int, help="input side for --model (default: its own)")
    if images is not None:
        p.add_argument(
            "--images",
            type=int,
            default=images,
            help=f"validation images to use (stratified; default {images})",
        )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def load_subjects(args: argparse.Namespace) -> list:
    """Subjects for the run folders and --model names of a command, with unique labels."""
    from cnnvit.analyze.subject import subject_from_name, subject_from_run

    if not args.runs and not args.models:
        raise ConfigError("give run folders, or --model NAME (with --weights FILE or --pretrained)")
    if args.weights and len(args.weights) != len(args.models):
        raise ConfigError(
            f"{len(args.weights)} --weights for {len(args.models)} --model: give one per model"
        )
    if args.models and not (args.weights or args.pretrained):
        raise ConfigError("--model needs --weights FILE (one per model) or --pretrained")
    subjects = [subject_from_run(run, device=args.device) for run in args.runs]
    if len({s.label for s in subjects}) < len(subjects):  # two runs of one model
        for subject, run in zip(subjects, args.runs, strict=True):
            subject.label = f"{subject.label} ({run.resolve().name})"
    classes = _model_classes(args) if args.models else None
    for i, name in enumerate(args.models):
        subjects.append(
            subject_from_name(
                name,
                classes=classes,
                weights=args.weights[i] if args.weights else None,
                pretrained=args.pretrained,
                image_size=args.image_size,
                device=args.device,
            )
        )
    labels = [s.label for s in subjects]
    if len(set(labels)) < len(labels):
        raise ConfigError(f"two models share a label: {labels}")
    return subjects


def _model_classes(args: argparse.Namespace) -> list[str]:
    from cnnvit.data.readers import read_dataset
    from cnnvit.evaluate.classify import class_names_for

    if args.num_classes is not None:
        return class_names_for(args.num_classes)
    if not args.data:
        raise ConfigError("--model needs --data (its classes and images) or --num-classes")
    return [str(c) for c in read_dataset(args.data, download=False).classes]


def load_images(args: argparse.Namespace, subjects: list, split: str = "val", count=None):
    """The images a command looks at: --data's split, or the first run folder's own."""
    from cnnvit.analyze.images import images_from_run, images_from_spec

    count = getattr(args, "images", None) if count is None else count
    if args.data:
        return images_from_spec(
            args.data, split, image_size=subjects[0].image_size, max_images=count
        )
    if not args.runs:
        raise ConfigError("give --data: --model has no images of its own")
    return images_from_run(args.runs[0], split, max_images=count)


def _out(args: argparse.Namespace, name: str) -> Path:
    return Path(args.out) if args.out else Path("runs") / "analysis" / name


def _wrote(folder: Path) -> None:
    from cnnvit.ui import console

    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    console.print(f"wrote {folder}/: {', '.join(files)}", highlight=False)


def _analysis_errors(func: Callable[[argparse.Namespace], int]):
    """The analyses raise ValueError for bad settings (batch size, layer names): user errors."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (ValueError, KeyError) as err:
            raise ConfigError(str(err).strip("'\"")) from err

    return run


# --- the commands ------------------------------------------------------------------------------

EXPLAIN_PARTS = ("gradcam", "attention", "featuremaps")


@_analysis_errors
def cmd_explain(args: argparse.Namespace) -> int:
    subjects = load_subjects(args)
    images = load_images(args, subjects)
    parts = args.only or list(EXPLAIN_PARTS)
    out = _out(args, "explain")
    progress = not args.no_progress
    if "gradcam" in parts:
        from cnnvit.analyze.cam import run_gradcam

        run_gradcam(
            subjects,
            images,
            out / "gradcam",
            method=args.method,
            layers=args.layers,
            num_images=args.num_images,
            target=args.target,
            progress=progress,
        )
        _wrote(out / "gradcam")
    if "attention" in parts:
        from cnnvit.analyze.attention import run_attention

        run_attention(subjects, images, out / "attention", progress=progress)
        _wrote(out / "attention")
    if "featuremaps" in parts:
        from cnnvit.analyze.featuremaps import run_featuremaps

        run_featuremaps(subjects, images, out / "featuremaps", progress=progress)
        _wrote(out / "featuremaps")
    return 0


@_analysis_errors
def cmd_similarity(args: argparse.Namespace) -> int:
    from cnnvit.analyze.cka import run_cka

    subjects = load_subjects(args)
    images = load_images(args, subjects)
    out = _out(args, "similarity")
    result = run_cka(
        subjects,
        images,
        out,
        layers=args.layers,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    return _finish(result, out)


@_analysis_errors
def cmd_knn(args: argparse.Namespace) -> int:
    from cnnvit.analyze.knn import run_knn

    subjects = load_subjects(args)
    queries = load_images(args, subjects)
    index = load_images(args, subjects, "train", count=args.index_images)
    out = _out(args, "knn")
    result = run_knn(
        subjects,
        index,
        queries,
        out,
        ks=tuple(args.k),
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    return _finish(result, out)


@_analysis_errors
def cmd_shape_bias(args: argparse.Namespace) -> int:
    from cnnvit.analyze.cue_conflict import run_shape_bias

    subjects = load_subjects(args)
    images = None if args.folder else load_images(args, subjects)
    out = _out(args, "shape_bias")
    result = run_shape_bias(
        subjects,
        images,
        out,
        folder=args.folder,
        num_images=args.num_images,
        progress=not args.no_progress,
    )
    return _finish(result, out)


@_analysis_errors
def cmd_robustness(args: argparse.Namespace) -> int:
    from cnnvit.analyze.robustness import run_robustness

    subjects = load_subjects(args)
    images = load_images(args, subjects)
    out = _out(args, "robustness")
    result = run_robustness(
        subjects,
        images,
        out,
        corruptions=args.corruption or None,
        severities=tuple(args.severities),
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    return _finish(result, out)


def _finish(result: dict[str, Any], out: Path) -> int:
    """Print the per-model headline numbers (scalars only) as JSON on stdout, then the files."""
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
    _wrote(out)
    return 0


def add_analysis_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="Grad-CAM at every depth, ViT attention maps and attention distance, CNN feature "
        "maps, for run folders or models",
    )
    add_subject_options(p, images=256)
    p.add_argument(
        "--only",
        action="append",
        choices=EXPLAIN_PARTS,
        help="run only this part (repeatable; default all three)",
    )
    p.add_argument(
        "--method",
        default="gradcam",
        choices=["gradcam", "gradcam++", "scorecam", "eigencam", "layercam"],
    )
    p.add_argument(
        "--layers",
        default="stages",
        help="CNN: stages (default) or blocks (every residual block); ViTs: every block",
    )
    p.add_argument("--num-images", type=int, default=8, help="rows of the Grad-CAM grids")
    p.add_argument(
        "--target",
        choices=["label", "predicted"],
        default="label",
        help="the class whose evidence the CAM shows (default: the true label)",
    )
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "similarity",
        help="CKA between every pair of layers of two models (and each with itself)",
    )
    add_subject_options(p, images=1000)
    p.add_argument(
        "--layers",
        default="blocks",
        choices=["stages", "blocks", "all"],
        help="blocks (default), stages, or all (every conv, linear, norm and activation layer)",
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="minibatch size, at least 4 (default 64)"
    )
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser(
        "knn",
        help="k-nearest-neighbour retrieval on penultimate features: training images as the "
        "index, validation images as queries",
    )
    add_subject_options(p, images=None)
    p.add_argument("--index-images", type=int, help="training images in the index (default all)")
    p.add_argument("--k", type=int, nargs="+", default=[1, 5, 20])
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=cmd_knn)

    p = sub.add_parser(
        "shape-bias",
        help="shape versus texture on cue-conflict images (generated from the data, or a "
        "model-vs-human folder)",
    )
    add_subject_options(p, images=None)
    p.add_argument(
        "--folder",
        type=Path,
        help="cue-conflict images in model-vs-human's layout <shape>/<shape><n>-<texture><m>.png",
    )
    p.add_argument("--num-images", type=int, default=200, help="generated cue-conflict images")
    p.set_defaults(func=cmd_shape_bias)

    p = sub.add_parser(
        "robustness",
        help="accuracy under noise, blur, contrast, brightness, JPEG, pixelation and rotation "
        "at five severities",
    )
    add_subject_options(p, images=500)
    p.add_argument("--corruption", action="append", help="only this corruption (repeatable)")
    p.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=cmd_robustness)


# --- classify --cam ------------------------------------------------------------------------------


def write_classify_cams(
    paths: list[Path], models: list, class_names: dict[str, list[str]], out: Path, method: str
) -> Path:
    """Each model's Grad-CAM (last layer, its predicted class) for each image, side by side."""
    import numpy as np
    import torch

    from cnnvit.analyze.cam import cam_figure
    from cnnvit.analyze.images import ImageSet
    from cnnvit.analyze.subject import Subject
    from cnnvit.data.decode import load_uint8
    from cnnvit.models.registry import model_family
    from cnnvit.plotting import save_png

    subjects = [
        Subject(
            label=m.label,
            model=m.model,
            family=model_family(m.model),
            classes=class_names[m.label],
            image_size=m.preprocess.size,
            channels=3,
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
