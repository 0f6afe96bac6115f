"""The verbs on single runs and models: train, evaluate, classify, profile, agree.

Flags come from the typed configs (:mod:`cnnvit.cli.options`). Each handler imports the library
it runs inside itself, when it runs: ``cnnvit --help`` and the torch-free verbs must not pay
torch's start-up (about 4 s).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cnnvit.analyze.registry import get_analysis
from cnnvit.cli.options import ConfigFlags, add_config_flags
from cnnvit.config import (
    ConfigError,
    InferenceConfig,
    ProfileConfig,
    RunConfig,
    load_run_config,
    nested,
)
from cnnvit.ui import at_least_width, console

__all__ = ["add_commands", "add_set_option"]

# Flags that are shortcuts for run config keys; everything else goes through --set.
RUN_SHORTCUTS = {
    "--data": "data.spec",
    "--model": "model.name",
    "--out": "output.dir",
    "--epochs": "train.epochs",
    "--batch-size": "train.batch_size",
    "--lr": "optim.lr",
    "--seed": "train.seed",
    "--device": "train.device",
}
RESULT_KEYS = [
    "status",
    "model",
    "data",
    "steps_completed",
    "epochs_completed",
    "best_selection_acc",
    "test_top1",
    "test_top5",
    "test_macro_f1",
    "test_ece",
    "mean_epoch_seconds",
    "peak_memory_mb",
    "params_total",
    "skipped_files",
    "error",
]


def add_set_option(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override any config key, e.g. --set {example} (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_run_options(p: argparse.ArgumentParser, shortcuts: dict[str, str]) -> ConfigFlags:
    p.add_argument(
        "--config", type=Path, help="YAML file with data/model/optim/train/output sections"
    )
    flags = add_config_flags(p, RunConfig, shortcuts)
    add_set_option(p, "optim.lr=3e-4")
    return flags


def _run_config(args: argparse.Namespace, flags: ConfigFlags, **more: object) -> RunConfig:
    """The run config the flags describe: file < shortcuts (and ``more`` dotted keys) < --set,
    presets by family."""
    from cnnvit.models import family_of_name  # the registry imports torch and timm

    return load_run_config(
        args.config, args.overrides, values=_given(args, flags, **more), family_of=family_of_name
    )


def _given(args: argparse.Namespace, flags: ConfigFlags, **more: object) -> dict:
    """The config values the flags give, nested (not ``--set``: those are ``args.overrides``)."""
    given = flags.values(args) | more
    if args.no_progress:
        given["train.progress"] = False
    return nested(given)


# --- train ------------------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one model on one dataset into a run folder")
    flags = _add_run_options(p, {**RUN_SHORTCUTS, "--nproc": "train.nproc"})
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR")
    p.set_defaults(func=lambda args: cmd_train(args, flags))


def cmd_train(args: argparse.Namespace, flags: ConfigFlags) -> int:
    from cnnvit.api.run import train_config
    from cnnvit.train.distributed import launched_worker
    from cnnvit.train.run import resume

    if args.resume is not None:
        if args.config is not None:
            raise ConfigError("--resume continues a run with its own config; drop --config")
        results = resume(args.resume, args.overrides, values=_given(args, flags))
    else:
        results = train_config(_run_config(args, flags))
    if launched_worker():  # one of the processes `--nproc` started: the launcher reports
        return 0
    if results.get("rank"):  # one of torchrun's processes but rank 0, which reports
        return 0 if results["status"] == "completed" else 1
    for key in (k for k in RESULT_KEYS if k in results):
        value = results[key]
        console.print(
            f"{key:>20}: {value:.4f}" if isinstance(value, float) else f"{key:>20}: {value}"
        )
    return 0 if results["status"] == "completed" else 1


# --- evaluate ---------------------------------------------------------------------------------


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="metrics.json + predictions.parquet for a run, a weights file, or several models",
    )
    p.add_argument("run_dir", nargs="?", type=Path, help="a run folder written by `cnnvit train`")
    shortcuts = {k: v for k, v in RUN_SHORTCUTS.items() if k != "--model"}
    flags = _add_run_options(p, shortcuts)
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
    inference = add_config_flags(
        p, InferenceConfig, {"--num-workers": "num_workers", "--dtype": "precision"}
    )
    add_config_flags(p, InferenceConfig, {"--channels-last": "channels_last"}, into=inference)
    p.set_defaults(func=lambda args: cmd_evaluate(args, flags, inference))


def cmd_evaluate(args: argparse.Namespace, flags: ConfigFlags, inference: ConfigFlags) -> int:
    if args.pretrained or len(args.models) > 1:
        return _evaluate_models(args, inference)
    from cnnvit.evaluate.run import evaluate_run, evaluate_weights_file
    from cnnvit.train.run import default_run_dir

    if len(args.weights) > 1:
        raise ConfigError("one --weights file per --model")
    if args.run_dir is not None:
        metrics, out = evaluate_run(args.run_dir), args.run_dir
    else:
        if not (args.models and args.weights):
            raise ConfigError(
                "give a run folder (cnnvit evaluate DIR) or --model, --weights and --data"
            )
        cfg = _run_config(args, flags, **{"model.name": args.models[0]})
        out = cfg.output.dir or default_run_dir(cfg)
        evaluation = evaluate_weights_file(cfg, args.weights[0], out)
        metrics = evaluation.metrics
        print(evaluation.preprocessing, file=sys.stderr)
    summary = {k: metrics[k] for k in ("num_images", "top1", "top5")}
    summary["macro_f1"] = metrics["macro"]["f1"]
    print(json.dumps(summary, indent=2))
    print(
        f"wrote {Path(out) / 'metrics.json'} and {Path(out) / 'predictions.parquet'}",
        file=sys.stderr,
    )
    return 0


def _evaluate_models(args: argparse.Namespace, inference: ConfigFlags) -> int:
    """Several models (or published weights) in one batched pass, each with its own timm eval
    preprocessing; results per model under --out."""
    from cnnvit.data.readers import read_dataset
    from cnnvit.evaluate.inference import EvalModel, evaluate_models, evaluation_split
    from cnnvit.models import create_model
    from cnnvit.models.weights import check_class_names

    if not args.models or not getattr(args, "data__spec", None):
        raise ConfigError("give --model (one or more) and --data")
    _check_weights(args)
    given = inference.values(args)
    for key, dest in (("batch_size", "train__batch_size"), ("device", "train__device")):
        if hasattr(args, dest):  # the run shortcuts --batch-size and --device
            given[key] = getattr(args, dest)
    settings = InferenceConfig(**given)
    splits = read_dataset(args.data__spec)
    models = []
    for i, name in enumerate(args.models):
        weights = args.weights[i] if args.weights else None
        prep = _recorded_preprocessing(weights)
        check_class_names(prep, splits.classes, source=str(weights), data=args.data__spec)
        model = create_model(
            name,
            num_classes=len(splits.classes),
            pretrained=weights is None,
            weights=weights,
            **_input_of(prep),
        )
        models.append(EvalModel.of(name, model, prep, str(weights)))
    _print_preprocessing(models)
    out = Path(getattr(args, "output__dir", None) or Path("runs") / "evaluate")
    summary = evaluate_models(
        models,
        evaluation_split(splits),
        splits.classes,
        out,
        settings,
        progress=not args.no_progress,
    )
    _print_evaluation(summary, out)
    return 0


def _print_evaluation(summary: dict, out: Path) -> None:
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


def _recorded_preprocessing(weights: Path | None) -> Any:
    """The preprocessing a cnnvit weights file records (None: published or foreign weights)."""
    from cnnvit.models.weights import read_preprocessing

    return read_preprocessing(weights) if weights is not None else None


def _input_of(prep: Any) -> dict[str, int]:
    """Model arguments for the input the weights record (channels, and size for ViTs)."""
    return {} if prep is None else {"in_chans": prep.channels, "img_size": prep.image_size}


def _print_preprocessing(models: list) -> None:
    for m in models:
        print(
            f"{m.label} preprocessing: {m.preprocess.describe()} (from {m.origin})", file=sys.stderr
        )


def _check_weights(args: argparse.Namespace) -> None:
    if args.weights and len(args.weights) != len(args.models):
        raise ConfigError(
            f"{len(args.weights)} --weights for {len(args.models)} --model: give one per model"
        )


# --- classify -----------------------------------------------------------------------------------


def _add_classify(sub: argparse._SubParsersAction) -> None:
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
        "--num-classes",
        type=int,
        help="classes of the weights (default: those cnnvit weights record, else 1000)",
    )
    add_config_flags(p, RunConfig, {"--device": "train.device"})
    p.add_argument("--json", type=Path, help="also write the predictions as JSON")
    p.add_argument(
        "--cam",
        type=Path,
        metavar="PNG",
        help="also write each model's Grad-CAM for its top class, side by side, to this PNG",
    )
    add_config_flags(p, get_analysis("gradcam").options, {"--cam-method": "method"})
    p.set_defaults(func=cmd_classify)


def cmd_classify(args: argparse.Namespace) -> int:
    from rich.table import Table

    from cnnvit.cli.analyses import write_classify_cams
    from cnnvit.evaluate.classify import classify_images

    _check_weights(args)
    models, names = _classify_models(args)
    _print_preprocessing(models)
    for image in args.images:
        if not image.is_file():
            raise FileNotFoundError(f"image not found: {image}")
    device = getattr(args, "train__device", "auto")
    predictions = classify_images(args.images, models, names, device=device)
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
        args.json.write_text(json.dumps([vars(p) for p in predictions], indent=2))
    if args.cam:
        method = getattr(args, "method", "gradcam")
        console.print(f"wrote {write_classify_cams(args.images, models, names, args.cam, method)}")
    return 0


def _classify_models(args: argparse.Namespace) -> tuple[list, dict[str, list[str]]]:
    """The models of ``classify`` with their preprocessing, and each one's class names: those
    its cnnvit weights or Hugging Face folder record, else ``--num-classes`` (ImageNet's)."""
    from cnnvit.evaluate.classify import class_names_for
    from cnnvit.evaluate.inference import EvalModel
    from cnnvit.models import create_model
    from cnnvit.models.hf_vit import hf_vit_class_names

    models, names = [], {}
    for i, name in enumerate(args.models):
        weights = args.weights[i] if args.weights else None
        prep = _recorded_preprocessing(weights)
        given = hf_vit_class_names(weights) if weights and weights.is_dir() else None
        if prep is not None and prep.class_names is not None:
            given = list(prep.class_names)
        if given is not None and args.num_classes not in (None, len(given)):
            raise ConfigError(
                f"--num-classes {args.num_classes}, but {weights} has {len(given)} classes"
            )
        num_classes = len(given) if given is not None else (args.num_classes or 1000)
        model = create_model(
            name,
            num_classes=num_classes,
            pretrained=weights is None,
            weights=weights,
            **_input_of(prep),
        )
        models.append(EvalModel.of(name, model, prep, str(weights)))
        names[name] = class_names_for(model.num_classes, given)
    return models, names


# --- profile ------------------------------------------------------------------------------------


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile", help="parameters, MACs, latency, throughput, memory and load time of models"
    )
    p.add_argument("run_dirs", nargs="*", type=Path, help="run folders (their model and weights)")
    p.add_argument("--model", dest="models", action="append", default=[], help="repeatable")
    names = {f"--{n.replace('_', '-')}": n for n in ProfileConfig.model_fields}
    names["--dtype"] = names.pop("--precision")
    names["--runtime"] = names.pop("--runtimes")  # --runtime onnxruntime
    flags = add_config_flags(p, ProfileConfig, names)
    p.add_argument("--json", type=Path, help="write the profiles as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=lambda args: cmd_profile(args, flags))


def cmd_profile(args: argparse.Namespace, flags: ConfigFlags) -> int:
    from cnnvit.profile.profiler import profile_model, profile_run
    from cnnvit.profile.record import deployment_table, profile_table, write_profiles_json

    if not args.models and not args.run_dirs:
        raise ConfigError("give --model NAME (repeatable) or run folders to profile")
    config = ProfileConfig(**flags.values(args))
    progress = not args.no_progress
    profiles = [profile_model(name, config, progress=progress) for name in args.models]
    profiles += [profile_run(run_dir, config, progress=progress) for run_dir in args.run_dirs]
    with at_least_width(170):  # 13 columns
        console.print(profile_table(profiles))
        deployment = deployment_table(profiles)
        if deployment is not None:
            console.print(deployment)
    for p in profiles:  # an export ONNX Runtime could not take: the eager figures stand
        for line in (n for n in p.notes if n.startswith("deployment profile failed")):
            console.print(f"{p.model}: {line}", markup=False, highlight=False)
    if args.json:
        write_profiles_json(profiles, args.json)
        console.print(f"wrote {args.json}")
    return 0


# --- agree --------------------------------------------------------------------------------------


def _add_agree(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "agree", help="agreement statistics of two evaluated runs on the same images"
    )
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--out", type=Path, help="write agreement.json, CSV and the grid of images here")
    p.add_argument("--names", nargs=2, metavar=("A", "B"), help="names for the two models")
    p.add_argument(
        "--alpha", type=float, default=argparse.SUPPRESS, help="test level (default 0.05)"
    )
    p.set_defaults(func=cmd_agree)


def cmd_agree(args: argparse.Namespace) -> int:
    from cnnvit.evaluate.run_agreement import agree_runs

    names = tuple(args.names) if args.names else None
    level = {"alpha": args.alpha} if hasattr(args, "alpha") else {}
    agreement = agree_runs(args.run_a, args.run_b, args.out, names, **level)
    for line in agreement.summary():
        console.print(line, markup=False, highlight=False)
    if args.out:
        console.print(f"wrote {args.out}/agreement.json and per_class_agreement.csv")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    for add in (_add_train, _add_evaluate, _add_classify, _add_profile, _add_agree):
        add(sub)
