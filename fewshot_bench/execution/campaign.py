"""``fewshot-bench campaign {status,run,merge}``: a resumable compute queue, many sessions long.

A campaign file (``leaderboard/campaign.yaml``) holds ``entries``: an ordered list of run configurations, each with
``suite`` and the keys of ``run``'s flags (:data:`ENTRY_KEYS`), built by :func:`run_config.build_config` exactly as
``fewshot-bench run --suite S --tasks ... --methods ...`` builds them (``tuned``: a tuned-config file, a relative
path read from the campaign file's folder). A **unit** is one (setting, method, restart)
of an entry with all its episodes; its store key is the one ``run`` writes (:func:`evaluate.cell_identity`,
:func:`evaluate.restart_hash`), so a unit is done whichever command stored it. Units queue in file order, within an
entry in ``run``'s order (setting, then method, then restart); a unit two entries plan is queued at its first.

An episode stored with status ok or diverged in the results store or in any shard ``DIR/shard<i>.sqlite`` is done.
The store is only read (read-only SQLite connections: never switched to WAL, never written) except by ``merge``,
which copies in complete units only and leaves the store in rollback-journal mode. ``run`` starts worker processes
(:data:`WORKER`, one torch thread each unless told otherwise), worker i writing only its shard, one
transaction per episode: killing it at any point loses at most the episodes in flight; running it again resumes."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import quote

from tqdm import tqdm

from ..core.config import read_yaml
from ..core.errors import UserError
from ..core.outputs import SQLITE_COMPANIONS, check_outputs, print_table
from ..data.cards import register_cards
from ..data.loading import get_task_data
from ..episodes.sampling import Setting
from ..store import content
from ..store.figures import copy_figures
from ..store.results import EPISODE_COLUMNS, KEY_COLUMNS, RUN_COLUMNS, ResultsStore, table_columns
from ..store.shards import check_no_conflicts
from .evaluate import cell_identity, restart_hash
from .run_config import RunConfig, build_config, method_specs, settings_of
from .runner import run as run_units
from .tuned import load_tuned

ENTRY_KEYS = ("suite", "tasks", "source_task", "n_way", "k_shot", "fold", "query", "episodes", "limit", "seed", "pool",
              "methods", "restarts", "method_config", "backbone", "tuned")
DEFAULT_EPISODE_SECONDS = 10.0  # a rate nothing stored measures: about one MiniLM full_ft 5-way 1-shot episode, 1 core
MAX_PROCESSES = 64
# a worker imports this very package (not whatever the working folder holds), then reads its job on stdin
WORKER = "import json, sys; sys.path.insert(0, sys.argv[1]); from fewshot_bench.execution.campaign import _worker; " \
         "sys.exit(_worker(json.load(sys.stdin)))"
Key = Tuple[str, str, str, str, str]  # (config_hash, method label, backbone, task, setting label): a unit in a store


@dataclass(frozen=True)
class Unit:
    """One (setting, method, restart) of a campaign entry: all its ``episodes`` (indices 0..episodes-1)."""
    position: int   # 1-based place in the queue
    entry: int      # index of its entry in the campaign file
    setting: Setting
    spec: str       # the entry's method spec (what ``runner.run(only=...)`` selects)
    label: str      # leaderboard name
    restart: int
    key: Key
    episodes: int
    meta_trained: bool

    def __str__(self) -> str:
        return f"{self.label} | {self.setting.label} | restart {self.restart}"


@dataclass
class Campaign:
    """A campaign file, parsed: one :class:`RunConfig` per entry and the units in queue order."""
    configs: List[RunConfig]
    units: List[Unit]


def entry_config(entry, where: str, folder: Path = Path(".")) -> RunConfig:
    """The run configuration of one entry: ``suite`` (default 'default') < the entry's keys, as ``run``'s flags; a
    relative ``tuned`` path is read from ``folder`` (the campaign file's)."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a mapping of run options, e.g. {{suite: core, methods: [sgg]}}; "
                        f"got {entry!r}")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; an entry takes {', '.join(ENTRY_KEYS)}")
    values = {key: entry.get(key) for key in ENTRY_KEYS}
    for key in ("tasks", "n_way", "k_shot", "method_config", "methods"):  # flags are lists (or comma-separated)
        if values[key] is not None and not isinstance(values[key], (list, tuple)):
            values[key] = [values[key]]
    values["methods"] = ",".join(map(str, values["methods"])) if values["methods"] is not None else None
    values["method_config"] = [str(item) for item in values["method_config"] or []]
    if values["tuned"] is not None and not Path(str(values["tuned"])).is_absolute():
        values["tuned"] = os.path.relpath(Path(folder, str(values["tuned"])))
    return build_config({**values, "out": ""})  # what the entry does not set is the suite's (no leaderboard)


