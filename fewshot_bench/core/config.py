"""Config dataclasses: fields with help text and limits, strict construction from YAML/dict, type and range checks.

``option(default, help=..., low=..., high=..., choices=...)`` declares a field; :func:`check_values` enforces the
annotated type and those limits. Config classes call :func:`validate` in ``__post_init__``, so a config is
valid from construction on; :func:`from_mapping` (cards, ``--config`` files) checks before constructing and
names the file in the error. :func:`read_yaml` reads a YAML file with one-line errors.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import yaml

from .errors import UserError
from .registry import did_you_mean


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory=None, low: Optional[float] = None,
           high: Optional[float] = None, choices: Optional[Sequence] = None, above: Optional[float] = None):
    """A dataclass field with help text and optional limits: ``low <= value <= high``, ``value > above``,
    ``value in choices``. Every number must be finite (NaN and inf are refused for every field)."""
    metadata = {"help": help, "low": low, "high": high, "choices": tuple(choices) if choices else None,
                "above": above}
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
        bad = _out_of_bounds_number(value)
        if bad is not None:
            raise UserError(f"{where}: field '{name}' holds {bad!r}; {_FINITE_FIX}{help_text}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = meta.get("low"), meta.get("high")
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = (f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]")
                raise UserError(f"{where}: field '{name}' must be {bounds}, got {value!r}{help_text}")
            above = meta.get("above")
            if above is not None and not value > above:
                raise UserError(f"{where}: field '{name}' must be > {above}, got {value!r}{help_text}")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise UserError(f"{where}: field '{name}' must be one of {', '.join(map(str, choices))}, got {value!r}")


MAX_INT = 2**63 - 1  # SQLite's INTEGER; JSON and numpy seeds are fine below it
_FINITE_FIX = f"use a finite number (not nan or inf), integers within +-{MAX_INT}"


def _out_of_bounds_number(value, depth: int = 0):
    """The first number in ``value`` (nested lists/mappings too) that is NaN, infinite or an integer beyond
    SQLite's, else None."""
    if isinstance(value, bool) or depth > 20:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return value
    if isinstance(value, int) and abs(value) > MAX_INT:
        return value
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else ()
    return next((bad for bad in (_out_of_bounds_number(v, depth + 1) for v in items) if bad is not None), None)


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


MAX_YAML_BYTES = 1_000_000  # cards and run configs are a few KB
MAX_YAML_VALUES = 100_000  # values after alias expansion: a nested-alias "bomb" is refused, not walked


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate mapping keys (YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base constructor reports it
                break
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first.start_mark.line + 1}); keep one",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(value, limit: int) -> int:
    """Values in ``value`` counting every alias expansion, stopping past ``limit``."""
    count, stack = 0, [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def parse_yaml(text: str, where: str):
    """Parsed YAML ``text`` (safe, no duplicate keys, bounded size and alias expansion); one-line errors."""
    if len(text) > MAX_YAML_BYTES:
        raise UserError(f"{where} is {len(text)} characters, over the {MAX_YAML_BYTES} allowed for a YAML file; "
                        f"cards and run configs are a few KB")
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise UserError(f"malformed YAML in {where}: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        place = f"{where}:{mark.line + 1}" if mark else where
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"malformed YAML in {place}: {problem}") from None
    if _expanded_size(data, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise UserError(f"{where}: more than {MAX_YAML_VALUES} values once its aliases (&anchor/*alias) are "
                        f"expanded; write the values out instead of nesting aliases")
    return data


def read_yaml(path: Union[str, Path], what: str):
    """The parsed YAML file ``path`` (:func:`parse_yaml`); ``what`` names it in errors (e.g. "task card")."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_YAML_BYTES:
            raise UserError(f"{what} {path} is {path.stat().st_size} bytes, over the {MAX_YAML_BYTES} allowed; "
                            f"cards and run configs are a few KB")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    return parse_yaml(text, f"{what} {path}")
