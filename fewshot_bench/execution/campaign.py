"""``fewshot-bench campaign {status,run,merge,audit}``: a resumable compute queue, many sessions long.

The queue (a campaign file's units, what is done, what is left) is :mod:`.campaign_queue`. The store is only read
(read-only SQLite connections: never switched to WAL, never written) except by ``merge``, which copies in complete
units only and leaves the store in rollback-journal mode. ``run`` starts worker processes (:data:`WORKER`, one torch
thread each unless told otherwise), worker i writing only its shard ``DIR/shard<i>.sqlite``, one transaction per
episode: killing it at any point loses at most the episodes in flight; running it again resumes. ``run`` also
appends to ``DIR/estimates.jsonl`` its estimate of each unit it starts from nothing, which ``audit`` compares with what
the unit took once it is complete."""
from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from tqdm import tqdm

from ..core.errors import UserError
from ..core.outputs import SQLITE_COMPANIONS, check_outputs, print_table
from ..data.cards import register_cards
from ..store import content
from ..store.figures import copy_figures
from ..store.results import KEY_COLUMNS, ResultsStore
from ..store.shards import check_no_conflicts
from ..store.tables import EPISODE_COLUMNS, RUN_COLUMNS, table_columns
from .campaign_queue import (DEFAULT_EPISODE_SECONDS, Campaign, Finished, Unit, calibrated_rates, load_campaign,
                             open_read_only, other_configs, shard_paths, tally)
from .runner import run as run_units

MAX_PROCESSES = 64
ESTIMATES = "estimates.jsonl"  # in the shards folder: one JSON object per unit, its estimate when run started it
# a worker imports this very package (not whatever the working folder holds), then reads its job on stdin
WORKER = "import json, sys; sys.path.insert(0, sys.argv[1]); from fewshot_bench.execution.campaign import _worker; " \
         "sys.exit(_worker(json.load(sys.stdin)))"


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


def _estimated(campaign: Campaign, finished: Finished, threads: int) -> tuple:
    """(done, left, how, calibrated): :func:`tally` with this machine's calibration cache (:func:`calibrated_rates`,
    looked up once: ``calibrated`` serves later tallies) for the units no stored row of their cell measures: every
    unit of their methods, so that a scaled unit is scaled by its method's calibrated cost in both cells."""
    done, left, how = tally(campaign, finished)
    labels = {unit.label for unit, found in how.items() if found[2] in ("default", "scaled")}
    calibrated = calibrated_rates(campaign, [unit for unit in campaign.units if unit.label in labels], threads)
    if calibrated:
        done, left, how = tally(campaign, finished, calibrated)
    return done, left, how, calibrated


def status(file, store, shards, *, threads: int = 1) -> int:
    """Print the units not done, in queue order, with episodes done and estimated CPU-hours left (at ``threads``
    torch threads per worker); returns 0."""
    campaign, finished, _ = _inputs(file, store, shards)
    done, left, how, _ = _estimated(campaign, finished, threads)
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
          f"wall_seconds in the cell, else scaled from its other cells by its calibrated cost ratio if this machine's "
          f"cache holds it, else by the cost ratio of the methods stored in both (or texts), else the same "
          f"from its default config's rows ('as NAME'), else the dry run's calibrated estimate if this machine's cache "
          f"holds it, else {DEFAULT_EPISODE_SECONDS:g} s; plus meta-training){waiting}")
    print(other_configs(campaign, finished, pending), end="")
    return 0