def load_campaign(path) -> Campaign:
    """Parse and check a campaign file: its entries, methods and settings (no task data loaded, nothing written)."""
    if not Path(path).is_file():
        raise UserError(f"campaign file '{path}' does not exist; pass --file FILE, e.g. "
                        f"--file leaderboard/campaign.yaml")
    data = read_yaml(path, "campaign file")
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"campaign file {path}: expected 'entries:', a non-empty list of run configurations, "
                        f"e.g. entries: [{{suite: core, methods: [sgg]}}]")
    configs, units, seen = [], [], set()
    for number, entry in enumerate(entries):
        where = f"campaign file {path}, entry {number + 1}"
        try:
            config = entry_config(entry, where, Path(path).parent)
            episodes = min(config.episodes, config.limit) if config.limit else config.episodes
            tuned = load_tuned(config.tuned) if config.tuned else None
            for setting in settings_of(config):
                for spec, overrides in method_specs(config).items():
                    method, label, run_hash = cell_identity(config, spec, overrides, setting, tuned)
                    for restart in range(config.restarts):
                        key = (restart_hash(run_hash, restart), label, config.backbone, setting.task, setting.label)
                        if key not in seen:
                            seen.add(key)
                            units.append(Unit(len(units) + 1, number, setting, spec, label, restart, key, episodes,
                                              method.protocol == "meta-trained"))
        except UserError as exc:
            raise UserError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
        configs.append(config)
    return Campaign(configs, units)


def open_read_only(path) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``: nothing written, the journal mode left as it is) to an existing
    results store; a missing file, or one that is not a results store, is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"results store '{path}' does not exist (or is not a file); pass an existing store, e.g. "
                        f"--store leaderboard/results.sqlite")
    conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=60)
    try:
        if "episodes" not in {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}:
            raise sqlite3.DatabaseError("no 'episodes' table")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise UserError(f"{path}: not a results store ({exc}); pass a results store, e.g. "
                        f"--store leaderboard/results.sqlite") from None
    return conn


class Finished:
    """The episodes stored as done (ok or diverged) in some stores, read once through read-only connections.

    ``done_indices`` answers as :meth:`ResultsStore.done_indices` does (so it can be one of ``runner.run``'s
    ``finished``); ``content``: their content hashes (:func:`fewshot_bench.store.content.stored`); ``rows[key][index]``
    = (wall_seconds, meta_train_seconds, support + query texts) is what rates are measured from. An episode stored in
    several stores counts once (the first read; ``base``'s first)."""

    def __init__(self, paths: Iterable, base: Optional["Finished"] = None):
        self.rows: Dict[Key, Dict[int, tuple]] = {k: dict(v) for k, v in base.rows.items()} if base else {}
        self.content: Dict[Tuple[str, str], str] = dict(base.content) if base else {}  # store.content.stored
        names = ("config_hash", "method", "backbone", "task", "setting", "episode_index", "wall_seconds",
                 "meta_train_seconds", "n_way", "k_shot", "q_query")
        for path in paths:
            with contextlib.closing(open_read_only(path)) as conn:
                present = set(table_columns(conn, "episodes"))
                columns = ", ".join(c if c in present else "NULL" for c in names)
                for *key, index, wall, meta, n_way, k_shot, q_query in conn.execute(
                        f"SELECT {columns} FROM episodes WHERE status != 'failed'"):
                    shots = [float(k) for k in str(k_shot or 0).split("-")]
                    texts = n_way * (sum(shots) / len(shots) + q_query) if n_way and q_query else None
                    self.rows.setdefault(tuple(key), {}).setdefault(index, (wall, meta, texts))
                self.content = {**content.stored(conn), **self.content}

    def done_indices(self, config_hash: str, method: str, backbone: str, task: str, setting: str) -> set:
        return set(self.rows.get((config_hash, method, backbone, task, setting), ()))

    def close(self) -> None:
        """Nothing is held open."""


