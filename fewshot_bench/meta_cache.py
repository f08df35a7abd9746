"""On-disk cache of meta-trained method state (``Method.state_dict()``), as safetensors files.

Root: ``$FEWSHOT_BENCH_CACHE``, else ``~/.cache/fewshot_bench``; files ``<root>/meta/<key>.safetensors``,
the key chosen by the runner (a hash of the run hash, setting, autocast dtype and source data). Writes are
atomic, so ranks of a sharded run can share the folder.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

CACHE_ENV = "FEWSHOT_BENCH_CACHE"

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "fewshot_bench"))


def meta_state_path(key: str) -> Path:
    return cache_root() / "meta" / f"{key}.safetensors"


def save_meta_state(path: Path, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> None:
    """Write ``tensors`` atomically (a concurrent reader sees the whole file or none); a failure is logged."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not cache meta-trained state at %s: %s", path, exc)
        return
    log.info("saved meta-trained state to %s", path)


def load_meta_state(path: Path) -> Optional[Tuple[Dict[str, torch.Tensor], Dict[str, str]]]:
    """(tensors, string metadata) cached at ``path``; None when there is no file or it cannot be read (then
    meta-train again)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return load_file(str(path)), metadata
    except Exception as exc:  # a corrupt or foreign file: meta-train again and overwrite it
        log.warning("could not read cached meta-trained state %s (%s); meta-training again", path, exc)
        return None
