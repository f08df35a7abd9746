"""Content fingerprints of stored episodes: what each episode's texts hashed to when it was first stored.

An episode's ``fingerprint`` hashes its classes, example ids and labels; its content hash
(:func:`fewshot_bench.episodes.sampling.content_sha256`) adds every support and query text. A store keeps one content
hash per (task, fingerprint) in its ``episode_content`` table; a store without the table (written before it existed)
reads as having none, and a writer adds it. Contracts:
  * :func:`check_and_record`: a run records the content of the episodes it is about to evaluate or skip and refuses
    (UserError, nothing written) when a stored content hash differs: the data changed under the same ids and labels,
    so new rows would not be comparable with the stored ones.
  * :func:`merge`: a merge copies the table, and :func:`conflicts` names any (task, fingerprint) whose content the
    shards and the target disagree on (checked before anything is merged).
  * ``validate`` compares the stored hashes with the regenerated episodes' (:func:`stored`).
"""
from __future__ import annotations

import sqlite3
from typing import Dict, Iterable, List, Tuple

from ..core.errors import UserError
from ..episodes.sampling import Episode, content_sha256

TABLE = "episode_content"
_CREATE = (f"CREATE TABLE IF NOT EXISTS {TABLE} (task TEXT NOT NULL, fingerprint TEXT NOT NULL, "
           f"content_sha256 TEXT NOT NULL, PRIMARY KEY (task, fingerprint))")


def has_table(conn: sqlite3.Connection, schema: str = "main") -> bool:
    return conn.execute(f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?",
                        (TABLE,)).fetchone() is not None


def stored(conn: sqlite3.Connection, schema: str = "main") -> Dict[Tuple[str, str], str]:
    """{(task, fingerprint): content sha256} of a store (empty without the table)."""
    if not has_table(conn, schema):
        return {}
    return {(task, fp): digest for task, fp, digest in
            conn.execute(f"SELECT task, fingerprint, content_sha256 FROM {schema}.{TABLE}")}


def changed(known: Dict[Tuple[str, str], str], episodes: Iterable[Episode]) -> List[Tuple[Episode, str, str]]:
    """(episode, stored hash, current hash) of each episode whose content differs from ``known``."""
    out = []
    for episode in episodes:
        before = known.get((episode.task, episode.fingerprint))
        if before is not None:
            now = content_sha256(episode)
            if now != before:
                out.append((episode, before, now))
    return out


def check_and_record(conn: sqlite3.Connection, where: str, episodes: List[Episode],
                     also: Iterable[Dict[Tuple[str, str], str]] = ()) -> int:
    """Refuse (UserError naming the store, task and episode) when an episode's stored content (in this store or in
    the read-only maps ``also``) differs from its texts now; else record the content of those not yet stored.
    Returns the number recorded."""
    known = {}
    for other in also:
        known.update(other)
    known.update(stored(conn))
    bad = changed(known, episodes)
    if bad:
        episode, before, now = bad[0]
        raise UserError(f"{where}: episode {episode.index} of task '{episode.task}' ({episode.pool} pool, fold "
                        f"{episode.fold}) has its stored ids and labels but other texts (content sha256 {before[:12]} "
                        f"stored, {now[:12]} now; {len(bad)} episode(s) differ): the data changed since these rows "
                        f"were stored; restore the data the store was computed from (its runs' data_json names the "
                        f"files) or write to a new --store")
    new = {(e.task, e.fingerprint): content_sha256(e) for e in episodes if (e.task, e.fingerprint) not in known}
    with conn:
        conn.execute(_CREATE)
        conn.executemany(f"INSERT OR IGNORE INTO {TABLE} (task, fingerprint, content_sha256) VALUES (?, ?, ?)",
                         [(task, fp, digest) for (task, fp), digest in new.items()])
    return len(new)


def conflicts(conn: sqlite3.Connection, paths) -> List[str]:
    """One line per (task, fingerprint) whose content hash differs between the store ``conn`` and the shard files
    ``paths`` or between two of the shards (each shard read once, read-only)."""
    known = {key: ("the store", digest) for key, digest in stored(conn).items()}
    problems = []
    for path in paths:
        shard = sqlite3.connect(path, timeout=60)  # not mode=ro: that would leave a WAL shard's -wal/-shm behind
        try:
            theirs = stored(shard)
        finally:
            shard.close()
        for (task, fp), digest in sorted(theirs.items()):
            where, before = known.setdefault((task, fp), (str(path), digest))
            if before != digest:
                problems.append(f"shard '{path}': {TABLE}: task '{task}' episode {fp[:12]}...: content sha256 "
                                f"{digest[:12]}, but {before[:12]} in {where} (expected one content per episode: "
                                f"one of them was computed from other data)")
    return problems


def merge(conn: sqlite3.Connection, schema: str = "shard") -> int:
    """Copy the attached ``schema``'s content hashes into main (inside the caller's transaction); returns rows added."""
    if not has_table(conn, schema):
        return 0
    conn.execute(_CREATE)
    before = conn.total_changes
    conn.execute(f"INSERT OR IGNORE INTO main.{TABLE} SELECT task, fingerprint, content_sha256 FROM {schema}.{TABLE}")
    return conn.total_changes - before
