"""The preprocessing a weights file was trained with, kept in its safetensors metadata.

Weights that cnnvit writes (a run's ``model``/``ema``/``best.safetensors``) carry the input
they expect, so that whoever reads them feeds them what they were trained on instead of
guessing (timm's data config is ImageNet's 224 px and mean/std, wrong for a 32 px run with its
own dataset normalisation). safetensors metadata is ``str -> str``; each value here is JSON:

* ``cnnvit.format_version``: ``1``;
* ``cnnvit.model``: the model name (``"resnet_mini"``);
* ``cnnvit.input_size``: ``[C, H, W]`` of the normalised batch the model takes;
* ``cnnvit.channels``: ``C`` again (1: grayscale, 3: RGB; images are converted to it);
* ``cnnvit.mean``, ``cnnvit.std``: per channel, of images scaled to [0, 1];
* ``cnnvit.class_names``: the names of the logits, in order;
* ``epoch``: the checkpoint's epoch (a plain number, as before).

A file without ``cnnvit.format_version`` (published or foreign weights, a torch file, a Hugging
Face folder) has no preprocessing here: :func:`read_preprocessing` returns None and readers do
as before (``evaluate --weights``: the data config; the others: timm's data config for the
model). Reading the metadata loads no tensors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from cnnvit.errors import UserError

__all__ = [
    "FORMAT_VERSION",
    "Preprocessing",
    "check_class_names",
    "classes_override",
    "preprocessing_from_metadata",
    "preprocessing_metadata",
    "read_preprocessing",
]

FORMAT_VERSION = 1
_PREFIX = "cnnvit."


@dataclass(frozen=True)
class Preprocessing:
    """What a model's weights expect: uint8 images converted to ``channels``, resized to
    ``image_size`` square, scaled to [0, 1], normalised with ``mean``/``std``; the names of
    its logits; the model it belongs to."""

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None
    model: str | None = None

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def describe(self) -> str:
        """``32 px, 3 channels, mean (0.49, 0.48, 0.45), std (0.25, 0.24, 0.26)``."""
        mean = ", ".join(f"{m:.3g}" for m in self.mean)
        std = ", ".join(f"{s:.3g}" for s in self.std)
        return f"{self.image_size} px, {self.channels} channels, mean ({mean}), std ({std})"


def preprocessing_metadata(
    *,
    image_size: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str] | None = None,
    model: str | None = None,
) -> dict[str, str]:
    """The safetensors metadata (``str -> str``, values JSON) that records a preprocessing."""
    prep = _validated(
        image_size=image_size,
        channels=channels,
        mean=mean,
        std=std,
        class_names=class_names,
        model=model,
        where="preprocessing_metadata",
    )
    meta = {
        "format_version": FORMAT_VERSION,
        "input_size": list(prep.input_size),
        "channels": prep.channels,
        "mean": list(prep.mean),
        "std": list(prep.std),
    }
    if prep.class_names is not None:
        meta["class_names"] = list(prep.class_names)
    if prep.model is not None:
        meta["model"] = prep.model
    return {_PREFIX + k: json.dumps(v) for k, v in meta.items()}


def read_preprocessing(path: str | Path) -> Preprocessing | None:
    """The preprocessing recorded in a cnnvit safetensors file; None for anything else (a file
    without cnnvit metadata, a torch file, a folder).

    Raises:
        UserError: the file is missing, is not readable safetensors, or its cnnvit metadata is
            malformed or of a newer format.
    """
    path = Path(path)
    if path.is_dir() or path.suffix.lower() != ".safetensors":
        return None
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise UserError(f"cannot read weights file {path}: {exc}") from exc
    return preprocessing_from_metadata(metadata, where=str(path))


def preprocessing_from_metadata(
    metadata: Mapping[str, str], where: str = ""
) -> Preprocessing | None:
    """:func:`read_preprocessing` on metadata already read; None without cnnvit keys."""
    if _PREFIX + "format_version" not in metadata:
        return None
    try:
        values = {
            k[len(_PREFIX) :]: json.loads(v) for k, v in metadata.items() if k.startswith(_PREFIX)
        }
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: malformed cnnvit metadata ({exc})") from exc
    version = values["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"{where}: cnnvit weights format {version!r}; this cnnvit reads format "
            f"{FORMAT_VERSION} and older: update cnnvit"
        )
    input_size = values.get("input_size")
    if not (isinstance(input_size, list) and len(input_size) == 3):
        raise UserError(f"{where}: cnnvit.input_size must be [C, H, W], got {input_size!r}")
    c, h, w = input_size
    if h != w:
        raise UserError(f"{where}: non-square input size {input_size} is not supported")
    if values.get("channels", c) != c:
        raise UserError(
            f"{where}: cnnvit.channels {values['channels']} but input_size {input_size}"
        )
    return _validated(
        image_size=h,
        channels=c,
        mean=values.get("mean"),
        std=values.get("std"),
        class_names=values.get("class_names"),
        model=values.get("model"),
        where=where,
    )


def _validated(
    *,
    image_size: Any,
    channels: Any,
    mean: Any,
    std: Any,
    class_names: Any,
    model: Any,
    where: str,
) -> Preprocessing:
    def bad(what: str) -> UserError:
        return UserError(f"{where}: {what}")

    if not isinstance(image_size, int) or image_size <= 0:
        raise bad(f"image size must be a positive integer, got {image_size!r}")
    if channels not in (1, 3):
        raise bad(f"channels must be 1 or 3, got {channels!r}")
    for name, values in (("mean", mean), ("std", std)):
        if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != channels:
            raise bad(f"{name} must have one number per channel ({channels}), got {values!r}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise bad(f"{name} must be numbers, got {values!r}")
    if any(float(s) <= 0 for s in std):
        raise bad(f"std must be positive, got {std!r}")
    if class_names is not None and (
        isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names)
    ):
        raise bad(f"class names must be a list of strings, got {class_names!r}")
    if model is not None and not isinstance(model, str):
        raise bad(f"model must be a name, got {model!r}")
    return Preprocessing(
        image_size=image_size,
        channels=channels,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        class_names=tuple(class_names) if class_names is not None else None,
        model=model,
    )


def check_class_names(
    weights: Preprocessing | None,
    classes: Sequence[str],
    *,
    source: str,
    data: str,
    hint: str = "use data with the weights' classes, in their order",
) -> None:
    """Refuse data whose classes are not the weights' logits, name for name, in order.

    Logit ``i`` means the weights' class ``i``; scoring it against the data's class ``i`` when
    the two differ would silently mislabel every prediction. The same names in another order
    are refused too rather than remapped: the data's order is the user's to set
    (``data.classes`` keeps classes in the order given), and a remapped evaluation would write
    its predictions in an order no other run on that data uses.
    """
    if weights is None or weights.class_names is None:
        return
    expected = [str(c) for c in weights.class_names]
    found = [str(c) for c in classes]
    if expected == found:
        return
    how = "in another order" if sorted(expected) == sorted(found) else "differ"
    raise UserError(
        f"the classes of {source} ({_names(expected)}) and of {data} ({_names(found)}) {how}, "
        f"so the logits would be mislabelled; {hint}"
    )


def classes_override(class_names: Sequence[str]) -> str:
    """``--set 'data.classes=[...]'`` for a few names; a description for many."""
    if len(class_names) > 12:
        return "set data.classes to the weights' class names"
    return f"--set 'data.classes={json.dumps(list(class_names))}'"


def _names(names: list[str], shown: int = 6) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
