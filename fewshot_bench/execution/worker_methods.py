"""Methods as the sealed worker names them: the spec it rebuilds a method from (``module:Class`` or
``/abs/path/file.py:Class``, never imported in the harness), the :class:`MethodStub` the harness holds instead of a
method whose code runs only in the worker, and the files the confined worker must read to import a spec."""
from __future__ import annotations

import ast
import importlib.util
import os
import sys
from pathlib import Path
from typing import Tuple

from ..core.builtins import BUILTIN_METHODS
from ..core.errors import UserError
from ..core.registry import METHODS
from ..methods.api import Method
from ..store.schema import Figure


class MethodStub(Method):
    """A method as the harness holds it when its code runs only in a sealed worker (:meth:`SealedWorker.describe`):
    its declarations (name, protocol, attention, figures, opt-in) and config, never its code. The figures come as
    plain data, one dict of :class:`~fewshot_bench.store.schema.Figure`'s fields each."""

    def __init__(self, spec: str, info: dict):
        super().__init__(None)
        self.spec = spec
        self.name, self.protocol = info["name"], info["protocol"]
        self.attn_implementation, self.opt_in = info["attn"], info["opt_in"]
        self.figures = tuple(Figure(**figure) for figure in info["figures"])
        self._config = dict(info["config"])

    def config_dict(self) -> dict:
        return dict(self._config)

    def adapt(self, ctx):
        raise RuntimeError(f"{self.name} runs in a sealed worker only: run_episode(..., worker=...)")


def canonical_spec(name: str) -> str:
    """``module:Class`` or ``/abs/path/file.py:Class`` of a method name (a registered name, ``module:Class`` or
    ``path/file.py:Class``), without importing it."""
    path, sep, attr = name.rpartition(":")
    if sep:
        return f"{os.path.abspath(path)}:{attr}" if path.endswith(".py") else name
    if name.endswith(".py") and os.path.isfile(name):
        raise UserError(f"method file '{name}' needs the class after the path, '{name}:ClassName'{_classes_in(name)}")
    if name in BUILTIN_METHODS:
        return BUILTIN_METHODS[name]
    METHODS.names()  # entry points loaded
    entry = METHODS._entries.get(name)  # the import string, never imported here
    if isinstance(entry, str):
        return entry
    if isinstance(entry, type):
        return _class_spec(entry)
    METHODS.get(name)  # raises: unknown method, with "did you mean"
    raise UserError(f"method '{name}' is registered as {entry!r}, not a class a sealed worker can import")


def _classes_in(path: str) -> str:
    """" (classes in PATH: A, B; e.g. PATH:A)" from the file's syntax tree: the harness never imports a method file."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return ""
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    return f" (classes in {path}: {', '.join(classes)}; e.g. {path}:{classes[0]})" if classes else ""


def method_spec(method: Method) -> Tuple[str, dict]:
    """(spec, config overrides) the worker rebuilds ``method`` from: ``path/file.py:Class`` for a method file,
    ``module:Class`` otherwise; the overrides are its whole config."""
    if isinstance(method, MethodStub):
        return method.spec, method.config_dict()
    return _class_spec(type(method)), method.config_dict()


def _class_spec(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if "<locals>" in cls.__qualname__:
        raise UserError(f"method class {cls.__qualname__} is defined inside a function: a sealed worker can only "
                        f"run a class defined at the top level of a module or method file")
    if cls.__module__.startswith("fewshot_bench_user_") or cls.__module__ in ("__main__", "__mp_main__"):
        if not path:
            raise UserError(f"method class {cls.__qualname__} has no file a sealed worker could import")
        return f"{os.path.abspath(path)}:{cls.__qualname__}"
    return f"{cls.__module__}:{cls.__qualname__}"


def grants_for(spec: str) -> Tuple[str, ...]:
    """Files the worker must be able to read to import ``spec``'s module after confinement: a method file and the
    Python files beside it; a module outside this package and the Python installation."""
    target = spec.rpartition(":")[0]
    if target.endswith(".py"):
        folder = Path(target).parent
        return tuple(sorted({target, *(str(p) for p in folder.glob("*.py"))}))
    found = importlib.util.find_spec(target)
    origin = getattr(found, "origin", None)
    if not origin or not os.path.isfile(origin):
        return ()
    real = os.path.realpath(origin)
    inside = [os.path.dirname(os.path.realpath(m.__file__)) for m in (sys.modules["fewshot_bench"],)]
    inside += [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)]
    if "fewshot_bench.baselines" in sys.modules:
        inside.append(os.path.dirname(os.path.realpath(sys.modules["fewshot_bench.baselines"].__file__)))
    return () if any(real.startswith(p + os.sep) for p in inside) else (real,)