def shard_paths(folder) -> List[Path]:
    """The campaign shards in ``folder``: ``shard<i>.sqlite`` (not their -wal/-shm files), in index order."""
    found = [p for p in Path(folder).glob("shard*.sqlite") if re.fullmatch(r"shard\d+\.sqlite", p.name)]
    return sorted(found, key=lambda p: int(p.name[5:-7]))


def _inputs(file, store, shards, *, need_shards: bool = False) -> Tuple[Campaign, Finished, List[Path]]:
    """Check the inputs (writing nothing) and read them: the campaign, what store ∪ shards hold, the shard paths."""
    folder = Path(shards)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--shards {shards} is a file, not a folder; give a folder for the shard stores, "
                        f"e.g. --shards runs/campaign")
    open_read_only(store).close()
    campaign = load_campaign(file)
    if need_shards and not folder.is_dir():
        raise UserError(f"--shards {shards}: no such folder, so nothing to merge; run `fewshot-bench campaign run "
                        f"--shards {shards}` first")
    paths = shard_paths(folder) if folder.is_dir() else []
    check_outputs([(store, "--store")], [(path, "shard store") for path in paths])
    return campaign, Finished([store, *paths]), paths


def estimate(unit: Unit, rates: dict, texts: Dict[str, float]) -> Tuple[float, float, str]:
    """(seconds per episode, one-off meta-training seconds, where the rate comes from) of ``unit`` on this machine:
    the mean ``wall_seconds`` of its method in its cell ('measured'); else its method's mean over other cells scaled
    by this cell's support + query texts over theirs ('scaled'); else :data:`DEFAULT_EPISODE_SECONDS` ('default').
    ``rates``: {(label, setting, backbone): [wall sum, episodes, meta_train_seconds, texts]}; ``texts``: a memo."""
    rate = rates.get((unit.label, unit.setting.label, unit.key[2]))
    if rate and rate[1]:
        return rate[0] / rate[1], rate[2] or 0.0, "measured"
    others = [r for (m, _, b), r in rates.items() if (m, b) == (unit.label, unit.key[2]) and r[1] and r[3]]
    if not others:
        return DEFAULT_EPISODE_SECONDS, 0.0, "default"
    setting = unit.setting
    if setting.label not in texts:
        n_way = setting.n_way
        if n_way == "all":  # the pool's class count
            n_way = len(get_task_data(setting.task, setting.fold).pools[setting.pool].classes)
        shots = setting.k_shot if isinstance(setting.k_shot, tuple) else (setting.k_shot,)
        texts[setting.label] = n_way * (sum(shots) / len(shots) + setting.q_query)
    metas = [r[2] for r in others if r[2] is not None]
    per_text = sum(r[0] for r in others) / sum(r[1] * r[3] for r in others)
    return per_text * texts[setting.label], sum(metas) / len(metas) if metas else 0.0, "scaled"


def tally(campaign: Campaign, finished: Finished) -> Tuple[Dict[Unit, int], Dict[Unit, float], dict]:
    """(done, left, how): done = {every unit: how many of its episodes 0..episodes-1 ``finished`` holds}; for the
    units not done, left = {unit: estimated seconds to finish, meta-training too}, how = {unit: :func:`estimate`}."""
    rates: Dict[tuple, list] = {}
    for (_, method, backbone, _, setting), episodes in finished.rows.items():
        rate = rates.setdefault((method, setting, backbone), [0.0, 0, None, None])
        for wall, meta, texts in episodes.values():
            rate[0], rate[1] = rate[0] + (wall or 0.0), rate[1] + (wall is not None)
            rate[2] = max(meta, rate[2] or 0.0) if meta is not None else rate[2]
            rate[3] = texts or rate[3]
    done, left, how, texts = {}, {}, {}, {}
    for unit in campaign.units:
        done[unit] = len(finished.done_indices(*unit.key) & set(range(unit.episodes)))
        if done[unit] < unit.episodes:
            how[unit] = seconds, meta, _ = estimate(unit, rates, texts)
            left[unit] = (unit.episodes - done[unit]) * seconds + (meta if unit.meta_trained and not done[unit] else 0)
    return done, left, how


