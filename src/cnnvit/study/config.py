"""A study: models × training fractions × seeds (× unfrozen depths), one shared data config and
a training recipe that each model may override in part (seed 001: Adam 1e-3 for the ResNet,
AdamW 1e-4 for the ViT).

YAML shape::

    name: fashion-mnist-small-data
    data: {spec: fashion-mnist}
    models:
      - resnet_mini
      - {name: vit_mini, optim: {lr: 1.0e-3}}
      # - {name: resnet101, pretrained: true, freeze: {trainable_blocks: 2}}
    fractions: [0.02, 0.07, 0.25]
    seeds: [0, 1]
    recipe:
      preset: null                 # or a seed recipe underneath (`cnnvit recipes`)
      optim: {name: adamw, lr: 2.0e-3}
      train: {epochs: 5, batch_size: 128}
    grid:
      trainable_blocks: [null]     # optional axis; null = everything trainable
    executor: {kind: local}        # where the cells run: local, ray or slurm (how, not what)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from cnnvit.analyze.registry import AnalysisOptions, all_analyses, get_analysis
from cnnvit.config import (
    ConfigError,
    DataConfig,
    FreezeConfig,
    Loggers,
    OptimConfig,
    ProfileConfig,
    RunConfig,
    StrictModel,
    TrainConfig,
    apply_overrides,
    get_preset,
    load_yaml,
    load_yaml_documents,
    validate_config,
)
from cnnvit.models import family_of_name
from cnnvit.presets import deep_merge


class RecipeOutput(StrictModel):
    """What every cell's run logs to, besides its run folder."""

    loggers: Loggers = Field(
        default_factory=list,
        description="experiment trackers (tensorboard, mlflow, wandb): TensorBoard logs in "
        "DIR/tensorboard/<cell>, one MLflow experiment (DIR/mlflow.db) and one W&B group, "
        "each named after the study",
    )


class Recipe(StrictModel):
    """The optimisation and training settings every cell starts from."""

    preset: str | None = Field(
        None, description="a named seed recipe under this one (see `cnnvit recipes`)"
    )
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: RecipeOutput = Field(default_factory=RecipeOutput)


class StudyModel(StrictModel):
    """One model of the study and, optionally, the recipe keys it changes."""

    name: str
    label: str | None = Field(None, description="name shown in the report; default: name")
    pretrained: bool = False
    weights: Path | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    freeze: FreezeConfig = Field(
        default_factory=FreezeConfig,
        description="this model's own unfrozen depth (seed 000: 2 for ResNet-101, 3 for ViT-B/16)"
        " and modules kept trainable ([conv_block]); grid.trainable_blocks sweeps depth instead",
    )
    optim: dict[str, Any] = Field(default_factory=dict, description="overrides of recipe.optim")
    train: dict[str, Any] = Field(default_factory=dict, description="overrides of recipe.train")

    @property
    def display(self) -> str:
        return self.label or self.name


class Grid(StrictModel):
    """Optional extra axes of the grid."""

    trainable_blocks: list[int | None] = Field(default_factory=lambda: [None])


class Tuning(StrictModel):
    """A search over each model's learning rate (and optionally weight decay), by the same
    procedure for every model: trials at one training size and seed, each a run like a cell
    (skipped when done, resumable), scored by its best selection-split accuracy; every cell then
    trains with its model's best setting. A grid of ``lr`` × ``weight_decay``, or with
    ``trials`` an Optuna TPE search over their ranges (log-uniform)."""

    enabled: bool = Field(False, description="search each model's recipe before the cells")
    fraction: float | None = Field(
        None, gt=0, le=1, description="training size of the trials; null = the smallest"
    )
    seed: int | None = Field(None, description="seed of the trials; null = the first")
    lr: list[float] = Field(
        default_factory=lambda: [3e-4, 1e-3, 3e-3],
        min_length=1,
        description="learning rates tried (a grid), or their range (trials)",
    )
    weight_decay: list[float] | None = Field(
        None, description="weight decays tried with each rate; null = the recipe's"
    )
    trials: int | None = Field(
        None, gt=1, description="Optuna TPE trials per model instead of the grid; null = grid"
    )

    @field_validator("lr", "weight_decay")
    @classmethod
    def _positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or any(v < 0 for v in value)):
            raise ValueError(f"must list at least one value, none negative; got {value}")
        return value


