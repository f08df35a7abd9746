"""Small input checks shared by cards, the CLI and method specs: names that stay names, paths that stay inside
the folder they are relative to, the method-spec syntax (:func:`parse_spec`; :mod:`fewshot_bench.methods.spec`
builds the methods). Each raises a one-line :class:`~fewshot_bench.core.errors.UserError` naming the fix."""
from __future__ import annotations

import os
import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Dict, List, Tuple

from .errors import UserError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def check_name(name, what: str) -> str:
    """``name`` unless it is not a plain name (letters, digits, ``_ . + -``; no path separators or '..')."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise UserError(f"{what} {name!r} is not a plain name; use letters, digits, '_', '.', '+' or '-' "
                        f"(no '/', '..' or spaces), e.g. my_task")
    return name


def check_inside(path, what: str, folder: str) -> str:
    """``path`` unless it is absolute or climbs out of ``folder`` (the folder it is relative to) with '..'."""
    text = str(path)
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if not text.strip() or PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() \
            or PureWindowsPath(text).drive or ".." in parts or "~" == text[:1]:
        raise UserError(f"{what} {text!r} must be a relative path inside {folder} (no leading '/', '~' or '..'); "
                        f"move the files into {folder} and name them relative to it")
    return text


MAX_RESTARTS = 100


def check_restarts(value, flag: str = "--restarts") -> int:
    """``value`` unless it is not 1..MAX_RESTARTS training restarts per episode (a billion would never finish)."""
    if value is not None and not 1 <= int(value) <= MAX_RESTARTS:
        raise UserError(f"{flag} {value} is out of range; give 1 to {MAX_RESTARTS} training restarts per episode "
                        f"(each one trains every episode again)")
    return value


def max_threads() -> int:
    """The most torch threads a process may ask for: 4 x the machine's cores, at most 256."""
    return min(256, 4 * (os.cpu_count() or 1))


def check_threads(value, flag: str = "--threads") -> int:
    """``value`` unless it is negative or above :func:`max_threads` (0: chosen from the idle cores)."""
    if value is not None and not 0 <= int(value) <= max_threads():
        raise UserError(f"{flag} {value} is out of range; give 0 (automatic) to {max_threads()} torch threads "
                        f"(4 x the {os.cpu_count()} cores of this machine, at most 256)")
    return value


def check_run_bounds(config) -> None:
    """The limits :func:`check_restarts` and :func:`check_threads` on a run config (``RunConfig``), named as the
    command-line options."""
    check_restarts(getattr(config, "restarts", None))
    check_threads(getattr(config, "threads", None))


# A method spec: NAME or NAME(field=value,...); NAME may be a path/to/file.py:Class whose path holds spaces
METHOD_SPEC = re.compile(r"^\s*([^()]*?[^()\s])\s*(?:\((.*)\))?\s*$")


def split_specs(text: str) -> List[str]:
    """``"full_ft,sgg(mode=exact,steps=5)"`` -> ``["full_ft", "sgg(mode=exact,steps=5)"]``."""
    return [m.strip() for m in re.findall(r"[^,(]+(?:\([^)]*\))?", text) if m.strip()]


def parse_spec(spec: str) -> Tuple[str, Dict[str, str]]:
    """``"NAME(field=value,...)"`` -> (NAME, {field: value}); a bare NAME has no overrides."""
    match = METHOD_SPEC.match(spec)
    if not match:
        raise UserError(f"method '{spec}' must look like NAME or NAME(field=value,...), e.g. sgg(mode=exact)")
    name, body = match.group(1), match.group(2)
    overrides = {}
    for item in (body or "").split(","):
        if not item.strip():
            continue
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise UserError(f"method '{spec}': '{item}' must look like field=value, e.g. sgg(mode=exact)")
        if field.strip() in overrides:
            raise UserError(f"method '{spec}' sets '{field.strip()}' twice; keep one value")
        overrides[field.strip()] = value.strip()
    return name, overrides


def check_method_name(name, spec: str) -> str:
    """``name`` (a method class's ``name``) unless it is empty or blank: the leaderboard and the store key rows on it."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"method '{spec}' has an empty name ({name!r}); set its class attribute `name` to a plain "
                        f"name such as my_method")
    return name
