"""Method specs: the one syntax that names a method and its config overrides, for the CLI, bench and the
leaderboard's method labels alike.

A spec is ``NAME`` or ``NAME(field=value,...)``, NAME a registered method or ``path/to/file.py:Class``;
``--methods full_ft,sgg(mode=exact,steps=5)`` lists several. ``--method-config METHOD.FIELD=VALUE`` is
another spelling of the same overrides. A method's label on the leaderboard is its spec with the overrides
in sorted order, so different configurations never share a row.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from typing import Dict, Iterable, List, Optional

from ..core.checks import check_method_name, parse_spec, split_specs
from ..core.errors import UserError
from ..core.registry import METHODS, did_you_mean, import_module, import_object
from ..store.schema import COLUMNS, Figure
from ..store.tables import EPISODE_COLUMNS
from .api import Method

__all__ = ["check_declarations", "check_figures", "method_class", "method_classes", "method_from_spec", "method_label",
           "parse_method_config", "parse_spec", "split_specs"]
Overrides = Dict[str, object]


def parse_method_config(items: Iterable[str]) -> Dict[str, Dict[str, str]]:
    """``["METHOD.FIELD=VALUE", ...]`` -> {METHOD: {FIELD: VALUE}} (the ``--method-config`` spelling)."""
    overrides: Dict[str, Dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, field = key.partition(".")
        if not (sep and dot and method and field):
            raise UserError(f"--method-config '{item}' must look like METHOD.FIELD=VALUE, e.g. full_ft.steps=5")
        overrides.setdefault(method, {})[field] = value
    return overrides


def method_label(name: str, overrides: Overrides) -> str:
    """Leaderboard name: the spec of ``name`` with its non-default settings in sorted order."""
    return name + ("(" + ",".join(f"{k}={v}" for k, v in sorted(overrides.items())) + ")" if overrides else "")


def method_from_spec(spec: str, overrides: Optional[Overrides] = None) -> Method:
    """A method instance from a spec (registered name or ``path/to/file.py:Class``, optionally with
    ``(field=value,...)``), with further config ``overrides`` on top (command-line strings are converted to each field's annotated
    type; the config validates itself)."""
    name, from_spec = parse_spec(spec) if "(" in spec else (spec, {})
    cls = method_class(name)
    if not cls.name:
        cls.name = name.rpartition(":")[2] if ":" in name else name
    check_method_name(cls.name, name)
    if ":" in name and cls.name in METHODS and METHODS.get(cls.name) is not cls:
        raise UserError(f"method file {name} is named '{cls.name}' like the built-in method; its rows would be "
                        f"mixed with the built-in's: set another name (class attribute name = '...')")
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    hints = typing.get_type_hints(cls.config_class)
    values = {}
    for key, value in {**from_spec, **(overrides or {})}.items():
        if key not in fields:
            raise UserError(f"method '{cls.name}' has no config field '{key}' (fields: {', '.join(sorted(fields))})")
        values[key] = _coerce(hints[key], value, f"method '{cls.name}' config field '{key}'")
    try:
        config = cls.config_class(**values)
    except UserError as exc:
        raise UserError(f"--method-config {cls.name}: {exc}") from None
    except Exception as exc:  # a config class of a method file that raises something else
        raise UserError(f"method '{cls.name}': its config {cls.config_class.__name__} could not be built "
                        f"({type(exc).__name__}: {exc}); fix the config class or the values") from None
    try:
        return check_declarations(cls(config))
    except UserError as exc:
        raise UserError(f"--method-config {cls.name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a method file's __init__: refused before anything is written
        raise UserError(f"method '{cls.name}': {cls.__name__}.__init__ raised {type(exc).__name__}: {exc}; "
                        f"fix the method (or its config values)") from None


def method_class(name: str) -> type:
    """The Method subclass ``name`` names: a registered method, ``module:Class`` or ``path/to/file.py:Class``. A
    method file's errors (no ``:Class``, a misspelt or wrong class) list the Method subclasses defined in it."""
    path, sep, attr = name.rpartition(":")
    if not sep and name.endswith(".py") and name not in METHODS:
        if not os.path.isfile(name):
            raise UserError(f"method '{name}': no such file, and no registered method has that name (known: "
                            f"{', '.join(METHODS.names())}); give path/to/file.py:ClassName")
        raise UserError(f"method file '{name}' needs the class after the path, '{name}:ClassName'"
                        f"{_defined_in(name, import_module(name, name))}")
    if not sep:
        cls = METHODS.get(name)
    elif path.endswith(".py"):
        module = import_module(path, name)
        cls = getattr(module, attr, None)
        if cls is None:
            close = did_you_mean(attr, method_classes(module))
            raise UserError(f"method file '{path}' has no '{attr}'{close}{_defined_in(path, module, not close)}")
    else:
        cls = import_object(name)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        where = _defined_in(path, import_module(path, name)) if sep and path.endswith(".py") else ""
        raise UserError(f"method '{name}' is {cls!r}, not a subclass of fewshot_bench.methods.Method{where}")
    return cls


