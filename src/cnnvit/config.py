"""Typed configuration: one object per concern, loaded from YAML, overridden with ``--set``.

A run is described by :class:`RunConfig` = data + model + optim + train + output. Every object
forbids unknown keys, so a typo fails loudly with the key's dotted name and the closest valid
key, instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cnnvit.errors import UserError
from cnnvit.presets import PRESETS, Preset, deep_merge

_M = TypeVar("_M", bound=BaseModel)
# model name -> "cnn" | "vit" | "hybrid" (None: unknown); cnnvit.models.family_of_name is one.
FamilyOf = Callable[[str], str | None]
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used; the message names the key."""


class StrictModel(BaseModel):
    # extra="forbid": unknown keys are errors; validate_assignment keeps overrides typed;
    # allow_inf_nan=False: no setting means anything at infinity or NaN (`optim.lr=.inf`).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class AugmentConfig(StrictModel):
    """Training-time augmentation, applied batched on the training device."""

    crop_padding: int = Field(4, ge=0, description="random crop after zero padding; 0 = off")
    hflip: bool = Field(True, description="random horizontal flip (p=0.5)")
    rotation_degrees: float = Field(0.0, ge=0, le=180, description="random rotation ±degrees")
    # Mixup / CutMix (cnnvit.data.mix): batch-level, they need the labels, so they run in the
    # training loop after this transform; validation never mixes.
    mixup_alpha: float = Field(0.0, ge=0, description="mixup Beta(α, α); 0 = off (0.8 usual)")
    cutmix_alpha: float = Field(0.0, ge=0, description="cutmix Beta(α, α); 0 = off (1.0 usual)")
    mix_prob: float = Field(1.0, ge=0, le=1, description="chance that a sample is mixed at all")
    switch_prob: float = Field(
        0.5, ge=0, le=1, description="chance of cutmix rather than mixup when both are on"
    )


class DataConfig(StrictModel):
    """Which images, which classes, how much of them, and at what size."""

    spec: str = Field("fashion-mnist", description="NAME or NAME:PATH (see `cnnvit datasets`)")
    root: Path | None = Field(None, description="data folder (default: $CNNVIT_DATA)")
    download: bool = Field(True, description="allow downloading a public dataset")
    classes: list[str] | None = Field(None, description="keep only these classes, by name")
    train_fraction: float = Field(1.0, gt=0, le=1, description="stratified, nested")
    test_fraction: float = Field(
        0.1, gt=0, lt=1, description="test split held out of train where the dataset has none"
    )
    split_seed: int = Field(0, description="seed of the training fractions (a study: the seed)")
    selection_size: float = Field(
        0.1,
        gt=0,
        description="selection split held out of the training pool (early stopping, best epoch, "
        "tuning): a fraction (< 1) or a number of images (>= 1)",
    )
    holdout_seed: int = Field(
        0,
        description="seed of the held-out splits (selection; test where the dataset has none), "
        "the same for every cell of a study",
    )
    max_test_images: int | None = Field(
        None, gt=0, description="test on a fixed stratified subset of this size; None = all"
    )
    image_size: int | None = Field(None, gt=0, description="side in pixels; None = native")
    channels: Literal[1, 3] = Field(3, description="3: grayscale is replicated to RGB")
    normalize: Literal["dataset", "imagenet", "none"] = "dataset"
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    in_memory: Literal["auto", "always", "never"] = Field(
        "auto", description="hold decoded images as one uint8 tensor on the device"
    )
    max_memory_mb: int = Field(4096, gt=0, description="'auto' keeps data in memory below this")
    num_workers: int = Field(2, ge=0, description="DataLoader workers when streaming")

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, value: Any) -> Any:
        # Configs written before the three-way split called the test split "val".
        if not isinstance(value, dict):
            return value
        value = dict(value)
        for old, new in (("max_val_images", "max_test_images"), ("val_fraction", "test_fraction")):
            if old in value:
                value.setdefault(new, value.pop(old))
        return value


class FreezeConfig(StrictModel):
    trainable_blocks: int | None = Field(
        None, ge=0, description="train only the last k blocks and the head; None = all"
    )
    also_trainable: list[str] = Field(
        default_factory=list,
        description="modules kept trainable when freezing, e.g. [conv_block] (seed 000 hybrid)",
    )


