"""sha256-derived keys: the config hash of stored runs and seeds derived from keys (stable across processes
and platforms)."""
from __future__ import annotations

import hashlib
import json


def config_hash(config: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of a run config."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def hash_seed(text: str, n_bytes: int = 4) -> int:
    """The first ``n_bytes`` of sha256(``text``) as a little-endian unsigned integer."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:n_bytes], "little")


def derived_seed(*key) -> int:
    """A 32-bit seed derived from ``key`` (its ``repr``)."""
    return hash_seed(repr(key))
