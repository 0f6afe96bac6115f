"""The ``cnnvit`` command: parse arguments, call one library function per verb, report errors."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from cnnvit.cli_analyze import add_analysis_commands
from cnnvit.config import ConfigError, load_run_config

# Flags that are shortcuts for config keys; everything else goes through --set.
SHORTCUTS = {
    "data": "data.spec",
    "model": "model.name",
    "out": "output.dir",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "seed": "train.seed",
    "device": "train.device",
}


def _add_set_option(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override any config key, e.g. --set {example} (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_run_options(p: argparse.ArgumentParser, *, model_option: bool = True) -> None:
    p.add_argument(
        "--config", type=Path, help="YAML file with data/model/optim/train/output sections"
    )
    p.add_argument("--data", help="NAME or NAME:PATH, e.g. fashion-mnist, folder:/photos")
    if model_option:
        p.add_argument("--model", help="a cnnvit built-in or any timm model name")
    p.add_argument("--out", help="run folder")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps")
    _add_set_option(p, "optim.lr=3e-4")


def _overrides(args: argparse.Namespace) -> list[str]:
    out = [
        f"{key}={getattr(args, flag)}"
        for flag, key in SHORTCUTS.items()
        if getattr(args, flag, None) is not None
    ]
    if args.no_progress:
        out.append("train.progress=false")
    return out + list(args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from cnnvit.train.run import resume, train

    if args.resume is not None:
        results = resume(args.resume)
    else:
        from cnnvit.models import family_of_name

        results = train(load_run_config(args.config, _overrides(args), family_of=family_of_name))
    _print_results(results)
    return 0 if results["status"] == "completed" else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cnnvit.evaluate.run import evaluate_config, evaluate_run
    from cnnvit.models.registry import load_weights_file
    from cnnvit.train.run import default_run_dir

    if args.pretrained or len(args.models) > 1:
        return _evaluate_models(args)
    args.model = args.models[0] if args.models else None
    if len(args.weights) > 1:
        raise ConfigError("one --weights file per --model")
    args.weights = args.weights[0] if args.weights else None
    if args.run_dir is not None:
        metrics = evaluate_run(args.run_dir)
        out = args.run_dir
    else:
        if not (args.model and args.weights):
            raise ConfigError(
                "give a run folder (cnnvit evaluate DIR) or --model, --weights and --data"
            )
        from cnnvit.models import family_of_name

        cfg = load_run_config(args.config, _overrides(args), family_of=family_of_name)
        out = cfg.output.dir or default_run_dir(cfg)
        metrics = evaluate_config(cfg, load_weights_file(args.weights), out)
    summary = {k: metrics[k] for k in ("num_images", "top1", "top5")}
    summary["macro_f1"] = metrics["macro"]["f1"]
    print(json.dumps(summary, indent=2))
    print(
        f"wrote {Path(out) / 'metrics.json'} and {Path(out) / 'predictions.parquet'}",
        file=sys.stderr,
    )
    return 0


def _evaluate_models(args: argparse.Namespace) -> int:
    """Several models (or published weights) in one batched pass, each with its own timm eval
    preprocessing; results per model under --out."""
    from cnnvit.data.readers import read_dataset
    from cnnvit.evaluate.inference import EvalModel, evaluate_models, evaluation_split
    from cnnvit.models.registry import create_model
    from cnnvit.ui import console

    if not args.models or not args.data:
        raise ConfigError("give --model (one or more) and --data")
    if args.weights and len(args.weights) != len(args.models):
        raise ConfigError(
            f"{len(args.weights)} --weights for {len(args.models)} --model: give one per model"
        )
    splits = read_dataset(args.data)
    source = evaluation_split(splits)
    models = []
    for i, name in enumerate(args.models):
        weights = args.weights[i] if args.weights else None
        model = create_model(
            name, num_classes=len(splits.classes), pretrained=weights is None, weights=weights
        )
        models.append(EvalModel.of(name, model))
    out = Path(args.out or Path("runs") / "evaluate")
    summary = evaluate_models(
        models,
        source,
        splits.classes,
        out,
        batch_size=args.batch_size or 64,
        num_workers=args.num_workers,
        device=args.device or "auto",
        precision=args.dtype,
        channels_last=args.channels_last,
        progress=not args.no_progress,
    )
    for r in summary["models"]:
        t = r["ms_per_image"]
        console.print(
            f"{r['label']}: top-1 {100 * r['top1']:.2f} %  top-5 {100 * r['top5']:.2f} %  "
            f"forward {t['forward']:.2f} ms/img  preprocess {t['preprocess']:.2f}  "
            f"postprocess {t['postprocess']:.2f}"
        )
    console.print(
        f"{summary['num_images']:,} images, {summary['images_per_second']:.1f} img/s on "
        f"{summary['device']} ({summary['dtype']}, batch {summary['batch_size']}); decode "
        f"{summary['decode_ms_per_image']:.2f} + crop {summary['crop_ms_per_image']:.2f} ms/img "
        f"in {summary['num_workers']} workers; wrote {out / 'evaluation.json'}"
    )
    print(
        json.dumps({r["label"]: {"top1": r["top1"], "top5": r["top5"]} for r in summary["models"]})
    )
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from rich.table import Table

    from cnnvit.evaluate.classify import class_names_for, classify_images
    from cnnvit.evaluate.inference import EvalModel
    from cnnvit.models.hf_vit import hf_vit_class_names
    from cnnvit.models.registry import create_model
    from cnnvit.ui import console

    if args.weights and len(args.weights) != len(args.models):
        raise ConfigError(
            f"{len(args.weights)} --weights for {len(args.models)} --model: give one per model"
        )
    models, names = [], {}
    for i, name in enumerate(args.models):
        weights = args.weights[i] if args.weights else None
        num_classes = args.num_classes
        folder_names = hf_vit_class_names(weights) if weights and weights.is_dir() else None
        if folder_names is not None:
            num_classes = len(folder_names)
        model = create_model(
            name, num_classes=num_classes, pretrained=weights is None, weights=weights
        )
        models.append(EvalModel.of(name, model))
        names[name] = class_names_for(model.num_classes, folder_names)
    for image in args.images:
        if not image.is_file():
            raise FileNotFoundError(f"image not found: {image}")
    predictions = classify_images(args.images, models, names, device=args.device or "auto")
    for image in args.images:
        table = Table(title=str(image))
        for column in ("model", "top-5 (probability)", "forward ms (median, min-max)"):
            table.add_column(column)
        for p in (p for p in predictions if p.image == str(image)):
            top = "\n".join(
                f"{label}  {prob:.3f}" for label, prob in zip(p.labels, p.probs, strict=True)
            )
            lo, hi = p.forward_ms_spread
            table.add_row(p.model, top, f"{p.forward_ms:.2f} ({lo:.2f}-{hi:.2f})")
        console.print(table)
    if args.json:
        rows = [vars(p) for p in predictions]
        args.json.write_text(json.dumps(rows, indent=2))
    if args.cam:
        from cnnvit.cli_analyze import write_classify_cams

        path = write_classify_cams(args.images, models, names, args.cam, args.cam_method)
        console.print(f"wrote {path}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from cnnvit.profile import profile_model, profile_run, profile_table, write_profiles_json
    from cnnvit.ui import at_least_width, console

    if not args.models and not args.run_dirs:
        raise ConfigError("give --model NAME (repeatable) or run folders to profile")
    options = dict(
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        channels_last=args.channels_last,
        compile=args.compile,
        sizes=args.sizes,
        threads=args.threads,
        train=not args.no_train,
        progress=not args.no_progress,
    )
    profiles = [
        profile_model(name, image_size=args.image_size or 224, **options) for name in args.models
    ]
    for run_dir in args.run_dirs:
        if args.image_size:
            options["image_size"] = args.image_size
        profiles.append(profile_run(run_dir, **options))
    with at_least_width(170):  # 13 columns
        console.print(profile_table(profiles))
    if args.json:
        write_profiles_json(profiles, args.json)
        console.print(f"wrote {args.json}")
    return 0


def cmd_agree(args: argparse.Namespace) -> int:
    from cnnvit.evaluate.run_agreement import agree_runs
    from cnnvit.ui import console

    names = tuple(args.names) if args.names else None
    agreement = agree_runs(args.run_a, args.run_b, args.out, names, alpha=args.alpha)
    for line in agreement.summary():
        console.print(line, markup=False, highlight=False)
    if args.out:
        console.print(f"wrote {args.out}/agreement.json and per_class_agreement.csv")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import torch

    from cnnvit.data.readers import check_spec
    from cnnvit.report import print_summary, write_report
    from cnnvit.study.config import load_studies
    from cnnvit.study.run import run_study
    from cnnvit.ui import console

    overrides = list(args.overrides)
    if args.no_progress:
        overrides.append("recipe.train.progress=false")
    studies = load_studies(args.study, overrides, cuda=torch.cuda.is_available())
    for study in studies:  # a missing data folder stops here, not once per cell
        check_spec(study.data.spec)
    failed = []
    for study in studies:
        if len(studies) == 1:
            out = args.out or Path("runs") / study.name
        else:  # one folder per study, side by side
            out = (args.out or Path("runs") / args.study.stem) / study.name
        outcomes = run_study(study, out, command=args.command_line, progress=not args.no_progress)
        write_report(out)
        print_summary(out, console)  # ends with the report's path
        failed += [f"{study.name}/{o.cell.id}" for o in outcomes if o.status == "failed"]
    if failed:
        console.print(f"[red]{len(failed)} cell(s) failed:[/] {', '.join(failed)}")
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from cnnvit.report import print_summary, write_report
    from cnnvit.ui import console

    if not (args.study_dir / "study.json").is_file():
        raise FileNotFoundError(f"{args.study_dir} is not a study folder (no study.json)")
    write_report(args.study_dir)
    print_summary(args.study_dir, console)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import timm

    from cnnvit.models.registry import describe_builtin_models

    if args.all:
        print("\n".join(timm.list_models(args.filter or "*")))
        return 0
    from rich.table import Table

    from cnnvit.ui import console

    table = Table(title="cnnvit built-in models (parameters with 10 classes, 3 channels)")
    for column in ("name", "family", "parameters", "from"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    for row in describe_builtin_models():
        table.add_row(row["name"], row["family"], f"{row['params']:,}", row["description"])
    console.print(table)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from rich.table import Table

    from cnnvit.presets import describe_presets
    from cnnvit.ui import console

    table = Table(title="recipe presets (preset: NAME in a run config, recipe.preset in a study)")
    for column in ("name", "reproduces", "sets", "not reproduced"):
        table.add_column(column)
    for row in describe_presets():
        table.add_row(row["name"], row["reproduces"], row["settings"], row["not_covered"] or "-")
    console.print(table)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from cnnvit.data.readers import KNOWN_DATASETS

    print("\n".join(KNOWN_DATASETS))
    return 0


def _print_results(results: dict) -> None:
    from cnnvit.ui import console

    keys = [
        "status",
        "model",
        "data",
        "epochs_completed",
        "best_val_acc",
        "final_top1",
        "final_top5",
        "macro_f1",
        "mean_epoch_seconds",
        "peak_memory_mb",
        "params_total",
        "skipped_files",
        "error",
    ]
    for key in keys:
        if key in results:
            value = results[key]
            console.print(
                f"{key:>20}: {value:.4f}" if isinstance(value, float) else f"{key:>20}: {value}"
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnvit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model on one dataset into a run folder")
    _add_run_options(p)
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="metrics.json + predictions.parquet for a run, a weights file, or several models",
    )
    p.add_argument("run_dir", nargs="?", type=Path, help="a run folder written by `cnnvit train`")
    _add_run_options(p, model_option=False)
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        default=[],
        help="a model name; repeat it to evaluate several models in one pass over the data",
    )
    p.add_argument(
        "--weights",
        type=Path,
        action="append",
        default=[],
        help="weights file (.safetensors) per --model, in the same order",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="published weights with each model's own preprocessing (timm's validate), e.g. "
        "--model resnet50 --model vit_base_patch16_224 --data imagenet-val:PATH",
    )
    p.add_argument("--num-workers", type=int, default=2, help="decoding workers (default 2)")
    p.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto: bf16 autocast on CUDA, fp32 elsewhere (bf16 also pays off on CPUs with "
        "AVX512-BF16 or AMX)",
    )
    p.add_argument(
        "--channels-last",
        choices=["auto", "on", "off"],
        default="auto",
        help="auto: on for CUDA (on also speeds up CNNs at 224 px on recent CPUs)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("classify", help="top-5 of each model for some images, with timing")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model", dest="models", action="append", required=True, help="repeatable")
    p.add_argument(
        "--weights",
        type=Path,
        action="append",
        default=[],
        help="a weights file (or Hugging Face ViT folder) per --model; default: published weights",
    )
    p.add_argument(
        "--num-classes", type=int, default=1000, help="classes of the weights (default 1000)"
    )
    p.add_argument("--device", help="auto, cpu, cuda")
    p.add_argument("--json", type=Path, help="also write the predictions as JSON")
    p.add_argument(
        "--cam",
        type=Path,
        metavar="PNG",
        help="also write each model's Grad-CAM for its top class, side by side, to this PNG",
    )
    p.add_argument(
        "--cam-method",
        default="gradcam",
        choices=["gradcam", "gradcam++", "scorecam", "eigencam", "layercam"],
    )
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser(
        "profile", help="parameters, MACs, latency, throughput, memory and load time of models"
    )
    p.add_argument("run_dirs", nargs="*", type=Path, help="run folders (their model and weights)")
    p.add_argument("--model", dest="models", action="append", default=[], help="repeatable")
    p.add_argument(
        "--image-size", type=int, help="input side in pixels (default 224; runs: theirs)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="for throughput (default 32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile; its time is reported")
    p.add_argument(
        "--sizes",
        type=lambda text: [int(v) for v in text.split(",")],
        help="image-size sweep, e.g. 32,64,128,224,384",
    )
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--no-train", action="store_true", help="skip the training-step measurement")
    p.add_argument("--json", type=Path, help="write the profiles as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "agree", help="agreement statistics of two evaluated runs on the same images"
    )
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--out", type=Path, help="write agreement.json, CSV and the grid of images here")
    p.add_argument("--names", nargs=2, metavar=("A", "B"), help="names for the two models")
    p.add_argument("--alpha", type=float, default=0.05, help="test level (default 0.05)")
    p.set_defaults(func=cmd_agree)

    add_analysis_commands(sub)

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
    _add_set_option(p, "recipe.train.epochs=3")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="rebuild a study's report from its run folders")
    p.add_argument("study_dir", type=Path)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("models", help="list the built-in models (--all: every timm model)")
    p.add_argument("--all", action="store_true")
    p.add_argument("--filter", help="wildcard for --all, e.g. 'vit_*'")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("recipes", help="list the seed recipe presets and what they set")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("datasets", help="list the dataset names --data accepts")
    p.set_defaults(func=cmd_datasets)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from cnnvit.data.types import DataError
    from cnnvit.evaluate.agreement import AgreementError
    from cnnvit.models.registry import ModelError
    from cnnvit.runtime import RuntimeSettingError

    return (
        ConfigError,
        DataError,
        ModelError,
        AgreementError,
        FileNotFoundError,
        RuntimeSettingError,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["cnnvit", *argv])
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except _user_errors() as err:
        print(f"cnnvit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted; every finished epoch is checkpointed: run the same `cnnvit compare` "
            "again, or `cnnvit train --resume DIR`, to continue",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
