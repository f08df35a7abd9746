"""Small input checks shared by cards, the CLI and method specs: names that stay names, paths that stay inside
the folder they are relative to. Each raises a one-line :class:`~fewshot_bench.errors.UserError` naming the fix."""
from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath

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