def other_configs(campaign: Campaign, finished: Finished, units: Iterable[Unit]) -> str:
    """A warning naming those of ``units`` whose method and cell also hold rows stored under a config hash the
    campaign does not plan (a config default changed since): merged, they pool two configs in one leaderboard row."""
    planned = {unit.key for unit in campaign.units}
    stored = {key[1:] for key in finished.rows if key not in planned}
    found = [str(unit) for unit in units if unit.key[1:] in stored]
    return (f"warning: {len(found)} units hold rows of their method and cell stored under another config hash (the "
            f"config changed since), which a leaderboard would pool with theirs: {'; '.join(found)}\n") if found else ""


def status(file, store, shards) -> int:
    """Print the units not done, in queue order, with episodes done and estimated CPU-hours left; returns 0."""
    campaign, finished, _ = _inputs(file, store, shards)
    done, left, how = tally(campaign, finished)
    pending = [u for u in campaign.units if done[u] < u.episodes]
    in_store = Finished([store])
    unmerged = sum(1 for u in campaign.units if done[u] == u.episodes
                   and len(in_store.done_indices(*u.key) & set(range(u.episodes))) < u.episodes)
    waiting = f"; {unmerged} complete units wait in the shards: fewshot-bench campaign merge" if unmerged else ""
    if not pending:
        print(f"nothing to do: all {len(campaign.units)} units of {file} are done{waiting}")
        return 0
    print_table(("#", "setting", "method", "restart", "episodes done", "s/episode (rate)", "CPU-hours left"),
                [(str(u.position), u.setting.label, u.label, str(u.restart), f"{done[u]}/{u.episodes}",
                  f"{how[u][0]:.2f} ({how[u][2]})", f"{left[u] / 3600:.3g}") for u in pending])
    print(f"\n{len(pending)} of {len(campaign.units)} units to do ({sum(u.episodes - done[u] for u in pending)} "
          f"episodes), about {sum(left.values()) / 3600:.3g} CPU-hours on this machine (per episode: the method's mean "
          f"wall_seconds in the cell, else scaled from its other cells by texts, else {DEFAULT_EPISODE_SECONDS:g} s; "
          f"plus meta-training){waiting}")
    print(other_configs(campaign, finished, pending), end="")
    return 0