# Model arguments cnnvit derives from the data and the config, never from model.kwargs.
MODEL_ARGS_FROM_DATA = {
    "num_classes": "the dataset's classes, or data.classes",
    "in_chans": "data.channels",
    "img_size": "data.image_size",
    "pretrained": "model.pretrained",
    "weights": "model.weights",
}


class ModelConfig(StrictModel):
    name: str = Field("resnet_mini", description="a timm name or a cnnvit built-in")
    pretrained: bool = False
    weights: Path | None = Field(None, description="local weights file (.safetensors)")
    freeze: FreezeConfig = Field(default_factory=FreezeConfig)
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra model arguments")

    @field_validator("kwargs")
    @classmethod
    def _not_set_from_data(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(set(value) & set(MODEL_ARGS_FROM_DATA))
        if taken:
            instead = ", ".join(f"{k} (set by {MODEL_ARGS_FROM_DATA[k]})" for k in taken)
            raise ValueError(f"model.kwargs cannot set {instead}")
        return value


class OptimConfig(StrictModel):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(2e-3, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.05, ge=0, description="not applied to norms and biases")
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(0.5, ge=0)
    warmup_steps: int | None = Field(
        None, ge=0, description="warmup in optimiser steps; replaces warmup_epochs when set"
    )
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of lr")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm")


class RuntimeConfig(StrictModel):
    """Where and how work runs; the same words for training, evaluation, profiling and the
    analyses (:func:`cnnvit.runtime.resolve_runtime` says what each means)."""

    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 elsewhere; bf16 where supported"
    )
    channels_last: Literal["auto", "on", "off"] = Field("auto", description="auto: on for CUDA")
    compile: bool | str = Field(
        False, description="torch.compile the model: true (inductor) or a backend name"
    )
    threads: int | None = Field(None, gt=0, description="CPU threads for torch")


class BudgetConfig(StrictModel):
    """How long a run trains, and how often it scores the selection split.

    ``epochs``: ``train.epochs`` passes over the training images, scored after each. ``steps``:
    ``steps`` optimiser steps at every training size (a small training set runs more epochs),
    scored ``evaluations`` times at evenly spaced steps. ``early_stopping``: as ``steps`` (at
    most ``steps``, or ``train.epochs`` epochs when unset), stopping once ``patience``
    evaluations in a row did not beat the best selection accuracy by ``min_delta``; the best
    evaluation's weights are restored."""

    kind: Literal["epochs", "steps", "early_stopping"] = Field(
        "epochs", description="epochs, steps or early_stopping"
    )
    steps: int | None = Field(
        None, gt=0, description="optimiser steps (steps), or their maximum (early_stopping)"
    )
    evaluations: int = Field(
        20, ge=4, description="selection-split scores over the run (steps, early_stopping)"
    )
    patience: int = Field(5, gt=0, description="early_stopping: evaluations without a new best")
    min_delta: float = Field(
        0.0, ge=0, description="early_stopping: the least gain in selection accuracy that counts"
    )

    @model_validator(mode="after")
    def _steps_given(self) -> BudgetConfig:
        if self.kind == "steps" and self.steps is None:
            raise ValueError("budget kind 'steps' needs train.budget.steps (optimiser steps)")
        return self


class TrainConfig(RuntimeConfig):
    epochs: int = Field(5, gt=0, description="passes over the training images")
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    batch_size: int = Field(256, gt=0, description="training images per optimiser step")
    eval_batch_size: int = Field(512, gt=0, description="images per validation batch")
    seed: int = Field(0, description="seed of the weights, data order and augmentation")
    progress: bool = True
    ema_decay: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="keep an EMA of the weights (e.g. 0.9998) and evaluate it; None = off",
    )
    ema_warmup: bool = Field(False, description="ramp the EMA decay up from 0 (timm's warmup)")
    nproc: int = Field(
        1,
        ge=1,
        description="processes training the run together with DistributedDataParallel (one "
        "per GPU); more than 1 starts torchrun; batch_size stays the global batch",
    )
    sync_bn: bool = Field(
        False,
        description="with several processes, synchronise BatchNorm statistics across them "
        "(SyncBatchNorm, CUDA only); otherwise each normalises its share of the batch",
    )


