"""How leaderboard/readme_numbers.py writes numbers and text: Markdown paragraphs wrapped at :data:`WIDTH`, bullets,
tables and listings, and the formats of counts, signed differences, CIs, shares, p-values, d_z and hours, and of the
method and setting names (``base``, ``shot``). Pure functions of their arguments; nothing here reads the store."""
from __future__ import annotations

import re
import textwrap
from typing import Iterable, Optional, Sequence

WIDTH = 118              # generated paragraphs are wrapped at this width


def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(text, WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def paragraph(*sentences: str) -> str:
    return _wrap(" ".join(s for s in sentences if s)) + "\n"


def bullet(*sentences: str) -> str:
    return _wrap("- " + " ".join(s for s in sentences if s), "  ") + "\n"


def table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def listing(items: Sequence[str], empty: str = "none") -> str:
    items = list(items)
    if not items:
        return empty
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def code(name: str) -> str:
    return f"`{name}`"


def n(value: int) -> str:
    return f"{value:,}"


def signed(value: float, digits: int = 3) -> str:
    return f"{value:+.{digits}f}"


def ci(low: Optional[float], high: Optional[float], digits: int = 3) -> str:
    return "-" if low is None or high is None else f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def pct(share: Optional[float], digits: int = 1) -> str:
    return "-" if share is None else f"{100 * share:.{digits}f}%"


def points(delta: float) -> str:
    return f"{100 * delta:+.1f}"


def pvalue(p: Optional[float]) -> str:
    """The leaderboard stores p rounded to 6 decimals, so 0 reads as below that."""
    return "-" if p is None else "< 1e-06" if p == 0 else f"{p:.2g}"


def dz(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:+.2f}"


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def span(values: Sequence[float], spec: str = ".3f", sep: str = " to ") -> str:
    values = sorted(values)
    if not values:
        return "-"
    low, high = format(values[0], spec), format(values[-1], spec)
    return low if low == high else f"{low}{sep}{high}"


def base(method: str) -> str:
    """``sgg[tuned]`` / ``sgg(lr=0.0005)`` -> ``sgg``."""
    return method.split("[")[0].split("(")[0]


def shot(setting: str) -> str:
    return re.search(r"way(\d+(?:-\d+)?)shot", setting).group(1)
