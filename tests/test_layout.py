"""The package's layering, read from the source with ``ast`` (nothing is imported).

Layers, bottom to top: core < data < episodes < store < methods < analysis < execution < report < cli. A module
may import only from its own layer or lower ones; the import graph has no circle; only cli/ sees argparse; an
import sits at the top of its module unless :data:`INNER_ALLOWED` names it (optional extras, and a few imports
kept lazy for start-up time, each with its reason); no module is longer than :data:`MAX_LINES` lines except those
in :data:`LONG_MODULES`. Every check is also run on a small synthetic package to show that it can fail.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
from pathlib import Path
from typing import Dict, List, Optional

import pytest

PACKAGE = "fewshot_bench"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
LAYERS = ("core", "data", "episodes", "store", "methods", "analysis", "execution", "report", "cli")
EXEMPT = {PACKAGE, f"{PACKAGE}.__main__"}  # the package's front door and `python -m fewshot_bench`
MAX_LINES = 400

# Modules longer than MAX_LINES, each with the reason it still is (none at present).
LONG_MODULES: Dict[str, str] = {}

# (importing module, imported module) pairs allowed inside a function, and why. The imported module is matched
# as written or by its top-level package ("matplotlib" covers matplotlib.figure); "*": every inner import of the
# module. An entry that matches nothing fails the test (remove it).
INNER_ALLOWED = {
    # optional extras: not installed by default
    ("fewshot_bench.execution.tuning", "optuna"): "optional extra [tune]; without it one error line names the install",
    ("fewshot_bench.execution.api", "pandas"): "not a dependency: only Results.frame() needs it",
    ("fewshot_bench.execution.launchers", "submitit"): "optional extra [slurm]: only run --launcher submitit needs it",
    ("fewshot_bench.methods.adapters", "peft"): "the LoRA-only path: peft (and its transformers) load with lora",
    ("fewshot_bench.methods.adapters", "transformers"): "GPT-2's Conv1D, needed with peft on the LoRA path only",
    # start-up time, lazy already before the layering: torch (~3 s), transformers and datasets (~1-2 s each) and
    # matplotlib are loaded when first used, so `import fewshot_bench`, the report layer and the commands that
    # train nothing (list, episodes, leaderboard, validate, --help, ...) start without them
    ("fewshot_bench.core.threads", "torch"): "core stays free of torch: only runs set torch's threads",
    ("fewshot_bench.store.environment", "torch"): "the store layer (read by every report) stays free of torch",
    ("fewshot_bench.data.loading", "datasets"): "loaded when task data is first read, not with the package",
    ("fewshot_bench.data.skeleton", "pyarrow"): "only to read the fields of a .parquet split file (new-task)",
    ("fewshot_bench.methods.backbone", "transformers"): "loaded with the first backbone",
    ("fewshot_bench.methods.backbone", "datasets"): "library_bars_off(datasets=True) only (setfit's pair dataset), "
                                                    "not with the first backbone",
    ("fewshot_bench.report.forest", "matplotlib"): "loaded when a figure is drawn",
    ("fewshot_bench.report.summary_figure", "matplotlib"): "loaded when a figure is drawn",
    ("fewshot_bench", "fewshot_bench.execution.api"): "torch: fewshot_bench.evaluate loads it on first use",
    # the same for the command handlers: the execution modules import torch, transformers and scikit-learn
    # (3-6 s); each handler of a command that trains imports its own when it runs
    ("fewshot_bench.cli.run_commands", "fewshot_bench.execution.campaign"): "torch: imported by `campaign` only",
    ("fewshot_bench.cli.run_commands", "fewshot_bench.execution.distributed"): "torch: imported by `run` only",
    ("fewshot_bench.cli.run_commands", "fewshot_bench.execution.launchers"): "torch: `run --launcher submitit` only",
    ("fewshot_bench.cli.run_commands", "fewshot_bench.execution.plan"): "torch: imported by `run --dry-run` only",
    ("fewshot_bench.cli.run_commands", "fewshot_bench.execution.reproduce"): "torch: imported by `reproduce` only",
    ("fewshot_bench.cli.run_commands", "fewshot_bench.execution.run_config"): "torch (via methods.spec): `run` only",
    ("fewshot_bench.cli.run_commands", "fewshot_bench.execution.runner"): "torch: imported by `run` only",
    ("fewshot_bench.cli.run_commands", "fewshot_bench.execution.tuning"): "torch: imported by `tune` only",
    # the sealed worker: another engineer's files, whose inner imports are theirs to hoist
    ("fewshot_bench.execution.worker_process", "landlockpy"): "optional extra [sandbox]; without it the worker "
                                                              "runs unconfined (isolation 'process') and says so",
}


@dataclasses.dataclass(frozen=True)
class Import:
    """One imported module of an import statement: ``target`` is absolute (relative imports resolved; for
    ``from PKG import NAME`` the module PKG.NAME when there is one, else PKG)."""
    module: str            # the importing module
    target: str
    line: int
    function: Optional[str]  # the enclosing function, None at module level

    def __str__(self) -> str:
        where = f" (in {self.function})" if self.function else ""
        return f"{self.module}:{self.line}{where} imports {self.target}"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.lru_cache(maxsize=None)
def package_sources(root: Path = ROOT) -> Dict[str, str]:
    """{dotted module name: source} of every module under ``root`` (packages by their ``__init__``)."""
    return {module_name(path, root): path.read_text(encoding="utf-8") for path in sorted(root.rglob("*.py"))}


def _is_package(module: str, modules) -> bool:
    return any(other.startswith(module + ".") for other in modules)


def imports_of(module: str, source: str, modules) -> List[Import]:
    """Every import of ``module`` (its ``source``), relative ones resolved against the names in ``modules``."""
    found: List[Import] = []

    def visit(node, scope: str, function: Optional[str]):  # scope: the qualified name of the enclosing def/class
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                name = ".".join(filter(None, (scope, getattr(child, "name", "<lambda>"))))
                visit(child, name, function if isinstance(child, ast.ClassDef) else name)
                continue
            if isinstance(child, ast.Import):
                found.extend(Import(module, alias.name, child.lineno, function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = module.split(".") if _is_package(module, modules) else module.split(".")[:-1]
                    package = package[:len(package) - (child.level - 1)]
                    base = ".".join(package + ([child.module] if child.module else []))
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    found.append(Import(module, candidate if candidate in modules else base, child.lineno, function))
            visit(child, scope, function)

    visit(ast.parse(source), "", None)
    return list(dict.fromkeys(found))  # `from X import a, b` of two names in X: one import of X


def layer_of(module: str) -> Optional[int]:
    """Index of ``module``'s layer in :data:`LAYERS`; None for the package root and other unlayered modules."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[0] == PACKAGE and parts[1] in LAYERS else None