class ProfileConfig(RuntimeConfig):
    """How to measure a model's efficiency (``cnnvit profile``, a study's ``profile:``)."""

    image_size: int | None = Field(
        None, gt=0, description="input side in pixels (None: 224 for a model name, a run's own)"
    )
    batch_size: int = Field(32, gt=0, description="batch of the throughput and training step")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "fp32", description="fp32, bf16 (autocast, where the hardware has it) or auto"
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        "off", description="model and inputs in channels_last memory format"
    )
    sizes: list[int] | None = Field(
        None, description="image-size sweep of MACs, latency and memory, e.g. 32,64,128,224,384"
    )
    train: bool = Field(True, description="time a training step (forward, backward, AdamW)")
    repeats: int | None = Field(
        None, gt=0, description="timed calls per figure (None: about target_s seconds, 5-200)"
    )
    warmup: int = Field(2, ge=0, description="untimed calls before each measurement")
    target_s: float = Field(1.0, gt=0, description="seconds of timed calls per figure")
    runtimes: list[str] = Field(
        default_factory=lambda: ["torch"],
        description="torch (eager, always measured); onnxruntime adds the model exported to "
        "ONNX, timed in ONNX Runtime on the CPU in fp32 and dynamic int8",
    )
    int8: bool = Field(
        True, description="with onnxruntime: also dynamic int8 quantisation (latency, size, top-1)"
    )

    @field_validator("runtimes")
    @classmethod
    def _known_runtimes(cls, value: list[str]) -> list[str]:
        unknown = [r for r in value if r not in PROFILE_RUNTIMES]
        if unknown:
            raise ValueError(
                f"unknown runtime {unknown[0]!r}; known runtimes: {', '.join(PROFILE_RUNTIMES)}"
            )
        return value


PROFILE_RUNTIMES = ("torch", "onnxruntime")


class InferenceConfig(RuntimeConfig):
    """Batched evaluation of several models in one pass (``cnnvit evaluate --model A --model
    B``)."""

    batch_size: int = Field(64, gt=0, description="images per batch")
    num_workers: int = Field(2, ge=0, description="decoding workers")


# The experiment trackers a run can log to (cnnvit.train.trackers); each is an optional extra.
Logger = Literal["tensorboard", "mlflow", "wandb"]


def _distinct_loggers(value: list[str]) -> list[str]:
    if len(set(value)) != len(value):
        raise ValueError(f"output.loggers names a tracker twice: {value}")
    return value


# A list of trackers, each named once (the run's and a study recipe's ``output.loggers``).
Loggers = Annotated[list[Logger], AfterValidator(_distinct_loggers)]


class OutputConfig(StrictModel):
    dir: Path | None = Field(None, description="run folder; None = runs/<model>-<data>-<time>")
    checkpoint: bool = Field(True, description="write a checkpoint after every epoch")
    loggers: Loggers = Field(
        default_factory=list,
        description="experiment trackers to log to: tensorboard, mlflow, wandb (each an extra: "
        "pip install 'cnnvit[tensorboard]')",
    )
    tracker_group: str | None = Field(
        None,
        description="MLflow experiment and W&B group of the run (a study sets its name); "
        "None = MLflow experiment 'cnnvit', no W&B group",
    )
    tracker_dir: Path | None = Field(
        None,
        description="folder of the TensorBoard logs (tensorboard/) and the MLflow store "
        "(mlflow.db); None = the run folder (a study sets its own folder)",
    )


