"""Config dataclasses: fields with help text and limits, strict construction from YAML/dict, type and range checks.

``option(default, help=..., low=..., high=..., choices=...)`` declares a field; :func:`check_values` enforces the
annotated type and those limits. Config classes call :func:`validate` in ``__post_init__``, so a config is
valid from construction on; :func:`from_mapping` (cards, ``--config`` files) checks before constructing and
names the file in the error. :func:`read_yaml` reads a YAML file with one-line errors.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import yaml

from .errors import UserError
from .registry import did_you_mean


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory=None, low: Optional[float] = None,
           high: Optional[float] = None, choices: Optional[Sequence] = None):
    """A dataclass field with help text and optional limits: ``low <= value <= high``, ``value in choices``."""
    metadata = {"help": help, "low": low, "high": high, "choices": tuple(choices) if choices else None}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def from_mapping(cls, data: Mapping[str, Any], where: str):
    """Build dataclass ``cls`` from ``data``; ``where`` names the file/section for errors."""
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected a mapping of fields for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise UserError(f"{where}: unknown field '{key}'{did_you_mean(str(key), fields)} "
                            f"(allowed: {', '.join(fields)})")
        sub = _dataclass_in(hints[key])
        kwargs[key] = from_mapping(sub, value, f"{where}.{key}") if sub and isinstance(value, Mapping) else value
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{where}: missing required field '{missing[0]}' "
                        f"({fields[missing[0]].metadata.get('help', '')})")
    check_values(cls, kwargs, where)
    return cls(**kwargs)


def check_values(cls, values: Mapping[str, Any], where: str) -> None:
    """Raise a one-line UserError unless every value has its field's annotated type and respects its limits."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        meta = fields[name].metadata
        help_text = f" ({meta['help']})" if meta.get("help") else ""
        if not _matches(value, hints[name]):
            raise UserError(f"{where}: field '{name}' must be {_describe(hints[name])}, got {value!r}{help_text}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = meta.get("low"), meta.get("high")
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = (f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]")
                raise UserError(f"{where}: field '{name}' must be {bounds}, got {value!r}{help_text}")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise UserError(f"{where}: field '{name}' must be one of {', '.join(map(str, choices))}, got {value!r}")


def validate(config, where: Optional[str] = None) -> None:
    """:func:`check_values` over every field of the dataclass instance ``config``."""
    check_values(type(config), {f.name: getattr(config, f.name) for f in dataclasses.fields(config)},
                 where or type(config).__name__)


def _matches(value, hint) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (bool is not an int; an int is a float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint is object:
        return True
    if origin is typing.Union:
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin in (list, tuple, typing.List, Sequence):
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value) if args else \
            isinstance(value, (list, tuple))
    if origin in (dict, typing.Dict, Mapping):
        return isinstance(value, Mapping) and (not args or all(_matches(v, args[1]) for v in value.values()))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "empty (null)"
    if origin in (list, tuple):
        return f"a list of {getattr(args[0], '__name__', args[0])} values" if args else "a list"
    if origin is dict:
        return "a mapping"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _dataclass_in(hint):
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def field_help(cls) -> dict:
    """{field name: help text} for a config dataclass."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def read_yaml(path: Union[str, Path], what: str):
    """The parsed YAML file ``path``; ``what`` names it in errors (e.g. "task card", "--config")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"malformed YAML in {what} {where}: {problem}") from None

