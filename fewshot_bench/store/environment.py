"""The environment a run executed in (its *fingerprint*), as stored with every run and shown on the leaderboard.

A fingerprint is a flat dict of text values: the project's and the libraries' versions (``PACKAGES``), Python,
the device (``cpu``, ``cuda:0``) and its name, the compute dtype (the autocast dtype, else ``float32``), torch's
intra-op thread count and the OS. It is written to the store's ``runs.environment_json`` by the runner.
A store written before that column existed still has each run's ``versions_json`` and ``device``:
:func:`of_run` rebuilds what those say and leaves the rest as ``NOT_RECORDED``.
"""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Dict, List, Optional

from .results import ResultsStore
from .versions import library_versions

NOT_RECORDED = "not recorded"
# the order fingerprints are shown in; version keys come from versions.library_versions
FIELDS = ("fewshot_bench", "torch", "transformers", "peft", "datasets", "python", "device", "device_name", "dtype",
          "threads", "os")


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(device: str, autocast_dtype=None) -> Dict[str, str]:
    """This process's environment for a run on ``device`` (``cpu``, ``cuda``, ``cuda:N``) with
    ``autocast_dtype`` (None: float32)."""
    import torch

    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else _cpu_name()
    dtype = str(autocast_dtype).replace("torch.", "") if autocast_dtype is not None else "float32"
    versions = {key: value or "not installed" for key, value in library_versions().items()}
    return {**versions, "device": device, "device_name": name, "dtype": dtype,
            "threads": str(torch.get_num_threads()), "os": platform.platform()}


def of_run(run: dict) -> Dict[str, str]:
    """The fingerprint of a stored ``runs`` row: ``environment_json`` when recorded, else the versions and device
    an earlier store holds, every other field ``NOT_RECORDED``."""
    recorded = run.get("environment_json")
    if recorded:
        stored = json.loads(recorded)
    else:
        stored = {**json.loads(run.get("versions_json") or "{}"), "device": run.get("device")}
    return {key: str(stored[key]) if stored.get(key) is not None else NOT_RECORDED for key in FIELDS}


def differences(a: Dict[str, str], b: Dict[str, str]) -> List[tuple]:
    """(field, value in a, value in b) for each field in which two fingerprints differ (field order)."""
    return [(key, a.get(key, NOT_RECORDED), b.get(key, NOT_RECORDED)) for key in FIELDS
            if a.get(key, NOT_RECORDED) != b.get(key, NOT_RECORDED)]


def describe(env: Dict[str, str]) -> str:
    """One line: ``fewshot_bench 0.1.0, torch 2.13.0+cpu, ..., device cpu (Intel ...), dtype float32, ...``."""
    return ", ".join(f"{key} {env[key]}" + (f" ({env['device_name']})" if key == "device" else "")
                     for key in FIELDS if key != "device_name")


def store_environments(store_path) -> List[dict]:
    """The distinct fingerprints of a store's runs that wrote episodes, each as ``{"environment": fingerprint,
    "runs": count, "episodes": {method: episodes}}``, the most episodes first."""
    with ResultsStore(store_path, create=False) as store:
        runs = {run["run_id"]: of_run(run) for run in store.runs()}
        counts = store.conn.execute("SELECT run_id, method, COUNT(*) FROM episodes GROUP BY run_id, method").fetchall()
    by_env: Dict[str, dict] = {}
    for run_id, method, episodes in counts:
        env = runs.get(run_id, dict.fromkeys(FIELDS, NOT_RECORDED))
        entry = by_env.setdefault(json.dumps(env, sort_keys=True), {"environment": env, "runs": set(), "episodes": {}})
        entry["runs"].add(run_id)
        entry["episodes"][method] = entry["episodes"].get(method, 0) + episodes
    result = [{**e, "runs": len(e["runs"])} for e in by_env.values()]
    return sorted(result, key=lambda e: -sum(e["episodes"].values()))


def markdown_section(environments: List[dict], title: Optional[str] = "## Environment") -> List[str]:
    """Markdown lines: each distinct environment (one line) and the methods that ran in it."""
    lines = [title, ""] if title else []
    for number, entry in enumerate(environments, 1):
        methods = ", ".join(f"{m} ({n})" for m, n in sorted(entry["episodes"].items()))
        lines.append(f"- **environment {number}** ({entry['runs']} run(s)): {describe(entry['environment'])}; "
                     f"episodes: {methods}")
    return lines + [""]
