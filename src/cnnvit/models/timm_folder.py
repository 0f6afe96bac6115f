"""A trained run as a timm hub folder: what ``timm``'s ``push_to_hub`` would upload, not uploaded.

The folder holds two files:

* ``config.json``: written by timm's own ``save_config_for_hf``: ``architecture``,
  ``num_classes``, ``num_features``, ``label_names`` (the run's classes), ``model_args`` (the
  constructor arguments that rebuild it: ``in_chans``, ``img_size`` for ViTs, ``model.kwargs``)
  and ``pretrained_cfg`` with the run's preprocessing (``input_size`` [C, H, W], ``mean``,
  ``std``, ``crop_pct`` 1.0, ``interpolation`` bilinear: cnnvit resizes the whole image, no crop);
* ``model.safetensors``: the weights the run was evaluated on (``RunFolder.evaluated_weights``:
  best under early stopping, else the EMA, else the last), with the checkpoint's cnnvit metadata
  kept, so that ``cnnvit evaluate --weights FOLDER/model.safetensors`` feeds the model what it was
  trained on.

timm loads it with ``timm.create_model("local-dir:FOLDER", pretrained=True)`` or, for a name in
timm's registry (every cnnvit built-in is), ``timm.create_model(arch, pretrained=True,
pretrained_cfg_overlay=dict(file=FOLDER/"model.safetensors"), num_classes=..., in_chans=...)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from timm.models._hub import save_config_for_hf

from cnnvit.config import read_run_config
from cnnvit.folders import RunFolder
from cnnvit.models.hub import ModelError, load_into, load_weights_file
from cnnvit.models.registry import create_model
from cnnvit.models.weights import Preprocessing, read_preprocessing

__all__ = ["load_timm_folder", "save_timm_folder"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_timm_folder(run_dir: str | Path, folder: str | Path) -> Path:
    """Write ``run_dir``'s evaluated weights and its preprocessing as a timm hub folder.

    Returns the folder. Raises :class:`ModelError` where the run has no checkpoint or its
    weights record no preprocessing (written by a cnnvit before weights carried it).
    """
    run = RunFolder(Path(run_dir))
    weights_path = run.evaluated_weights()  # RunFolderError (a UserError) without a checkpoint
    prep = _recorded(weights_path)
    cfg = read_run_config(run.config)
    model = create_model(
        cfg.model.name,
        num_classes=len(prep.class_names or ()),
        in_chans=prep.channels,
        img_size=prep.image_size,
        **cfg.model.kwargs,
    )
    load_into(model, load_weights_file(weights_path), weights_path)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_config_for_hf(
        model,
        str(out / CONFIG_NAME),
        model_config={"label_names": list(prep.class_names or ())},
        data_config=_data_config(prep),
    )
    save_file(model.state_dict(), str(out / WEIGHTS_NAME), metadata=_metadata(weights_path))
    return out


def load_timm_folder(folder: str | Path) -> torch.nn.Module:
    """The model of a folder :func:`save_timm_folder` wrote, with its weights, in eval mode.

    Built by cnnvit's registry (so renamed built-ins still resolve) with the folder's
    ``model_args``; ``model.pretrained_cfg`` is the folder's, so ``timm.data.resolve_data_config``
    gives the run's preprocessing.
    """
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise ModelError(f"{folder} has no {CONFIG_NAME}; write it with `cnnvit hub-folder RUN`")
    config = json.loads(config_path.read_text())
    args = dict(config.get("model_args") or {})
    num_classes = args.pop("num_classes", config["num_classes"])
    in_chans = args.pop("in_chans", config["pretrained_cfg"]["input_size"][0])
    img_size = args.pop("img_size", None)
    model = create_model(
        config["architecture"],
        num_classes=num_classes,
        in_chans=in_chans,
        img_size=img_size[0] if isinstance(img_size, list) else img_size,
        **args,
    )
    weights = folder / WEIGHTS_NAME
    load_into(model, load_weights_file(weights), weights)
    cfg = config["pretrained_cfg"]
    folder_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    model.pretrained_cfg = {**model.pretrained_cfg, **folder_cfg}
    return model.eval()


def _recorded(weights_path: Path) -> Preprocessing:
    prep = read_preprocessing(weights_path)
    if prep is None or prep.class_names is None:
        raise ModelError(
            f"{weights_path} records no preprocessing or class names (written by an older "
            "cnnvit); re-evaluate or retrain the run with this cnnvit first"
        )
    return prep


def _data_config(prep: Preprocessing) -> dict[str, object]:
    """timm's data-config keys for cnnvit's eval transform: the whole image resized (bilinear,
    antialiased) to ``image_size`` square, so no crop (``crop_pct`` 1.0)."""
    return {
        "input_size": prep.input_size,
        "mean": prep.mean,
        "std": prep.std,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
    }


def _metadata(weights_path: Path) -> dict[str, str]:
    """The checkpoint's safetensors metadata (cnnvit's preprocessing keys and the epoch)."""
    with safe_open(str(weights_path), framework="pt") as f:
        return dict(f.metadata() or {})
