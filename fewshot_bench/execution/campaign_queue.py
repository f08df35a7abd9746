"""The campaign queue: a campaign file's units, what stores hold of them, and what is left (by measured rates, else
calibrated ones).

A campaign file (``leaderboard/campaign.yaml``) holds ``entries``: an ordered list of run configurations, each with
``suite`` and the keys of ``run``'s flags (:data:`ENTRY_KEYS`), built by :func:`run_config.build_config` exactly as
``fewshot-bench run --suite S --tasks ... --methods ...`` builds them (``tuned``: a tuned-config file, a relative
path read from the campaign file's folder). A **unit** is one (setting, method, restart)
of an entry with all its episodes; its store key is the one ``run`` writes (:func:`evaluate.cell_identity`,
:func:`evaluate.restart_hash`), so a unit is done whichever command stored it. Units queue in file order, within an
entry in ``run``'s order (setting, then method, then restart); a unit two entries plan is queued at its first.
An episode stored with status ok or diverged in a store that :class:`Finished` reads (read-only) is done."""
from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple
from urllib.parse import quote

import torch

from ..core.config import read_yaml
from ..core.errors import UserError
from ..data.loading import get_task_data
from ..episodes.sampling import Setting
from ..store import content
from ..store.tables import table_columns
from ..methods.spec import parse_spec
from .calibration import cache_file
from .evaluate import cell_identity, restart_hash
from .plan import make_plan
from .run_config import RunConfig, build_config, method_specs, settings_of
from .tuned import load_tuned

ENTRY_KEYS = ("suite", "tasks", "source_task", "n_way", "k_shot", "fold", "query", "episodes", "limit", "seed", "pool",
              "methods", "restarts", "method_config", "backbone", "tuned")
DEFAULT_EPISODE_SECONDS = 10.0  # a rate nothing stored measures: about one MiniLM full_ft 5-way 1-shot episode, 1 core
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
                    texts = _episode_texts(n_way, shots, q_query) if n_way and q_query else None
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


def estimate(unit: Unit, rates: dict, texts: Dict[str, float],
             calibrated: Optional[Dict[tuple, Tuple[float, float]]] = None) -> Tuple[float, float, str]:
    """(seconds per episode, one-off meta-training seconds, where the rate comes from) of ``unit`` on this machine:
    the mean ``wall_seconds`` of its method in its cell ('measured'); else its method's means in other cells, each
    scaled by how much more this cell costs the method by the dry run's calibration of both cells (``calibrated``:
    a method such as SetFit, whose work grows with the support set, scales unlike fixed-step fine-tuning), else by
    how much more it costs the methods stored in both (:func:`_cell_ratio`), else by this cell's
    support + query texts over that one's ('scaled'); else the same from the rows of its method under
    its default config, for a unit with config overrides or a tuned config ('measured as sgg', 'scaled as sgg');
    else the dry run's estimate from this machine's calibration cache ('calibrated': ``calibrated``, from
    :func:`calibrated_rates`); else :data:`DEFAULT_EPISODE_SECONDS` ('default').
    ``rates``: {(label, setting, backbone): [wall sum, episodes, meta_train_seconds, texts]}; ``texts``: a memo."""
    name = parse_spec(unit.spec)[0]
    for label in dict.fromkeys((unit.label, name)):
        found = _rate(unit, label, rates, texts, calibrated if label == unit.label else None)
        if found is not None:
            seconds, meta, how = found
            return seconds, meta, how + ("" if label == unit.label else f" as {label}")
    found = (calibrated or {}).get((unit.entry, unit.setting.label, unit.spec))
    if found is not None:
        return found[0], found[1], "calibrated"
    return DEFAULT_EPISODE_SECONDS, 0.0, "default"


