"""Output files: checked before a command does any work, written atomically when it is done.

:func:`check_writable` refuses an output path that cannot be written (a folder, a file where a folder must be,
no write permission) with a one-line :class:`UserError`, without creating anything. :func:`atomic_files`
writes a group of files to temporary names beside them and renames them into place only when every one was
written, so a killed or failing command leaves the old files (or none), never a mix of old and new.
:func:`print_table` prints the commands' text tables.
"""
from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from glob import escape as glob_escape
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

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


SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")
LEADERBOARD_SUFFIXES = ("", ".md", "_overall.csv", "_folds.csv", ".png", "_summary.md", ".html")


def leaderboard_paths(out) -> List[Path]:
    """The fixed files of a leaderboard written at ``out`` (its forest plots go in the ``<stem>_cells/`` folder).
    An ``out`` whose name is one of the names derived from its stem (``lb.html``, ``lb.md``, ``lb.png``,
    ``lb_summary.md``...) is refused in one line: two outputs would share one file."""
    out = Path(out)
    derived = [out.with_name(out.stem + suffix) for suffix in LEADERBOARD_SUFFIXES[1:]]
    for path, suffix in zip(derived, LEADERBOARD_SUFFIXES[1:]):
        if path.name == out.name:
            raise UserError(f"--out {out}: the leaderboard also writes its {suffix} file as {path.name} (named from "
                            f"the stem '{out.stem}'), the same file; give a CSV name such as "
                            f"{out.with_name(out.stem + '.csv')}")
    return [out] + derived + [out.with_name(out.stem + "_cells") / "cell.png"]


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or quota) is full: OSError ENOSPC/EDQUOT, or SQLite's "database or disk is
    full"."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)


def disk_full_message(exc: BaseException, path=None) -> str:
    """One line naming the file (``exc.filename``, else ``path``) and that the disk is full."""
    name = getattr(exc, "filename", None) or path or "an output file"
    return (f"cannot write {name}: the disk is full ({getattr(exc, 'strerror', None) or exc}); nothing half-written "
            f"was kept (finished episodes stay in the store): free space, then run the command again")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.abspath(a) == os.path.abspath(b) or a.resolve() == b.resolve()


def check_store_path(path, flag: str = "--store") -> None:
    """Refuse a results-store path SQLite would not keep on disk (``:memory:``, empty, a ``file:`` URI)."""
    text = str(path)
    if not text.strip() or text.startswith(":memory:") or text.startswith("file:") or text.startswith(":"):
        raise UserError(f"{flag} '{text}' is not a file path (SQLite would keep it in memory or parse it as a URI, "
                        f"and every episode would be lost); give a file such as runs/results.sqlite")


def _with_companions(path, what: str) -> List[tuple]:
    """(path, description) of ``path`` and, for a results store, its -wal/-shm/-journal files."""
    store = "store" in what or str(path).endswith((".sqlite", ".db"))
    return [(Path(f"{path}{c}"), f"{what} {path}" + (f" (its {c[1:]} file)" if c else ""))
            for c in (SQLITE_COMPANIONS if store else ("",))]


def check_outputs(outputs: Iterable[tuple], inputs: Iterable[tuple] = ()) -> None:
    """Refuse before anything is written: an output path that cannot be written (:func:`check_writable`), that is
    an input (or a store's -wal/-shm/-journal file) or that two outputs share. ``outputs``/``inputs``: (path,
    what it is, e.g. '--out'); a results store is named by a ``what`` holding 'store'. None/'' paths are skipped."""
    named_inputs = [pair for path, what in inputs if path not in (None, "") for pair in _with_companions(path, what)]
    seen: List[tuple] = []
    done = set()
    for path, what in outputs:
        if path in (None, "") or (str(path), what) in done:  # the same output named twice
            continue
        done.add((str(path), what))
        target = Path(path)
        if "store" in what:
            check_store_path(path, what)
        check_writable(target, what)
        for other, name in named_inputs:
            if _same_file(target, other):
                raise UserError(f"{what} {path} is {name}, an input of this command; writing it would destroy it: "
                                f"choose another output path")
        for other, name in seen:
            if _same_file(target, other):
                raise UserError(f"{what} {path} and {name} are the same file; choose different paths")
        seen += _with_companions(path, what)


@contextlib.contextmanager
def atomic_files(paths: Sequence) -> Iterator[List[Path]]:
    """Yield temporary paths (same folder and suffix as ``paths``); on success rename each onto its target.

    On an exception the temporary files are removed and the targets stay as they were.
    """
    targets = [Path(p) for p in paths]
    created: List[Path] = []  # folders made here, removed again (when empty) if writing fails
    for target in targets:
        missing = [f for f in [target.parent, *target.parent.parents] if not f.exists()]
        target.parent.mkdir(parents=True, exist_ok=True)
        created += [f for f in missing if f not in created]
        _remove_stale_temps(target)
    temps = [t.with_name(f".{t.stem}.tmp{os.getpid()}{t.suffix}") for t in targets]
    done = False
    try:
        yield temps
        for temp, target in zip(temps, targets):
            os.replace(temp, target)
        done = True
    except Exception as exc:
        if disk_full(exc):
            raise UserError(disk_full_message(exc, targets[0].parent)) from exc
        raise
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
        if not done:
            for folder in sorted(created, key=lambda f: len(f.parts), reverse=True):  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _remove_stale_temps(target: Path) -> None:
    """Remove the temporary files of ``target`` left by a killed writer (``.<stem>.tmp<PID><suffix>`` whose process
    is gone); a live writer's are left alone."""
    for temp in target.parent.glob(f".{glob_escape(target.stem)}.tmp*{glob_escape(target.suffix)}"):
        pid = temp.name[len(target.stem) + 5:len(temp.name) - len(target.suffix) or None]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            temp.unlink(missing_ok=True)
        except OSError:  # alive, another user's
            continue


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print text ``rows`` under ``header`` in left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