def layer_problems(sources: Dict[str, str]) -> List[str]:
    """Imports of a higher layer (or of the package root) by a layered module."""
    problems = []
    for module, source in sources.items():
        if module in EXEMPT:
            continue
        own = layer_of(module)
        for imp in imports_of(module, source, sources):
            if imp.target != PACKAGE and not imp.target.startswith(PACKAGE + "."):
                continue
            target = layer_of(imp.target)
            if own is None or target is None or target > own:
                problems.append(f"{imp}: layer {_layer_name(imp.module)} may import only from "
                                f"{', '.join(LAYERS[:own + 1]) if own is not None else 'no layer'}, not from "
                                f"{_layer_name(imp.target)}")
    return problems


def _layer_name(module: str) -> str:
    layer = layer_of(module)
    return LAYERS[layer] if layer is not None else f"'{module}' (no layer)"


def cycle_problems(sources: Dict[str, str]) -> List[str]:
    """One line per circle of the import graph between the package's modules (top-level and inner imports)."""
    edges: Dict[str, Dict[str, Import]] = {module: {} for module in sources}
    for module, source in sources.items():
        for imp in imports_of(module, source, sources):
            if imp.target in sources and imp.target != module:
                edges[module].setdefault(imp.target, imp)
    problems, state, stack = [], {}, []

    def visit(module):  # depth-first search; a grey module met again closes a circle
        state[module] = "grey"
        stack.append(module)
        for target, imp in edges[module].items():
            if state.get(target) == "grey":
                circle = stack[stack.index(target):] + [target]
                links = [str(edges[a][b]) for a, b in zip(circle, circle[1:])]
                problems.append(f"import circle {' -> '.join(circle)}: " + "; ".join(links))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "black"

    for module in sorted(sources):
        if module not in state:
            visit(module)
    return problems