class RunConfig(StrictModel):
    """Everything one training run needs."""

    preset: str | None = Field(
        None, description="a named seed recipe under this config (see `cnnvit recipes`)"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None:
            get_preset(value)
        return value

    @model_validator(mode="after")
    def _check_combination(self) -> RunConfig:
        if self.model.pretrained and self.model.weights is not None:
            raise ValueError("set either model.pretrained or model.weights, not both")
        return self


# --- loading and overriding -------------------------------------------------------------------


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys.extend(_valid_keys(sub, dotted + "."))
    return keys


def _explain(err: ValidationError, cls: type[BaseModel]) -> ConfigError:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            same_depth = [k for k in _valid_keys(cls) if k.count(".") == key.count(".")]
            close = difflib.get_close_matches(key, same_depth, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            lines.append(f"unknown config key '{key}'{hint}")
        else:
            got = e.get("input")
            lines.append(f"config key '{key}': {e['msg']} (got {got!r})")
    return ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def validate_config(cls: type[_M], data: dict[str, Any]) -> _M:
    """Build a config object, turning pydantic's errors into messages that name the key."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise _explain(err, cls) from None


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a ConfigError naming the file."""
    documents = load_yaml_documents(path)
    if len(documents) > 1:
        raise ConfigError(f"{path} holds {len(documents)} YAML documents; expected one")
    return documents[0] if documents else {}


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every ``---``-separated document of a YAML file, each a mapping (empty ones skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    for data in documents:
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path} must hold a mapping of config sections, not {type(data).__name__}"
            )
    return documents


def nested(values: Mapping[str, Any], separator: str = ".") -> dict[str, Any]:
    """``{"train.epochs": 3}`` -> ``{"train": {"epochs": 3}}`` (keys split at ``separator``)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        *parents, last = key.split(separator)
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides; values are parsed as YAML (``3e-4``, ``[a, b]``)."""
    out = deep_merge({}, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' must look like section.key=value")
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = _parse_value(raw)
    return out


def _parse_value(raw: str) -> Any:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    # YAML reads '3e-4' as a string (it wants '3.0e-4'); numbers are what people mean.
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return float(value)
    return value


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a ConfigError listing the known ones."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"unknown preset {name!r}; {hint}known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def apply_preset(data: Mapping[str, Any], family_of: FamilyOf | None = None) -> dict[str, Any]:
    """A run config mapping with its ``preset`` (if any) filled in underneath what it sets.

    The preset's family part follows ``model.name`` (the default model when unset), named by
    ``family_of``; a preset with family parts and no ``family_of`` is refused."""
    name = data.get("preset")
    if not name:
        return dict(data)
    preset = get_preset(name)
    family = None
    if preset.by_family:
        if family_of is None:
            raise ConfigError(
                f"preset {name} sets values by model family; load the config with a family_of "
                "(cnnvit.models.family_of_name)"
            )
        model_name = (data.get("model") or {}).get("name") or ModelConfig().name
        family = family_of(model_name)
    return deep_merge(preset.layer(family), data)


def load_run_config(
    path: Path | None = None,
    overrides: list[str] | None = None,
    *,
    values: Mapping[str, Any] | None = None,
    family_of: FamilyOf | None = None,
) -> RunConfig:
    """The defaults, updated by the config's preset (if any), by a YAML file, by ``values``
    (nested, typed: what command-line shortcuts gave), by ``--set`` overrides, validated.
    ``family_of`` names model families for presets that differ by family (seed 001): pass
    :func:`cnnvit.models.family_of_name`."""
    data = load_yaml(path) if path is not None else {}
    merged = apply_overrides(deep_merge(data, values or {}), overrides or [])
    return validate_config(RunConfig, apply_preset(merged, family_of))


def read_run_config(path: Path) -> RunConfig:
    """A resolved config as a run folder keeps it (``config.yaml``): every key is written out,
    so no preset is applied again."""
    return validate_config(RunConfig, load_yaml(path))


# What ``train --resume`` may change: how the run is shown, not what it trains.
# Where a run is shown, not what it trains: a resumed run may log to other trackers.
RESUME_MAY_CHANGE = ("train.progress", "output.loggers")


def resumed_config(
    saved: RunConfig,
    overrides: list[str] | None = None,
    *,
    values: Mapping[str, Any] | None = None,
    run_dir: Path | str = "DIR",
) -> RunConfig:
    """The config a resumed run continues with: its saved one, where ``values`` and
    ``overrides`` may change only :data:`RESUME_MAY_CHANGE`. Anything else is refused: a
    resumed run replays its recipe exactly, and a longer schedule is another recipe (its
    learning rate decays over all of it), so it is a new run."""
    base = saved.model_dump(mode="json")
    wanted = validate_config(
        RunConfig, apply_overrides(deep_merge(base, values or {}), overrides or [])
    )
    after = wanted.model_dump(mode="json")
    changed = [k for k in _changed_keys(base, after) if k not in RESUME_MAY_CHANGE]
    if not changed:
        return wanted
    what = ", ".join(f"{k} ({_at(base, k)!r} -> {_at(after, k)!r})" for k in changed)
    sets = " ".join(f"--set {k}={_at(after, k)}" for k in changed if k != "output.dir")
    raise ConfigError(
        f"--resume continues {run_dir} with the config it started with and cannot change {what}; "
        f"train that as a new run: cnnvit train --config {Path(run_dir) / 'config.yaml'} "
        f"{sets} --out NEW_DIR"
    )


def _changed_keys(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "") -> list:
    keys = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def _at(data: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, Mapping) else None
    return data


def dump_yaml(config: BaseModel, path: Path) -> None:
    """Write the resolved config so that ``load_run_config(path)`` gives it back."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
