"""One registry mechanism for tasks, methods and backbones.

Entries are objects or lazy ``"module:Object"`` strings (imported on first use); further entries come
from an entry-point group. Unknown names get a "did you mean" error, duplicate names are refused.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from typing import Any, Dict, Iterator, Optional

from .errors import UserError


def import_object(spec: str) -> Any:
    """Import ``"package.module:Object"`` or ``"path/to/file.py:Object"``."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"'{spec}' is not an import spec; write it as 'package.module:Object' or 'path/to/file.py:Object'")
    module = import_module(module_name, spec)
    try:
        return getattr(module, attr)
    except AttributeError:
        names = [n for n in vars(module) if not n.startswith("_")]
        raise UserError(f"'{module_name}' has no '{attr}'{did_you_mean(attr, names)}") from None


def import_module(module_name: str, spec: str):
    """The module ``"package.module"`` or ``"path/to/file.py"`` (imported for ``spec``, named in errors)."""
    try:
        if module_name.endswith(".py"):
            module = _import_file(module_name)
        else:
            module = importlib.import_module(module_name)
    except (ImportError, FileNotFoundError) as exc:
        raise UserError(f"cannot import '{module_name}' for '{spec}': {exc}") from exc
    except SyntaxError as exc:
        raise UserError(f"{exc.filename}:{exc.lineno}: syntax error in '{spec}' ({exc.msg}); fix the file") from None
    except Exception as exc:  # the user's module raised while being imported
        raise UserError(f"importing '{module_name}' for '{spec}' raised {type(exc).__name__}: "
                        f"{(str(exc).splitlines() or [''])[0]}") from None
    return module


def _import_file(path: str):
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    name = "fewshot_bench_user_" + hashlib.sha256(path.encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def did_you_mean(name: str, choices) -> str:
    """"; did you mean 'x'?" for the close matches of ``name`` among ``choices`` ("" when none is close)."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


class Registry:
    """Name -> object registry with lazy import strings and an entry-point group."""

    def __init__(self, kind: str, entry_point_group: Optional[str] = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: Dict[str, Any] = {}
        self._entry_points_loaded = entry_point_group is None

    def register(self, name: str, obj: Any = None, *, overwrite: bool = False):
        """Register ``obj`` (object or ``"module:Object"`` string) under ``name``; usable as a decorator."""
        if obj is None:
            def decorator(target):
                self.register(name, target, overwrite=overwrite)
                return target
            return decorator
        if name in self._entries and not overwrite and self._entries[name] is not obj:
            raise UserError(f"duplicate {self.kind} name '{name}': it is already registered; pick another name")
        self._entries[name] = obj
        return obj

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            if ep.name not in self._entries:
                self._entries[ep.name] = ep.value

    def get(self, name: str) -> Any:
        self._load_entry_points()
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}"
                            f" (known: {', '.join(sorted(self._entries)) or 'none'})")
        obj = self._entries[name]
        if isinstance(obj, str):
            obj = import_object(obj)
            self._entries[name] = obj
        return obj

    def names(self) -> list:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    @contextlib.contextmanager
    def scoped(self) -> Iterator["Registry"]:
        """Within the block, entries may be added or replaced; at its end (also on error) the registry is as before."""
        before, entry_points_loaded = dict(self._entries), self._entry_points_loaded
        try:
            yield self
        finally:
            self._entries.clear()
            self._entries.update(before)
            self._entry_points_loaded = entry_points_loaded


TASKS = Registry("task", "fewshot_bench.tasks")
METHODS = Registry("method", "fewshot_bench.methods")
BACKBONES = Registry("backbone", "fewshot_bench.backbones")


def register_task(name: str, obj: Any = None, **kw):
    return TASKS.register(name, obj, **kw)


def register_method(name: str, obj: Any = None, **kw):
    return METHODS.register(name, obj, **kw)


def register_backbone(name: str, obj: Any = None, **kw):
    return BACKBONES.register(name, obj, **kw)