def argparse_problems(sources: Dict[str, str]) -> List[str]:
    """Imports of argparse outside the cli layer."""
    return [f"{imp}: only fewshot_bench.cli may use argparse (pass plain values below it)"
            for module, source in sources.items() if layer_of(module) != LAYERS.index("cli")
            for imp in imports_of(module, source, sources) if imp.target.split(".")[0] == "argparse"]


def inner_problems(sources: Dict[str, str], allowed=None) -> List[str]:
    """Imports inside a function that :data:`INNER_ALLOWED` does not list, and entries of it that match nothing."""
    allowed = INNER_ALLOWED if allowed is None else allowed
    problems, used = [], set()
    for module, source in sources.items():
        for imp in imports_of(module, source, sources):
            if imp.function is None:
                continue
            key = next((k for k in ((module, imp.target), (module, imp.target.split(".")[0]), (module, "*"))
                        if k in allowed), None)
            if key is None:
                problems.append(f"{imp}: an import inside a function; move it to the top of the module (or, for an "
                                f"optional extra, list it in test_layout.INNER_ALLOWED with the reason)")
            used.add(key)
    problems += [f"test_layout.INNER_ALLOWED lists {module} importing {target} inside a function, which it no longer "
                 f"does: remove the entry" for module, target in allowed
                 if (module, target) not in used and target != "*" and module in sources]
    return problems


def length_problems(sources: Dict[str, str], limit: int = MAX_LINES, exceptions=None) -> List[str]:
    exceptions = LONG_MODULES if exceptions is None else exceptions
    lines = {module: len(source.splitlines()) for module, source in sources.items()}
    return [f"{module}: {count} lines, over {limit}; split it by subject"
            for module, count in lines.items() if count > limit and module not in exceptions] + \
        [f"test_layout.LONG_MODULES lists {module}, which is {lines.get(module, 0)} lines now, not over {limit}: "
         f"remove it from the list" for module in exceptions if lines.get(module, 0) <= limit]


def _assert_none(problems: List[str]) -> None:
    assert not problems, "\n" + "\n".join(problems)


def test_no_upward_import():
    _assert_none(layer_problems(package_sources()))


def test_no_import_circle():
    _assert_none(cycle_problems(package_sources()))


def test_argparse_only_in_cli():
    _assert_none(argparse_problems(package_sources()))


def test_imports_at_module_top():
    _assert_none(inner_problems(package_sources()))


def test_module_length():
    _assert_none(length_problems(package_sources()))


def test_every_layer_is_a_folder():
    folders = {path.name for path in ROOT.iterdir() if path.is_dir() and (path / "__init__.py").is_file()}
    assert set(LAYERS) <= folders, f"layers without a folder: {sorted(set(LAYERS) - folders)}"
    loose = [m for m in package_sources() if layer_of(m) is None and m not in EXEMPT]
    assert not loose, f"modules outside every layer: {loose}"


# --- each check fails on a synthetic package --------------------------------------------------------------------

SYNTHETIC = {
    "fewshot_bench": "from .core import errors\n",
    "fewshot_bench.core": "",
    "fewshot_bench.core.errors": "import argparse\n",
    "fewshot_bench.store": "",
    "fewshot_bench.store.results": "from . import shards\n",
    "fewshot_bench.store.shards": "from .results import ResultsStore\n",
    "fewshot_bench.analysis": "",
    "fewshot_bench.analysis.pairs": ("from ..store import results\n\n\ndef cli_compare(args):\n"
                                     "    from ..report.leaderboard import load_entries\n"),
    "fewshot_bench.report": "",
    "fewshot_bench.report.leaderboard": "import numpy\n",
    "fewshot_bench.cli": "",
    "fewshot_bench.cli.app": "import argparse\nfrom ..report import leaderboard\n" + "x = 1\n" * 500,
}


def test_synthetic_imports_are_resolved():
    by_line = {(i.module, i.target, i.function) for m, s in SYNTHETIC.items() for i in imports_of(m, s, SYNTHETIC)}
    assert ("fewshot_bench.store.results", "fewshot_bench.store.shards", None) in by_line
    assert ("fewshot_bench.analysis.pairs", "fewshot_bench.report.leaderboard", "cli_compare") in by_line
    assert ("fewshot_bench.cli.app", "fewshot_bench.report.leaderboard", None) in by_line