def run(file, store, shards, *, processes: int = 1, threads: int = 1, tasks_dirs: Sequence = (),
        progress_seconds: float = 60.0) -> int:
    """Compute the units not done in ``processes`` workers, worker i into ``shards/shard<i>.sqlite`` (log beside it).

    Units are shared out in queue order, each to the worker with the least estimated seconds so far (each worker's
    list keeps queue order; the loads end within one unit of each other). A progress line (units and episodes done,
    ETA: the most estimated seconds a worker has left) every ``progress_seconds``. One campaign at a time per folder
    (a lock file). Returns 0 when every worker finished, 1 when one failed (its log named); Ctrl-C or SIGTERM stops
    the workers and raises KeyboardInterrupt."""
    for flag, value, low, high in (("--processes", processes, 1, MAX_PROCESSES), ("--threads", threads, 1, 256)):
        if not low <= value <= high:
            raise UserError(f"{flag} {value} is out of range; give {low} to {high} (e.g. --processes 2 --threads 1 "
                            f"on a 2-core machine)")
    campaign, finished, _ = _inputs(file, store, shards)
    done, left, _ = tally(campaign, finished)
    pending = [u for u in campaign.units if done[u] < u.episodes]
    if not pending:
        print(f"nothing to do: all {len(campaign.units)} units of {file} are done")
        return 0
    folder = Path(shards)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "campaign.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when this process ends, however it ends
        except OSError:
            raise UserError(f"another `fewshot-bench campaign run` is writing into {folder}; let it finish (or stop "
                            f"it), then run this again: it resumes") from None
        loads, plans = [0.0] * processes, [[] for _ in range(processes)]
        for unit in pending:
            worker = min(range(processes), key=lambda i: (loads[i], i))
            plans[worker].append(unit)
            loads[worker] += left[unit]
        plans = [plan for plan in plans if plan]
        for index in range(len(plans)):  # every shard exists before a worker reads the others
            ResultsStore(folder / f"shard{index}.sqlite").close()
        job = {"file": str(Path(file).resolve()), "store": str(Path(store).resolve()), "shards": str(folder.resolve()),
               "threads": threads, "tasks_dirs": [str(Path(d).resolve()) for d in tasks_dirs], "parent": os.getpid()}
        workers = []
        package = str(Path(__file__).resolve().parents[2])
        for index, plan in enumerate(plans):
            with open(folder / f"shard{index}.log", "a", encoding="utf-8") as log:
                workers.append(subprocess.Popen([sys.executable, "-c", WORKER, package], text=True,
                                                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                                env={**os.environ, "OMP_NUM_THREADS": str(threads)}))
            workers[-1].stdin.write(json.dumps({**job, "shard": index, "units": [
                [u.entry, u.setting.label, u.spec, u.restart] for u in plan]}))
            workers[-1].stdin.close()
        print(f"campaign: {len(pending)} units ({sum(u.episodes - done[u] for u in pending)} episodes, about "
              f"{sum(left.values()) / 3600:.3g} CPU-hours) in {len(workers)} worker(s); logs: {folder}/shard<i>.log",
              flush=True)
        return _watch(campaign, Finished([store]), folder, plans, workers, progress_seconds)


def _watch(campaign: Campaign, in_store: Finished, folder: Path, plans, workers, progress_seconds: float) -> int:
    """Wait for the workers, printing progress lines; Ctrl-C or SIGTERM terminates them."""
    started, last, pending = time.monotonic(), 0.0, [u for plan in plans for u in plan]
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the workers too
    try:
        while True:
            running = any(worker.poll() is None for worker in workers)
            if not running or time.monotonic() - last >= progress_seconds:
                last = time.monotonic()
                done, left, _ = tally(campaign, Finished(shard_paths(folder), in_store))
                eta = max(sum(left.get(u, 0.0) for u in plan) for plan in plans)
                print(f"campaign: units {sum(done[u] == u.episodes for u in pending)}/{len(pending)} | episodes "
                      f"{sum(done[u] for u in pending)}/{sum(u.episodes for u in pending)} | elapsed "
                      f"{tqdm.format_interval(last - started)} | ETA {tqdm.format_interval(eta)} (measured rates)",
                      flush=True)
            if not running:
                break
            time.sleep(min(1.0, progress_seconds))
    except KeyboardInterrupt:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()  # SIGTERM: a worker dies at once, losing only its episode in flight
        for worker in workers:
            worker.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    for index, worker in enumerate(workers):
        if worker.returncode:
            print(f"worker {index} exited with code {worker.returncode}: see {folder}/shard{index}.log",
                  file=sys.stderr)
    return 1 if any(worker.returncode for worker in workers) else 0


