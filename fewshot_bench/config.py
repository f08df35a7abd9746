"""Dataclass helpers: fields with help text, strict construction from YAML/dict (unknown fields are errors),
YAML files read with one-line errors, and choice validation."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping, Union

import yaml

from .errors import UserError
from .registry import did_you_mean


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory=None):
    """A dataclass field with help text (shown by ``fewshot-bench list`` and in error messages)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


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
        kwargs[key] = from_mapping(sub, value, f"{where}.{key}") if sub and value is not None else value
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{where}: missing required field '{missing[0]}' "
                        f"({fields[missing[0]].metadata.get('help', '')})")
    return cls(**kwargs)


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


def check_choices(where: str, config, allowed: Mapping[str, tuple]) -> None:
    """Raise a one-line error when a field of ``config`` named in ``allowed`` holds a value not listed there."""
    for field, choices in allowed.items():
        value = getattr(config, field)
        if value not in choices:
            raise UserError(f"{where}: {field} is {value!r}; use one of {', '.join(choices)}")