def test_layer_check_can_fail():
    (problem,) = layer_problems(SYNTHETIC)
    assert problem.startswith("fewshot_bench.analysis.pairs:5 (in cli_compare) imports "
                              "fewshot_bench.report.leaderboard")
    assert "layer analysis may import only from core, data, episodes, store, methods, analysis, not from report" \
        in problem


def test_cycle_check_can_fail():
    (problem,) = cycle_problems(SYNTHETIC)
    assert "fewshot_bench.store.results -> fewshot_bench.store.shards -> fewshot_bench.store.results" in problem
    assert "fewshot_bench.store.shards:1 imports fewshot_bench.store.results" in problem


def test_argparse_check_can_fail():
    (problem,) = argparse_problems(SYNTHETIC)  # cli.app may
    assert problem.startswith("fewshot_bench.core.errors:1 imports argparse")


def test_inner_import_check_can_fail():
    (problem,) = inner_problems(SYNTHETIC, allowed={})
    assert problem.startswith("fewshot_bench.analysis.pairs:5 (in cli_compare) imports "
                              "fewshot_bench.report.leaderboard")
    assert not inner_problems(SYNTHETIC, allowed={("fewshot_bench.analysis.pairs", "fewshot_bench.report.leaderboard"):
                                                  "why"})
    (stale,) = inner_problems(SYNTHETIC, allowed={
        ("fewshot_bench.analysis.pairs", "fewshot_bench.report.leaderboard"): "why",
        ("fewshot_bench.report.leaderboard", "numpy"): "no longer imported inside a function"})
    assert "INNER_ALLOWED lists fewshot_bench.report.leaderboard importing numpy" in stale


def readme_layout_problems(readme: str, sources: Dict[str, str]) -> List[str]:
    """Modules (or subpackages, named ``name/``) of a layer folder that the README's layout table (row
    ``| `folder/` | ...``) does not name."""
    rows = {line.split("|")[1].strip().strip("`/"): line for line in readme.splitlines() if line.startswith("| `")}
    problems = []
    for module in sorted(sources):
        parts = module.split(".")
        row = rows.get(parts[1], "") if len(parts) == 3 and parts[1] in LAYERS else None
        if row is not None and f"`{parts[2]}`" not in row and f"`{parts[2]}/`" not in row:
            problems.append(f"README.md's layout table does not name {parts[1]}/{parts[2]}: add it to the "
                            f"`{parts[1]}/` row with its job")
    return problems


def test_readme_layout_table_names_every_module():
    _assert_none(readme_layout_problems((ROOT.parent / "README.md").read_text(encoding="utf-8"), package_sources()))


def test_readme_layout_check_can_fail():
    readme = "| `core/` | `errors` (one-line errors) |\n"
    assert readme_layout_problems(readme, {"fewshot_bench.core.errors": "", "fewshot_bench.core.config": ""}) == [
        "README.md's layout table does not name core/config: add it to the `core/` row with its job"]


def test_length_check_can_fail():
    (problem,) = length_problems(SYNTHETIC, exceptions={})
    assert problem.startswith("fewshot_bench.cli.app: 502 lines, over 400")
    assert not length_problems(SYNTHETIC, exceptions={"fewshot_bench.cli.app": "why"})
    (stale,) = length_problems(SYNTHETIC, exceptions={"fewshot_bench.cli.app": "why", "fewshot_bench.core.errors": "why"})
    assert stale.startswith("test_layout.LONG_MODULES lists fewshot_bench.core.errors, which is 1 lines")


@pytest.mark.parametrize("module", ["fewshot_bench.__main__", "fewshot_bench"])
def test_front_doors_are_exempt(module):
    sources = {**SYNTHETIC, module: "from .cli.app import main\n"}
    assert not [p for p in layer_problems(sources) if p.startswith(module + ":")]


if __name__ == "__main__":  # print the graph: python tests/test_layout.py
    sources = package_sources()
    for name, text in sources.items():
        imports = imports_of(name, text, sources)
        top = sorted({i.target.replace(PACKAGE + ".", "") for i in imports if i.function is None
                      and i.target.startswith(PACKAGE + ".")})
        inner = sorted({i.target.replace(PACKAGE + ".", "") for i in imports if i.function is not None})
        print(name, "->", " ".join(top), ("| INNER " + " ".join(inner)) if inner else "")
    for check in (layer_problems, cycle_problems, argparse_problems, inner_problems, length_problems):
        print(f"\n{check.__name__}:", *check(sources), sep="\n  ")