def run(file, store, shards, *, processes: int = 1, threads: int = 1, tasks_dirs: Sequence = (),
        progress_seconds: float = 60.0) -> int:
    """Compute the units not done in ``processes`` workers, worker i into ``shards/shard<i>.sqlite`` (log beside it).

    Units are shared out by :func:`share_out`. A progress line (units and episodes done, ETA: the most estimated
    seconds a worker has left) every ``progress_seconds``. One campaign at a time per folder
    (a lock file). Returns 0 when every worker finished, 1 when one failed (its log named); Ctrl-C or SIGTERM stops
    the workers and raises KeyboardInterrupt."""
    for flag, value, low, high in (("--processes", processes, 1, MAX_PROCESSES), ("--threads", threads, 1, 256)):
        if not low <= value <= high:
            raise UserError(f"{flag} {value} is out of range; give {low} to {high} (e.g. --processes 2 --threads 1 "
                            f"on a 2-core machine)")
    campaign, finished, _ = _inputs(file, store, shards)
    done, left, how, calibrated = _estimated(campaign, finished, threads)
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
        _record_estimates(folder / ESTIMATES, [unit for unit in pending if not done[unit]], how, threads)
        plans = share_out(pending, left, {u: sorted(set(range(u.episodes)) - finished.done_indices(*u.key))
                                          for u in pending}, processes)
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
                [s.unit.entry, s.unit.setting.label, s.unit.spec, s.unit.restart, s.episodes] for s in plan]}))
            workers[-1].stdin.close()
        split = len({s.unit for plan in plans for s in plan if s.episodes is not None})
        print(f"campaign: {len(pending)} units ({sum(u.episodes - done[u] for u in pending)} episodes, about "
              f"{sum(left.values()) / 3600:.3g} CPU-hours) in {len(workers)} worker(s)"
              f"{f' ({split} split between workers by episode)' if split else ''}; logs: {folder}/shard<i>.log",
              flush=True)
        return _watch(campaign, Finished([store]), folder, plans, workers, progress_seconds, calibrated)


class Share(NamedTuple):
    """A worker's part of a unit: the missing ``episodes`` it runs (None: all of them), ``fraction`` of the unit's
    estimated seconds left."""
    unit: Unit
    episodes: Optional[List[int]] = None
    fraction: float = 1.0


def share_out(pending: Sequence[Unit], left: Dict[Unit, float], missing: Dict[Unit, List[int]], processes: int
              ) -> List[List[Share]]:
    """The workers' plans (empty ones dropped): in queue order, each unit to the worker with the least estimated
    seconds so far, each plan keeping queue order. A unit that meta-trains nothing and whose seconds ``left`` exceed
    one worker's fair share (all seconds left / ``processes``) is split instead: its ``missing`` episodes are dealt
    out one at a time, each to the worker then least loaded, so that one long unit does not keep one worker busy
    while the others wait."""
    fair = sum(left[unit] for unit in pending) / processes
    loads, plans = [0.0] * processes, [[] for _ in range(processes)]
    for unit in pending:
        if unit.meta_trained or left[unit] <= fair or len(missing[unit]) < 2:
            worker = min(range(processes), key=lambda i: (loads[i], i))
            plans[worker].append(Share(unit))
            loads[worker] += left[unit]
            continue
        dealt: Dict[int, List[int]] = {}
        for index in missing[unit]:
            worker = min(range(processes), key=lambda i: (loads[i], i))
            dealt.setdefault(worker, []).append(index)
            loads[worker] += left[unit] / len(missing[unit])
        for worker, episodes in sorted(dealt.items()):
            plans[worker].append(Share(unit, episodes if len(dealt) > 1 else None,
                                       len(episodes) / len(missing[unit])))
    return [plan for plan in plans if plan]