def method_classes(module) -> List[str]:
    """Names of the Method subclasses defined in ``module`` (not imported into it), in file order."""
    return [n for n, obj in vars(module).items() if isinstance(obj, type) and issubclass(obj, Method)
            and obj is not Method and obj.__module__ == module.__name__]


def _defined_in(path: str, module, example: bool = True) -> str:
    """" (Method subclasses in PATH: A, B; e.g. PATH:A)", or that it defines none."""
    classes = method_classes(module)
    if not classes:
        return f" ({path} defines no subclass of fewshot_bench.methods.Method)"
    return f" (Method subclasses in {path}: {', '.join(classes)}" + (f"; e.g. {path}:{classes[0]})" if example else ")")


def check_declarations(method: Method) -> Method:
    """``method``, unless its ``protocol``, ``attn_implementation`` or ``figures`` are ones the harness cannot use."""
    cls = type(method)

    protocols = ("target-only", "source-guided", "meta-trained")
    if method.protocol not in protocols:
        raise UserError(f"method '{cls.name}': protocol {method.protocol!r} is not one of {', '.join(protocols)}; "
                        f"set {cls.__name__}.protocol to one of them")
    if method.attn_implementation not in ("sdpa", "eager"):
        raise UserError(f"method '{cls.name}': attn_implementation {method.attn_implementation!r} is not sdpa or "
                        f"eager")
    check_figures(cls.name, method.figures)
    return method


_FIGURE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_EXAMPLE = 'Figure("my_share", 0, 1, "share of steps that ...")'


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def check_figures(method: str, figures) -> None:
    """Raise a one-line UserError naming ``method``, the figure and the fix unless ``figures`` is a tuple of
    :class:`~fewshot_bench.store.schema.Figure` with distinct new names (not a store column or a leaderboard
    column: the harness measures those), ``low < high``, a help text, aggregate mean or sum, 0-10 decimals and
    ``higher_is_better`` None or a bool."""
    where = f"method '{method}'"
    if isinstance(figures, str) or not isinstance(figures, (tuple, list)):
        raise UserError(f"{where}: figures {figures!r} is not a tuple of fewshot_bench.methods.Figure; declare "
                        f"e.g. figures = ({_EXAMPLE},)")
    reserved, seen = set(EPISODE_COLUMNS) | set(COLUMNS) | {"figures"}, set()
    for figure in figures:
        if not isinstance(figure, Figure):
            raise UserError(f"{where}: figure {figure!r} is a {type(figure).__name__}, not a "
                            f"fewshot_bench.methods.Figure; declare it as e.g. {_EXAMPLE}")
        name, fix = figure.name, None
        if not isinstance(name, str) or not _FIGURE_NAME.fullmatch(name):
            fix = "name it with lowercase letters, digits and _ (a letter first, at most 63 characters)"
        elif name in reserved:
            fix = "the harness measures or stores a figure of that name: give yours another name"
        elif name in seen:
            fix = "it is declared twice: declare each figure once"
        elif not (_real(figure.low) and _real(figure.high) and figure.low < figure.high):
            fix = f"its range [{figure.low!r}, {figure.high!r}] must be two numbers, low < high (inf allowed)"
        elif not isinstance(figure.help, str) or not figure.help.strip():
            fix = "give it a help text (what the number measures; the leaderboard column's help)"
        elif figure.aggregate not in ("mean", "sum"):
            fix = f"aggregate {figure.aggregate!r} must be 'mean' or 'sum' (over a row's ok episodes)"
        elif isinstance(figure.decimals, bool) or not isinstance(figure.decimals, int) or \
                not 0 <= figure.decimals <= 10:
            fix = f"decimals {figure.decimals!r} must be an integer from 0 to 10"
        elif figure.higher_is_better is not None and not isinstance(figure.higher_is_better, bool):
            fix = f"higher_is_better {figure.higher_is_better!r} must be True, False or None (a diagnostic)"
        if fix:
            raise UserError(f"{where}: figure {name!r}: {fix}")
        seen.add(name)


def _coerce(hint, value, where: str):
    """``value`` (a command-line string) converted to the annotated type ``hint``; other values unchanged."""
    if not isinstance(value, str):
        return value
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union:
        if value.strip().lower() in ("none", "null") and type(None) in typing.get_args(hint):
            return None
        for arg in args:
            try:
                return _coerce(arg, value, where)
            except UserError:
                continue
        raise UserError(f"{where}: '{value}' is not a valid {' or '.join(getattr(a, '__name__', str(a)) for a in args)}")
    if typing.get_origin(hint) in (list, tuple):
        item = typing.get_args(hint)[0] if typing.get_args(hint) else str
        return [_coerce(item, part.strip(), where) for part in value.split(",") if part.strip()]
    if hint is bool:  # bool("false") is True
        lowered = value.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise UserError(f"{where}: '{value}' is not a boolean; use true or false")
        return lowered in ("true", "1", "yes")
    if hint in (int, float):
        try:
            return hint(value)
        except ValueError:
            raise UserError(f"{where}: '{value}' is not a valid {hint.__name__}") from None
    return value
