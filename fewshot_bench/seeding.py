"""Seeds derived from keys: one sha256-based derivation, stable across processes and platforms."""
from __future__ import annotations

import hashlib


def hash_seed(text: str, n_bytes: int = 4) -> int:
    """The first ``n_bytes`` of sha256(``text``) as a little-endian unsigned integer."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:n_bytes], "little")


def derived_seed(*key) -> int:
    """A 32-bit seed derived from ``key`` (its ``repr``)."""
    return hash_seed(repr(key))