def _watch(campaign: Campaign, in_store: Finished, folder: Path, plans, workers, progress_seconds: float,
           calibrated: dict) -> int:
    """Wait for the workers, printing progress lines; Ctrl-C or SIGTERM terminates them."""
    started, last = time.monotonic(), 0.0
    pending = list(dict.fromkeys(share.unit for plan in plans for share in plan))
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the workers too
    try:
        while True:
            running = any(worker.poll() is None for worker in workers)
            if not running or time.monotonic() - last >= progress_seconds:
                last = time.monotonic()
                done, left, _ = tally(campaign, Finished(shard_paths(folder), in_store), calibrated)
                eta = max(sum(left.get(s.unit, 0.0) * s.fraction for s in plan) for plan in plans)
                print(f"campaign: units {sum(done[u] == u.episodes for u in pending)}/{len(pending)} | episodes "
                      f"{sum(done[u] for u in pending)}/{sum(u.episodes for u in pending)} | elapsed "
                      f"{tqdm.format_interval(last - started)} | ETA {tqdm.format_interval(eta)} (status's estimates)",
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


def _read_estimates(path: Path) -> List[dict]:
    """The records of an estimates file (:func:`_record_estimates`); a line that is not one is a UserError naming it."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
            record["key"], record["seconds"] = tuple(record["key"]), float(record["seconds"])
            records.append(record)
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:{number}: not an estimate record ({exc}); `campaign run` writes this file: "
                            f"delete the line (or the file) and run `campaign run` again") from None
    return records


def _record_estimates(path: Path, units: Sequence[Unit], how: dict, threads: int) -> None:
    """Append to ``path`` the estimate (:func:`tally`) of each of ``units`` (none of its episodes stored) that the file
    does not hold yet: the seconds the whole unit should take, meta-training included, and where its rate came from."""
    recorded = {record["key"] for record in _read_estimates(path)} if path.is_file() else set()
    with open(path, "a", encoding="utf-8") as handle:
        for unit in units:
            if unit.key not in recorded:
                seconds, meta, rate = how[unit]
                handle.write(json.dumps({
                    "key": list(unit.key), "unit": str(unit), "episodes": unit.episodes, "meta_trained": unit.meta_trained,
                    "seconds": unit.episodes * seconds + (meta if unit.meta_trained else 0.0), "rate": rate,
                    "threads": threads, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")


def audit(store, shards) -> int:
    """For each unit ``run`` recorded an estimate of (``shards/estimates.jsonl``) that store ∪ shards now hold
    complete: the CPU-hours estimated vs the ones it took (its episodes' ``wall_seconds``, plus its meta-training
    once), then the totals, overall and by where the rate came from. Returns 0."""
    path = Path(shards) / ESTIMATES
    if not path.is_file():
        raise UserError(f"{path}: no such file, so no estimate to audit; `fewshot-bench campaign run --shards "
                        f"{shards}` records one for each unit it starts")
    records = _read_estimates(path)
    open_read_only(store).close()
    finished = Finished([store, *shard_paths(shards)])
    audited, waiting = [], 0
    for record in records:
        rows = finished.rows.get(record["key"], {})
        episodes = [rows.get(index) for index in range(int(record["episodes"]))]
        if None in episodes or any(wall is None for wall, _, _ in episodes):
            waiting += 1
            continue
        metas = [meta for _, meta, _ in episodes if meta is not None]
        took = sum(wall for wall, _, _ in episodes) + (max(metas) if record.get("meta_trained") and metas else 0.0)
        audited.append((record, took))
    if audited:
        print_table(("unit", "rate", "estimated CPU-h", "took CPU-h", "took / estimated"),
                    [(record["unit"], record["rate"], f"{record['seconds'] / 3600:.3g}", f"{took / 3600:.3g}",
                      f"{took / record['seconds']:.2f}" if record["seconds"] else "-") for record, took in audited])
    groups: Dict[str, list] = {"all": audited}
    for record, took in audited:
        groups.setdefault(record["rate"].split(" as ")[0], []).append((record, took))
    for name, members in groups.items():
        estimated, took = sum(r["seconds"] for r, _ in members), sum(t for _, t in members)
        ratio = f" ({took / estimated:.2f}x)" if estimated else ""
        print(f"{name}: {len(members)} complete units, estimated {estimated / 3600:.3g} CPU-hours, took "
              f"{took / 3600:.3g}{ratio}")
    print(f"{waiting} recorded units not complete yet")
    return 0


def _worker(job: dict) -> int:
    """One worker (:data:`WORKER`; its job, JSON written by :func:`run`, on stdin): its shares of units (a whole unit or
    the episodes listed), grouped by entry in queue order, through ``runner.run`` into its own shard; episodes done in
    the store or another shard (read once, read-only) are skipped. It ends when the campaign process dies. Exit code 2:
    bad input."""
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
        entries: Dict[int, dict] = {}
        for entry, setting, spec, restart, episodes in job["units"]:
            entries.setdefault(entry, {})[(setting, spec, restart)] = None if episodes is None else set(episodes)
        for entry, only in entries.items():
            config = campaign.configs[entry]
            config.store, config.out, config.threads = str(own), "", job["threads"]
            run_units(config, only=only, finished=[finished])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

