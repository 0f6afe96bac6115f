"""Command-line flags derived from the typed configs: a field's name, type, default and
description make its flag, so a default lives in the config alone (the way lerobot's config
classes are its command line).

Written here rather than taken from pydantic-settings' CLI source: that source reads a list as
``--k 1 --k 5`` or ``--k [1,5]``, while cnnvit's commands have always taken ``--k 1 5 20`` and
``--sizes 32,64,128``; argparse keeps those and this module only translates fields into it.

Flags that are not given are absent from the parsed namespace (``argparse.SUPPRESS``), so only
what the user typed reaches the config, and everything else keeps the config's default.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

__all__ = ["ConfigFlags", "add_config_flags", "field_at"]


@dataclass(frozen=True)
class _Flag:
    dest: str
    key: str  # the field's name, or its dotted path in a nested config
    convert: Callable[[Any], Any]


class ConfigFlags:
    """The flags one parser got from a config model, and how to read them back."""

    def __init__(self) -> None:
        self._flags: list[_Flag] = []

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """``{key: value}`` of the flags given (dotted keys for nested fields)."""
        return {
            f.key: f.convert(getattr(args, f.dest)) for f in self._flags if hasattr(args, f.dest)
        }


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    fields: Iterable[str] | Mapping[str, str] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
    into: ConfigFlags | None = None,
    owner: str = "",
) -> ConfigFlags:
    """Add a flag per field of ``model`` (``fields``: which ones, or ``{flag: dotted key}`` for
    shortcuts into nested sections) and return them. ``defaults``: values that this command
    uses where the model's default differs (shown in the help, and set when not given).
    ``owner`` names the model where a flag it shares with another one has another default."""
    flags = into or ConfigFlags()
    explicit = isinstance(fields, Mapping)
    if fields is None:
        fields = list(model.model_fields)
    named = dict(fields) if isinstance(fields, Mapping) else {f"--{_dashed(f)}": f for f in fields}
    taken = {option: action for action in _actions(parser) for option in action.option_strings}
    for flag, key in named.items():
        info = field_at(model, key)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        flag = flag if explicit else str(extra.get("flag", flag))
        dest = key.replace(".", "__")
        kwargs, convert = _argparse(info, str(extra.get("action", "")))
        flags._flags.append(_Flag(dest, key, convert))
        default = (defaults or {}).get(key, info.get_default(call_default_factory=True))
        if flag in taken:  # the same option of two analyses of one verb: one flag serves both
            _share(taken[flag], default, owner or model.__name__)
            continue
        if defaults and key in defaults:
            kwargs["default"] = defaults[key]
        help_text = _help(info, default)
        if kwargs.get("action") == "store_false":
            flag_names = [_negated(flag)]
            help_text = f"{help_text}: on unless this flag is given" if help_text else ""
        else:
            flag_names = [flag]
        if "choices" not in kwargs and kwargs.get("action") not in ("store_true", "store_false"):
            kwargs["metavar"] = flag.removeprefix("--").replace("-", "_").upper()
        action = parser.add_argument(*flag_names, dest=dest, help=help_text, **kwargs)
        action.defaults_by_owner = {owner or model.__name__: default}  # type: ignore[attr-defined]
        taken[flag] = action
    return flags


def _share(action: argparse.Action, default: Any, owner: str) -> None:
    """A flag serving one more model: where the defaults differ, the help gives each one's."""
    by_owner: dict[str, Any] = action.defaults_by_owner  # type: ignore[attr-defined]
    by_owner[owner] = default
    if len({repr(d) for d in by_owner.values()}) > 1:
        text = (action.help or "").split(" (default:")[0]  # the first model's description
        each = ", ".join(f"{o}: {d}" for o, d in by_owner.items())
        action.help = f"{text} (default: {each})"


def field_at(model: type[BaseModel], key: str) -> FieldInfo:
    """The field a dotted key names (``train.epochs`` in a RunConfig)."""
    head, _, rest = key.partition(".")
    info = model.model_fields[head]
    if not rest:
        return info
    sub = info.annotation
    assert isinstance(sub, type) and issubclass(sub, BaseModel), key
    return field_at(sub, rest)


# --- one field -> argparse ------------------------------------------------------------------------


def _argparse(info: FieldInfo, action: str) -> tuple[dict[str, Any], Callable[[Any], Any]]:
    """argparse keywords for a field's type, and how to turn what argparse gives into it."""
    kind = _without_none(info.annotation)
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS}
    options = set(typing.get_args(kind)) if _is_union(kind) else {kind}
    if kind is bool:
        kwargs["action"] = "store_false" if info.default is True else "store_true"
        return kwargs, _same
    if options == {bool, str}:  # compile: true, or a backend name
        kwargs.update(nargs="?", const=True)
        return kwargs, _same
    if typing.get_origin(kind) is Literal:
        choices = list(typing.get_args(kind))
        kwargs.update(choices=choices, type=type(choices[0]))
        if "on" in choices:  # `--channels-last` alone means on, as a plain switch did
            kwargs.update(nargs="?", const="on")
        return kwargs, _same
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        if action == "append":
            kwargs.update(action="append", type=item)
            return kwargs, _same
        kwargs.update(nargs="+", type=str)
        return kwargs, lambda given: _list_of(item, given)
    if kind in (int, float, str, Path):
        kwargs["type"] = kind
        return kwargs, _same
    raise TypeError(f"no command-line form for a field of type {kind}")


def _list_of(item: type, given: list[str]) -> list[Any]:
    # `--sizes 32 64` and `--sizes 32,64` both work.
    return [item(part) for token in given for part in str(token).split(",") if part]


def _without_none(kind: Any) -> Any:
    if _is_union(kind):
        rest = [a for a in typing.get_args(kind) if a is not type(None)]
        return rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
    return kind


def _is_union(kind: Any) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType)


def _same(value: Any) -> Any:
    return value


def _help(info: FieldInfo, default: Any) -> str:
    text = info.description or ""
    if default is None or default is argparse.SUPPRESS or isinstance(default, bool):
        return text
    shown = " ".join(map(str, default)) if isinstance(default, list) else default
    return f"{text} (default: {shown})" if text else f"default: {shown}"


def _dashed(name: str) -> str:
    return name.replace("_", "-")


def _negated(flag: str) -> str:
    return f"--no-{flag.removeprefix('--')}"


def _actions(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> list[argparse.Action]:
    return list(parser._actions)