def calibrated_rates(campaign: Campaign, units: Iterable[Unit], threads: int = 1) -> Dict[tuple, Tuple[float, float]]:
    """{(entry, setting label, method spec): (seconds per episode, one-off meta-training seconds)}: the dry run's
    estimates (:class:`~fewshot_bench.execution.plan.Plan`) for the entries of ``units``, from the calibration cache of
    this machine at ``threads`` torch threads (the workers'). Measures nothing (it loads each backbone once and
    tokenizes a few episodes per cell): empty without a cache file; a method the cache lacks is left out. ``fewshot-bench run
    --dry-run --threads N`` with an entry's options fills the cache for it."""
    entries = sorted({unit.entry for unit in units})
    if not entries or not cache_file().is_file():
        return {}
    found, backbones, before = {}, {}, torch.get_num_threads()
    torch.set_num_threads(threads)  # the cache is keyed by the environment, the thread count included
    try:
        for entry in entries:
            plan = make_plan(campaign.configs[entry], backbones)
            plan.calibrate(missing=False, progress=False)
            for setting in plan.settings:
                for spec in plan.specs:
                    seconds = plan.episode_seconds(setting, spec)
                    if seconds is not None:
                        found[(entry, setting.label, spec)] = (seconds, plan.meta_seconds(setting, spec))
    finally:
        torch.set_num_threads(before)
    return found


def _rate(unit: Unit, label: str, rates: dict, texts: Dict[str, float], calibrated: Optional[dict] = None
          ) -> Optional[Tuple[float, float, str]]:
    """:func:`estimate` from the rows of method ``label`` only; None when it has none with timings."""
    rate = rates.get((label, unit.setting.label, unit.key[2]))
    if rate and rate[1]:
        return rate[0] / rate[1], rate[2] or 0.0, "measured"
    others = {s: r for (m, s, b), r in rates.items() if (m, b) == (label, unit.key[2]) and r[1] and r[3]}
    if not others:
        return None
    scaled = []
    calibrated_here = {setting: found[0] for (_, setting, spec), found in (calibrated or {}).items()
                       if spec == unit.spec and found[0] > 0}
    for cell, rate in others.items():
        factor = None
        if unit.setting.label in calibrated_here and cell in calibrated_here:
            factor = calibrated_here[unit.setting.label] / calibrated_here[cell]
        if factor is None:
            factor = _cell_ratio(rates, unit.setting.label, cell, unit.key[2])
        if factor is None:
            factor = _setting_texts(unit.setting, texts) / rate[3]
        scaled.append((rate[0] / rate[1] * factor, rate[1]))
    metas = [r[2] for r in others.values() if r[2] is not None]
    seconds = sum(value * episodes for value, episodes in scaled) / sum(episodes for _, episodes in scaled)
    return seconds, sum(metas) / len(metas) if metas else 0.0, "scaled"


def _episode_texts(n_way: float, shots, q_query: float) -> float:
    """Support + query texts of an episode: ``n_way`` classes x (mean of ``shots`` + ``q_query``)."""
    return n_way * (sum(shots) / len(shots) + q_query)


def _setting_texts(setting: Setting, memo: Dict[str, float]) -> float:
    """:func:`_episode_texts` of an episode of ``setting`` (an all-way setting: its pool's class count), memoised."""
    if setting.label not in memo:
        n_way = setting.n_way
        if n_way == "all":
            n_way = len(get_task_data(setting.task, setting.fold).pools[setting.pool].classes)
        shots = setting.k_shot if isinstance(setting.k_shot, tuple) else (setting.k_shot,)
        memo[setting.label] = _episode_texts(n_way, shots, setting.q_query)
    return memo[setting.label]


def _cell_ratio(rates: dict, cell: str, other: str, backbone: str) -> Optional[float]:
    """How much more an episode of ``cell`` costs than one of ``other``: the summed seconds per episode of every
    method stored in both, over the same in ``other`` (the costly methods weigh most); None when none is."""
    pairs = [(rates[(m, cell, b)], rate) for (m, s, b), rate in rates.items()
             if (s, b) == (other, backbone) and rate[1] and rates.get((m, cell, b), (0, 0))[1]]
    there = sum(rate[0] / rate[1] for _, rate in pairs)
    return sum(rate[0] / rate[1] for rate, _ in pairs) / there if pairs and there > 0 else None


def tally(campaign: Campaign, finished: Finished, calibrated: Optional[Dict[tuple, Tuple[float, float]]] = None
          ) -> Tuple[Dict[Unit, int], Dict[Unit, float], dict]:
    """(done, left, how): done = {every unit: how many of its episodes 0..episodes-1 ``finished`` holds}; for the
    units not done, left = {unit: estimated seconds to finish, meta-training too}, how = {unit: :func:`estimate`}
    (``calibrated``: see there)."""
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
            how[unit] = seconds, meta, _ = estimate(unit, rates, texts, calibrated)
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
