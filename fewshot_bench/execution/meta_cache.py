"""On-disk cache of meta-trained method state (``Method.state_dict()``), as safetensors files.

Root: ``$FEWSHOT_BENCH_CACHE``, else ``~/.cache/fewshot_bench``; files ``<root>/meta/<key>.safetensors``,
the key chosen by the runner (a hash of the run hash, setting, autocast dtype and source data). Writes are
atomic, so ranks of a sharded run can share the folder. A file is used only if it matches what it claims: the
payload it was written for (kept in its metadata) and the tensor names and shapes the method expects.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

CACHE_ENV = "FEWSHOT_BENCH_CACHE"

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "fewshot_bench"))


def meta_state_path(key: str) -> Path:
    return cache_root() / "meta" / f"{key}.safetensors"


def save_meta_state(path: Path, tensors: Dict[str, torch.Tensor], payload: dict, metadata: Dict[str, str]) -> None:
    """Write ``tensors`` for ``payload`` atomically (a concurrent reader sees the whole file or none), with the
    string ``metadata``; a failure is logged."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={**metadata, "payload": payload_text(payload)})
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not cache meta-trained state at %s: %s", path, exc)
        return
    log.info("saved meta-trained state to %s", path)


def load_meta_state(path: Path, payload: dict, expected: Optional[Dict[str, tuple]] = None
                    ) -> Optional[Tuple[Dict[str, torch.Tensor], Dict[str, str]]]:
    """(tensors, string metadata) cached at ``path`` if the file was written for ``payload`` (what identifies
    the state: run hash, method config, setting, ...) and, when ``expected`` ({name: shape}) is given, holds
    exactly those names and shapes. None when there is no such file; a file that cannot be read or does not
    match is logged and not used (the caller meta-trains again and overwrites it)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # unreadable or not safetensors
        log.warning("cached meta-trained state %s unreadable (%s); meta-training again", path, exc)
        return None
    problem = None
    if metadata.get("payload") != payload_text(payload):
        problem = "it was written for another configuration"
    elif expected is not None and set(tensors) != set(expected):
        problem = f"its tensor names differ from this model's ({len(tensors)} vs {len(expected)})"
    elif expected is not None:
        wrong = [n for n, t in tensors.items() if tuple(t.shape) != tuple(expected[n])]
        if wrong:
            problem = f"tensor {wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}, expected {tuple(expected[wrong[0]])}"
    if problem:
        log.warning("cached meta-trained state %s not used: %s; meta-training again", path, problem)
        return None
    return tensors, metadata


def payload_text(payload: dict) -> str:
    """How ``payload`` is stored in a cache file's metadata (and compared on loading)."""
    return json.dumps(payload, sort_keys=True, default=str)