class StudyProfile(ProfileConfig):
    """The efficiency profile each model gets once its cells have trained (``cnnvit profile``
    at the study's image size, plus an image-size sweep for the report's cost plot); the device
    is the cells' own unless this names one."""

    enabled: bool = True
    sizes: list[int] | None = Field(
        default_factory=lambda: [32, 64, 128, 224],
        description="image sizes of the sweep (MACs, batch-1 latency, memory); [] = none",
    )


class AnalysisSettings(StrictModel):
    """Which trained cells the analyses look at, and each analysis's options under its name
    (``cka: {batch_size: 64}``), typed by the analysis itself (:mod:`cnnvit.analyze.registry`;
    ``cnnvit <verb> --help`` lists them). Every registered analysis gets its defaults."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    fraction: float | None = Field(
        None, description="training size whose cells are analysed; null = the largest"
    )
    seed: int | None = Field(None, description="seed whose cells are analysed; null = the first")

    @model_validator(mode="before")
    @classmethod
    def _images_of_attention(cls, value: Any) -> Any:
        # Studies written before the registry set the attention distances' image count at the
        # top level (`analysis_options.images`); it is attention's own option now.
        if isinstance(value, dict) and "images" in value:
            value = dict(value)
            attention = dict(value.get("attention") or {})
            attention.setdefault("images", value.pop("images"))
            value["attention"] = attention
        return value

    @model_validator(mode="after")
    def _typed(self) -> AnalysisSettings:
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        known = {a.name: a for a in all_analyses()}
        for name in list(extra):
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise ValueError(
                    f"unknown analysis {name!r} in analysis_options; {hint}known analyses: "
                    f"{', '.join(known)}"
                )
            extra[name] = _typed_options(name, known[name].options, extra[name])
        for name, item in known.items():
            extra.setdefault(name, item.options())
        return self

    def of(self, name: str) -> AnalysisOptions:
        """The typed options of the analysis ``name``."""
        extra = self.__pydantic_extra__ or {}
        return extra[name] if name in extra else get_analysis(name).options()


def _typed_options(name: str, model: type[AnalysisOptions], value: Any) -> AnalysisOptions:
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value if value is not None else {})
    except ValidationError as err:  # the same errors, located under the analysis's name
        details = [
            {k: e[k] for k in ("type", "input", "ctx") if k in e} | {"loc": (name, *e["loc"])}
            for e in err.errors()
        ]
        raise ValidationError.from_exception_data(err.title, details) from None  # type: ignore[arg-type]


class SlurmSettings(StrictModel):
    """How ``executor.kind: slurm`` submits the cells: one SLURM job array through submitit."""

    cluster: Literal["slurm", "local", "debug"] = Field(
        "slurm",
        description="submitit's executor: slurm (sbatch), local (subprocesses of this machine, "
        "for a try-out) or debug (in this process)",
    )
    partition: str | None = Field(None, description="SLURM partition; null = the cluster's default")
    time_min: int = Field(
        60,
        gt=0,
        description="time limit of one cell's job in minutes (a cell that needs longer "
        "is requeued and resumes from its checkpoint)",
    )
    array_parallelism: int = Field(32, gt=0, description="cells of the array running at once")
    folder: Path | None = Field(
        None, description="submitit's job files and logs; null = DIR/slurm (on the shared disk)"
    )
    additional: dict[str, str | int] = Field(
        default_factory=dict,
        description="further sbatch options, e.g. {account: proj42, qos: normal}",
    )


class ExecutorSettings(StrictModel):
    """Where the cells run (``cnnvit compare --executor``): how, not what, so changing it keeps
    the trained cells. ``local`` runs them one after another in this process; ``ray`` runs each
    as a Ray task (``address``: an existing cluster, ``auto`` or ``ray://host:10001``; none: a
    Ray instance on this machine's cores); ``slurm`` submits them as a SLURM job array through
    submitit. The resources are one cell's, and its torch threads are ``cpus_per_cell`` unless
    the recipe sets ``train.threads``."""

    kind: Literal["local", "ray", "slurm"] = Field(
        "local", description="local, ray or slurm (pip install 'cnnvit[ray]' / 'cnnvit[slurm]')"
    )
    address: str | None = Field(
        None, description="ray: the cluster to join (auto, ray://HOST:10001); null = start one"
    )
    cpus_per_cell: int = Field(1, gt=0, description="CPU cores of one cell (and its threads)")
    gpus_per_cell: int = Field(0, ge=0, description="GPUs of one cell")
    memory_per_cell_mb: int | None = Field(
        None, gt=0, description="memory one cell reserves, in MiB; null = no reservation"
    )
    max_retries: int = Field(
        2, ge=0, description="new attempts of a cell whose worker died (each resumes its run)"
    )
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)

    @model_validator(mode="after")
    def _address_is_rays(self) -> ExecutorSettings:
        if self.address is not None and self.kind != "ray":
            raise ValueError(
                f"executor.address {self.address!r} is a Ray cluster's address; it needs "
                f"executor kind ray, not {self.kind}"
            )
        return self


# A study's name is a folder name (runs/<name> by default), never a path.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class StudyConfig(StrictModel):
    name: str = "study"
    data: DataConfig = Field(default_factory=DataConfig)
    models: list[StudyModel]
    fractions: list[float] = Field(default_factory=lambda: [1.0])
    seeds: list[int] = Field(default_factory=lambda: [0])
    recipe: Recipe = Field(default_factory=Recipe)
    grid: Grid = Field(default_factory=Grid)
    tuning: Tuning = Field(default_factory=Tuning)
    profile: StudyProfile = Field(default_factory=StudyProfile)
    analysis: list[str] = Field(
        default_factory=list,
        description="analyses run after training: " + ", ".join(a.name for a in all_analyses()),
    )
    analysis_options: AnalysisSettings = Field(default_factory=AnalysisSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)

    @field_validator("analysis")
    @classmethod
    def _known_analyses(cls, value: list[str]) -> list[str]:
        for name in value:
            try:
                get_analysis(name)
            except KeyError as err:  # its message names the known ones
                raise ValueError(err.args[0]) from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        value = dict(value)
        # `models: [resnet_mini, vit_mini]` is shorthand for `[{name: resnet_mini}, ...]`.
        if isinstance(value.get("models"), list):
            value["models"] = [{"name": m} if isinstance(m, str) else m for m in value["models"]]
        return _expand_preset(value)

    @field_validator("name")
    @classmethod
    def _a_name(cls, value: str) -> str:
        # It names the default output folder (runs/<name>): a path would write elsewhere.
        if not STUDY_NAME.fullmatch(value):
            raise ValueError(
                f"study name {value!r} must be a name, not a path: letters, digits, '.', '_' "
                "and '-', starting with a letter or digit (e.g. fashion-depth); choose where "
                "it is written with --out"
            )
        return value

    @field_validator("models")
    @classmethod
    def _some_models(cls, value: list[StudyModel]) -> list[StudyModel]:
        if not value:
            raise ValueError("a study compares models: list at least one, e.g. [resnet_mini]")
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        repeated = sorted({s for s in value if value.count(s) > 1})
        if repeated:
            raise ValueError(
                f"seeds {repeated} appear more than once in {value}; a seed repeated trains the "
                "same cell twice: list each seed once"
            )
        return value

    @field_validator("fractions")
    @classmethod
    def _fractions_in_range(cls, value: list[float]) -> list[float]:
        bad = [f for f in value if not 0 < f <= 1]
        if bad or not value:
            raise ValueError(f"fractions must be non-empty and in (0, 1], got {value}")
        return sorted(set(value))

    @model_validator(mode="after")
    def _labels_unique(self) -> StudyConfig:
        labels = [m.display for m in self.models]
        if len(set(labels)) != len(labels):
            raise ValueError(f"two models share a label: {labels}; give them distinct `label`s")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        swept = any(k is not None for k in self.grid.trainable_blocks)
        fixed = [m.display for m in self.models if m.freeze.trainable_blocks is not None]
        if swept and fixed:
            raise ValueError(
                f"grid.trainable_blocks sweeps the unfrozen depth, but {fixed} fix their own "
                "freeze.trainable_blocks; use one or the other"
            )
        return self


def _expand_preset(study: dict[str, Any]) -> dict[str, Any]:
    """Put ``recipe.preset`` under the study's own settings.

    The preset's data part goes under ``data``, its common optim/train parts under ``recipe``;
    its family parts (seed 001: Adam for the CNN, AdamW for the ViT) become each model's own
    overrides, for the keys that neither the study's recipe nor the model already sets. Running
    it twice gives the same study (``study.yaml`` reloads unchanged).
    """
    recipe = study.get("recipe")
    if not isinstance(recipe, dict) or not recipe.get("preset"):
        return study
    preset = get_preset(recipe["preset"])
    common = preset.layer(None)
    study["data"] = deep_merge(common.get("data", {}), study.get("data") or {})
    study["recipe"] = {
        **recipe,
        "optim": deep_merge(common.get("optim", {}), recipe.get("optim") or {}),
        "train": deep_merge(common.get("train", {}), recipe.get("train") or {}),
    }
    if not preset.by_family or not isinstance(study.get("models"), list):
        return study
    models = []
    for model in study["models"]:
        if not isinstance(model, dict) or "name" not in model:
            models.append(model)
            continue
        part = preset.by_family.get(family_of_name(model["name"]) or "", {})
        model = dict(model)
        for section in ("optim", "train"):
            own = dict(model.get(section) or {})
            for key, val in part.get(section, {}).items():
                if key not in (recipe.get(section) or {}):
                    own.setdefault(key, val)
            if own:
                model[section] = own
        models.append(model)
    study["models"] = models
    return study


@dataclass(frozen=True)
class Cell:
    """One point of the grid and the run config that trains it."""

    model: str  # the model's display label
    fraction: float
    seed: int
    trainable_blocks: int | None
    config: RunConfig

    @property
    def id(self) -> str:
        """A folder name: the label with anything but letters, digits and ._+- replaced."""
        depth = "" if self.trainable_blocks is None else f"-k{self.trainable_blocks}"
        label = re.sub(r"[^A-Za-z0-9._+-]", "_", self.model)
        return f"{label}-f{self.fraction:g}{depth}-s{self.seed}"


# A model's tuned recipe keys (``{"lr": 1e-3, "weight_decay": 0.05}``), by display label.
Tuned = Mapping[str, Mapping[str, float]]


def cells(study: StudyConfig, out_dir: Path, tuned: Tuned | None = None) -> list[Cell]:
    """Every cell of the grid, in run order: fraction, then seed, then depth, then model; with
    ``tuned``, each model's optimiser keys set to its tuned values.

    Running all models at a size before moving to the next gives a complete comparison early,
    so an interrupted study still reports something useful.
    """
    out = []
    tuned = tuned or {}
    for fraction in study.fractions:
        for seed in study.seeds:
            for depth in study.grid.trainable_blocks:
                for model in study.models:
                    optim = tuned.get(model.display)
                    cfg = cell_config(study, model, fraction, seed, depth, optim)
                    cell = Cell(model.display, fraction, seed, depth, cfg)
                    cfg.output.dir = out_dir / "runs" / cell.id
                    _log_as_cell(cfg, study, out_dir)
                    out.append(cell)
    ids = [c.id for c in out]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"model labels {[m.display for m in study.models]} give clashing folders")
    return out


def _log_as_cell(cfg: RunConfig, study: StudyConfig, out_dir: Path) -> None:
    """The cell logs to the study's trackers, grouped by the study (tuning trials do not)."""
    cfg.output.loggers = list(study.recipe.output.loggers)
    cfg.output.tracker_group = study.name
    cfg.output.tracker_dir = out_dir


def cell_config(
    study: StudyConfig,
    model: StudyModel,
    fraction: float,
    seed: int,
    depth: int | None,
    optim: Mapping[str, float] | None = None,
) -> RunConfig:
    """The RunConfig of one cell: shared recipe + the model's overrides + the grid point (+
    ``optim`` keys, a tuned or tried setting).

    ``data.split_seed`` follows the seed, so each seed draws its own (nested) subsets; the
    held-out selection and test splits follow ``data.holdout_seed`` and are the same in every
    cell.
    """
    base = {
        "preset": study.recipe.preset,  # recorded; its values are already in the recipe
        "data": study.data.model_dump(mode="json"),
        "model": {
            "name": model.name,
            "pretrained": model.pretrained,
            "weights": str(model.weights) if model.weights else None,
            "kwargs": model.kwargs,
            "freeze": {
                "trainable_blocks": depth if depth is not None else model.freeze.trainable_blocks,
                "also_trainable": model.freeze.also_trainable,
            },
        },
        "optim": study.recipe.optim.model_dump(mode="json"),
        "train": study.recipe.train.model_dump(mode="json"),
    }
    own = {"optim": model.optim, "train": model.train}
    point = {
        "data": {"train_fraction": fraction, "split_seed": seed},
        "optim": dict(optim or {}),
        "train": {"seed": seed},
    }
    try:
        return validate_config(RunConfig, deep_merge(deep_merge(base, own), point))
    except ConfigError as err:
        raise ConfigError(f"model {model.display}: {err}") from None


def default_study_path(cuda: bool) -> Path:
    """The built-in default study: a small one for CPU, the seed 004 grid for a CUDA GPU."""
    name = "default-cuda.yaml" if cuda else "default.yaml"
    return Path(str(resources.files("cnnvit.study").joinpath(name)))


def load_study(
    path: Path | None,
    overrides: list[str] | None = None,
    *,
    values: Mapping[str, Any] | None = None,
    cuda: bool = False,
) -> StudyConfig:
    """A study from YAML (or the default), updated by ``values`` (nested, typed) and ``--set``
    overrides, validated."""
    data = load_yaml(path if path is not None else default_study_path(cuda))
    data = apply_overrides(deep_merge(data, values or {}), overrides or [])
    return validate_config(StudyConfig, data)


def load_studies(
    path: Path | None,
    overrides: list[str] | None = None,
    *,
    values: Mapping[str, Any] | None = None,
    cuda: bool = False,
) -> list[StudyConfig]:
    """Every study in a YAML file, with ``--set`` overrides applied to each.

    A file of several ``---``-separated documents holds several studies (seed 004: one grid on
    three datasets): the first document is a whole study, each later one gives only what it
    changes (a distinct ``name`` at least), merged over the first; lists are replaced whole.
    """
    if path is None:
        return [load_study(None, overrides, values=values, cuda=cuda)]
    documents = load_yaml_documents(path)
    if not documents:
        raise ConfigError(
            f"{path} is empty; a study needs at least `models:` (see `cnnvit compare --help` and "
            "the ready studies in studies/)"
        )
    first, *changes = documents
    studies = []
    for number, change in enumerate([{}, *changes], start=1):
        try:
            study = deep_merge(deep_merge(first, change), values or {})
            data = apply_overrides(study, overrides or [])
            studies.append(validate_config(StudyConfig, data))
        except ConfigError as err:
            where = f"{path}, document {number}" if changes else str(path)
            raise ConfigError(f"{where}: {err}") from None
    names = [s.name for s in studies]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: each study document needs its own name, got {names}")
    return studies
