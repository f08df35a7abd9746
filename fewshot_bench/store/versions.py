"""Which code wrote a row: this package's version (installed, or a source checkout's ``+src``), the main
libraries' versions and the git commit of the checkout, as the results store records them with every run."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


def package_version() -> str:
    """The installed distribution's version; from a source checkout that is not installed (or whose
    installed version differs), ``pyproject.toml``'s version plus ``+src``."""
    installed = _version("fewshot-bench")
    source = _source_version()
    if source is None or source == installed:
        return installed or "unknown+src"
    return f"{source}+src"


def _source_version() -> Optional[str]:
    """``project.version`` of the checkout this package is imported from, or None when not in a checkout."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return project.get("version") if project.get("name") == "fewshot-bench" else None


def library_versions() -> Dict[str, Optional[str]]:
    """Python's, the project's and the main libraries' versions (None: not installed)."""
    return {"python": platform.python_version(), "fewshot_bench": package_version(),
            **{name: _version(name) for name in ("torch", "transformers", "peft", "datasets")}}


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> Optional[str]:
    """``git rev-parse HEAD`` in this package's source folder, or None outside a checkout."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None
