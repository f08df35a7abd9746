"""argparse ``type=`` converters of the command-line options: one-line errors, limits every config also enforces."""
from __future__ import annotations

import argparse
import math

from ..core.config import MAX_INT


def finite_float(text) -> float:
    """``text`` as a finite float (argparse ``type=`` of every float option; NaN and inf refused)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number; give a number such as 0.05")
    return value


def bounded_int(text) -> int:
    """``text`` as an integer within SQLite's range (argparse ``type=`` of every integer option)."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if abs(value) > MAX_INT:
        raise argparse.ArgumentTypeError(f"{text} is beyond the largest integer allowed ({MAX_INT})")
    return value


def positive_int(text) -> int:
    """``text`` as an integer >= 1 (argparse ``type=`` of counts such as ``--bootstrap``)."""
    value = bounded_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer; give 1 or more")
    return value