def merge(file, store, shards) -> int:
    """Copy into the store every unit complete in shards ∪ store and not yet all in the store, by the store's merge
    (``ResultsStore.merge_from``, after ``shards.check_no_conflicts``); incomplete units stay in the shards only.
    The store is left in rollback-journal mode (``journal_mode=DELETE``: no -wal file beside it). Returns 0."""
    campaign, finished, paths = _inputs(file, store, shards, need_shards=True)
    in_store = Finished([store])
    merged, pending, already, added = [], [], 0, 0
    for unit in campaign.units:
        planned = set(range(unit.episodes))
        anywhere = finished.done_indices(*unit.key) & planned
        if planned <= in_store.done_indices(*unit.key):
            already += 1
        elif anywhere == planned:
            merged.append(unit)
        elif anywhere:
            pending.append((unit, len(anywhere)))
    if merged:
        check_no_conflicts([store, *paths])
        subset = Path(shards) / f".merge-{os.getpid()}.sqlite"
        try:
            with ResultsStore(subset) as copy:  # the merged units' rows (planned episodes, not failed), byte for byte
                for shard in paths:
                    copy.conn.execute("ATTACH DATABASE ? AS shard", (str(shard),))
                    columns = ", ".join(c for c in EPISODE_COLUMNS if c in table_columns(copy.conn, "episodes", "shard"))
                    run_columns = ", ".join(c for c in RUN_COLUMNS if c in table_columns(copy.conn, "runs", "shard"))
                    with copy.conn:
                        for unit in merged:
                            copy.conn.execute(
                                f"INSERT INTO episodes ({columns}) SELECT {columns} FROM shard.episodes WHERE "
                                f"config_hash = ? AND method = ? AND backbone = ? AND task = ? AND setting = ? AND "
                                f"status != 'failed' AND episode_index < ? ON CONFLICT DO NOTHING",
                                (*unit.key, unit.episodes))
                            copy_figures(copy.conn, "shard", " AND ".join(f"e.{c} = ?" for c in KEY_COLUMNS[:-1])
                                         + " AND e.episode_index < ?", (*unit.key, unit.episodes))
                        copy.conn.execute(f"INSERT INTO runs ({run_columns}) SELECT {run_columns} FROM shard.runs "
                                          f"WHERE run_id IN (SELECT run_id FROM main.episodes) ON CONFLICT DO NOTHING")
                        content.merge(copy.conn, "shard")
                    copy.conn.execute("DETACH DATABASE shard")
            with ResultsStore(store) as target:
                added = target.merge_from([subset])
                mode = target.conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
        finally:
            for companion in SQLITE_COMPANIONS:
                Path(f"{subset}{companion}").unlink(missing_ok=True)
        if mode != "delete":
            raise UserError(f"{store}: merged, but another process holds it open, so it stays in {mode} mode; end "
                            f"that process, then run: sqlite3 {store} 'PRAGMA journal_mode=DELETE'")
    print(f"merged {len(merged)} complete units ({added} episode rows) into {store}")
    print("".join(f"  {unit}: {unit.episodes} episodes\n" for unit in merged), end="")
    print(f"pending, kept in the shards only: {len(pending)} incomplete units")
    print("".join(f"  {unit}: {count}/{unit.episodes} episodes\n" for unit, count in pending), end="")
    print(f"already in the store: {already} units; not started: "
          f"{len(campaign.units) - len(merged) - len(pending) - already} units")
    print(other_configs(campaign, in_store, merged), end="")
    return 0


def _worker(job: dict) -> int:
    """One worker (:data:`WORKER`; its job, JSON written by :func:`run`, on stdin): its units,
    grouped by entry in queue order, through ``runner.run`` into its own shard; episodes done in the store or another
    shard (read once, read-only) are skipped. It ends when the campaign process dies. Exit code 2: bad input."""
    def exit_with_parent():
        while os.getppid() == job["parent"]:
            time.sleep(1)
        os._exit(143)  # each episode is one transaction: at most the one in flight is lost

    threading.Thread(target=exit_with_parent, daemon=True).start()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        for folder in job["tasks_dirs"]:
            register_cards(folder)
        campaign = load_campaign(job["file"])
        own = Path(job["shards"]) / f"shard{job['shard']}.sqlite"
        finished = Finished([job["store"], *(path for path in shard_paths(job["shards"]) if path != own)])
        entries: Dict[int, set] = {}
        for entry, setting, spec, restart in job["units"]:
            entries.setdefault(entry, set()).add((setting, spec, restart))
        for entry, only in entries.items():
            config = campaign.configs[entry]
            config.store, config.out, config.threads = str(own), "", job["threads"]
            run_units(config, only=only, finished=[finished])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

