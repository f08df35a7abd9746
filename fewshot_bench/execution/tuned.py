"""Tuned-config files (written by ``fewshot-bench tune``, read by ``run --tuned`` and ``reproduce``).

Format: a YAML mapping with ``budget`` (the tuning study's budget) and ``settings``: {target setting label:
{method name: entry}}, an entry holding ``tuned`` (False: the method has no search space, its defaults were
evaluated) and ``overrides`` (the chosen config fields).
"""
from __future__ import annotations

from typing import Optional

from ..core.config import read_yaml
from ..core.errors import UserError


def load_tuned(path: str) -> dict:
    """The ``settings`` mapping of a tuned-config file, checked: {target setting label: {method: entry}}."""
    document = read_yaml(path, "--tuned")
    if not isinstance(document, dict) or not isinstance(document.get("settings"), dict):
        raise UserError(f"--tuned {path}: no 'settings' mapping; write the file with fewshot-bench tune")
    return document["settings"]


def tuned_overrides(tuned: dict, path: str, setting_label: str, method: str) -> Optional[dict]:
    """The chosen overrides of ``method`` for ``setting_label`` (None when that method is untuned there)."""
    entry = tuned.get(setting_label, {}).get(method)
    if entry is None:
        raise UserError(f"--tuned {path} has no config for {method} on {setting_label}; tune that setting "
                        f"(fewshot-bench tune --tasks ...) or leave {method} out")
    return entry["overrides"] if entry.get("tuned") else None
