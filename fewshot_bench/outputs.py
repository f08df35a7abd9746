"""Output files: checked before a command does any work, written atomically when it is done.

:func:`check_writable` refuses an output path that cannot be written (a folder, a file where a folder must be,
no write permission) with a one-line :class:`UserError`, without creating anything. :func:`atomic_files`
writes a group of files to temporary names beside them and renames them into place only when every one was
written, so a killed or failing command leaves the old files (or none), never a mix of old and new.
:func:`print_table` prints the commands' text tables.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, List, Sequence

from .errors import UserError


def check_writable(path, flag: str) -> None:
    """Raise a one-line UserError unless ``path`` can be created or overwritten (folders are created later)."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file path, e.g. {Path(path) / 'results'}")
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{flag} {path}: {folder} is a file, not a folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UserError(f"{flag} {path}: no permission to write in {folder}; choose a writable path")


@contextlib.contextmanager
def atomic_files(paths: Sequence) -> Iterator[List[Path]]:
    """Yield temporary paths (same folder and suffix as ``paths``); on success rename each onto its target.

    On an exception the temporary files are removed and the targets stay as they were.
    """
    targets = [Path(p) for p in paths]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    temps = [t.with_name(f".{t.stem}.tmp{os.getpid()}{t.suffix}") for t in targets]
    try:
        yield temps
        for temp, target in zip(temps, targets):
            os.replace(temp, target)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print text ``rows`` under ``header`` in left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
