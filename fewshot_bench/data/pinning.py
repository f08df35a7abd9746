"""The data files a task card was written for: their sha256, pinned in the card and recorded with every run.

A card may pin ``source.sha256: {FILE: HEX}`` for files of its local data folder (the split files, the class-splits
file). :func:`check_pinned` refuses a local copy whose pinned file is missing or has another sha256, naming the file,
both hashes and the fix; data read from the hub (no local copy) is not checked here. :func:`data_record` is what a run
stores in ``runs.data_json``: per task read, the card version, the folder and each present file's sha256 (pinned or not).
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Dict, Iterable, Optional

from ..core.errors import UserError
from .cards import TaskConfig, get_task_config

_CHUNK = 1 << 20


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (cached per path, size and modification time)."""
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def check_pinned(config: TaskConfig, folder: Optional[Path]) -> None:
    """Refuse (UserError) a local data folder whose files differ from the card's ``source.sha256`` pins."""
    pins = config.source.sha256 or {}
    if folder is None or not folder.is_dir() or not pins:
        return
    for name, expected in sorted(pins.items()):
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path}: missing, but task '{config.name}' pins source.sha256 for it; restore the file "
                            f"the card was written for (its SOURCE.md says where from)")
        actual = file_sha256(path)
        if actual != expected:
            raise UserError(f"{path}: sha256 {actual[:16]}... differs from task '{config.name}''s pinned "
                            f"source.sha256 {expected[:16]}...; restore the file the card was written for, or bump the "
                            f"card's version and pin the new sha256 (episodes of other data are other episodes)")


def folder_files(config: TaskConfig, folder: Path) -> Dict[str, str]:
    """{file name: sha256} of the files of ``folder`` the card reads or pins (split files of any format, the
    class-splits file, pinned files) that exist."""
    wanted = set(config.source.sha256 or {})
    if config.pools.class_splits_file:
        wanted.add(config.pools.class_splits_file)
    for split in config.splits:
        wanted.update(p.name for p in folder.glob(f"{split}.*"))
    return {name: file_sha256(folder / name) for name in sorted(wanted) if (folder / name).is_file()}


def data_record(tasks: Iterable[str], folder_of) -> Dict[str, dict]:
    """``runs.data_json``: for each task, ``{"version", "local_dir", "files": {name: sha256}}`` (``files`` empty
    when no local copy was found, e.g. data read from the hub). ``folder_of(config)``: its local folder or None
    (:func:`fewshot_bench.data.loading.local_folder`)."""
    record = {}
    for name in sorted(set(tasks)):
        config = get_task_config(name)
        folder = folder_of(config)
        files = folder_files(config, folder) if folder is not None and folder.is_dir() else {}
        record[name] = {"version": config.version, "local_dir": config.source.local_dir, "files": files}
    return record
