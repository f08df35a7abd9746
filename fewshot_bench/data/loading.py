"""Loading a task's rows (through Hugging Face ``datasets``) and forming its class pools.

Rows come from the data dir (or the package, for packaged tasks); else from the hub id in the card, unless
``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` is set or the hub does not answer one connect within
``HUB_PROBE_SECONDS``: then the load fails in one line, without the hub client's retry loops."""
from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import numpy as np

from ..core.errors import UserError
from ..core.hashing import hash_seed
from .cards import BUILTIN_TASKS_DIR, POOLS, TaskConfig, get_task_config
from .pinning import check_pinned

log = logging.getLogger(__name__)

DATA_ENV = "FEWSHOT_BENCH_DATA"
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
HUB_PROBE_SECONDS = 5.0  # an unreachable hub is reported after this, before the hub client's retries


def data_dir() -> Optional[Path]:
    """The data dir: ``--data-dir`` (which sets the env var) or ``$FEWSHOT_BENCH_DATA``."""
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None


def set_data_dir(path) -> None:
    os.environ[DATA_ENV] = str(path)
    load_task_data.cache_clear()
    _task_rows.cache_clear()


def hub_allowed() -> bool:
    return not any(os.environ.get(v, "0") not in ("0", "") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_unreachable(timeout: float = HUB_PROBE_SECONDS) -> Optional[str]:
    """Why the hub (``$HF_ENDPOINT``, through the HTTPS proxy when one is set) cannot be reached: one TCP connect
    within ``timeout`` s, so an offline machine fails in seconds, not in the hub client's retry loops; None when
    it answers."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname, endpoint.port or (80 if endpoint.scheme == "http" else 443)
    proxy = getproxies().get(endpoint.scheme or "https")
    if proxy and host and not proxy_bypass(host):
        parsed = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = parsed.hostname, parsed.port or 80
    failure = [f"{host}:{port} did not answer within {timeout:g} s"]

    def connect():  # in a thread: a name lookup can hang past any socket timeout
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            failure[0] = None
        except (OSError, ValueError) as exc:  # ValueError: a malformed endpoint or proxy
            failure[0] = f"{host}:{port} not reachable: {exc}"
    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return failure[0]


def local_copy(name: str) -> bool:
    """Whether task ``name``'s rows can be read without the hub: packaged, or every split file is in the data dir."""
    try:
        config = get_task_config(name)
    except UserError:
        return False
    folder = local_folder(config)
    return all(_find_split_file(folder, split) is not None for split in config.splits)


@dataclass
class Pool:
    """The classes of one pool and the rows that belong to it."""
    classes: List[str]
    rows: np.ndarray  # row indices into TaskData


@dataclass
class TaskData:
    """All rows of a task (one fold), rendered to model input text, with its pools."""
    config: TaskConfig
    fold: int
    ids: List[str]
    texts: List[str]
    labels: List[str]
    pools: Dict[str, Pool] = field(default_factory=dict)
    skipped_empty: int = 0

    @property
    def name(self) -> str:
        return self.config.name

    def pool(self, name: str) -> Pool:
        if name not in POOLS:
            raise UserError(f"unknown pool '{name}'; use one of {', '.join(POOLS)}")
        pool = self.pools[name]
        if len(pool.rows) == 0:
            raise UserError(f"task '{self.name}' (fold {self.fold}): the {name} pool is empty; "
                            f"see pools in its card, or use another pool")
        return pool


def local_folder(config: TaskConfig) -> Optional[Path]:
    """Task ``config``'s local files: the package's ``tasks/<local_dir>`` when packaged, else
    ``<data dir>/<local_dir>`` (None without a data dir)."""
    if config.source.packaged:
        return BUILTIN_TASKS_DIR / config.source.local_dir
    root = data_dir()
    return root / config.source.local_dir if root else None


def _find_split_file(folder: Optional[Path], split: str) -> Optional[Path]:
    if folder is None:
        return None
    for suffix in FILE_FORMATS:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _check_utf8(path: Path) -> None:
    try:
        if path.stat().st_size == 0:
            raise UserError(f"{path} is empty; put the split's rows in it, or drop the split from the card's splits")
        if path.suffix == ".parquet":
            return
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; check the file's permissions") from None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x}); re-encode the file as UTF-8 "
                        f"(rows are refused, not skipped, so no example silently disappears)") from None
    if path.suffix == ".jsonl":
        _check_json_lines(path, raw)


def _check_json_lines(path: Path, raw: bytes) -> None:
    """Every non-blank line of a .jsonl file is a JSON object (the loader's own errors are multi-line tracebacks)."""
    for number, line in enumerate(raw.decode("utf-8").split("\n"), 1):  # not splitlines(): U+2028 is in texts
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg}); write one JSON object per line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: a {type(row).__name__}, not a JSON object; write one object "
                            f"(field: value, ...) per line") from None


def _load_split(config: TaskConfig, split: str):
    import datasets  # ~1-2 s: loaded when task data is first read, not with the package

    datasets.disable_progress_bars()
    folder = local_folder(config)
    path = _find_split_file(folder, split)
    if path is not None:
        _check_utf8(path)
        try:
            return datasets.load_dataset(FILE_FORMATS[path.suffix], data_files=str(path), split="train")
        except Exception as exc:  # datasets wraps parser errors in several types
            message = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise UserError(f"cannot parse {path}: {message}; fix the file (one JSON object per line for .jsonl)") \
                from None
    if folder is not None and folder.is_dir():  # a local copy exists: the split name is what is wrong
        files = sorted(p.name for p in folder.iterdir() if p.suffix in FILE_FORMATS and p.is_file())
        raise UserError(f"task '{config.name}': split '{split}' in the card's splits has no file {split}.jsonl|.json|"
                        f".csv|.parquet in {folder} (files there: {', '.join(files) or 'none'}); name the splits "
                        f"after these files, without the extension")
    tried = [str(folder / f"{split}{s}") for s in FILE_FORMATS] if folder else []
    hub = config.source.hub_id
    unreachable = hub_unreachable() if hub and hub_allowed() else None
    if hub and hub_allowed() and unreachable:
        hub_note = f"hub dataset '{hub}' not tried ({unreachable})"
    elif hub and hub_allowed():
        try:
            return datasets.load_dataset(hub, config.source.hub_config, split=split)
        except Exception as exc:
            hub_note = f"hub dataset '{hub}' failed too ({(str(exc).splitlines() or [type(exc).__name__])[0]})"
    else:
        hub_note = f"hub dataset '{hub}' not tried (offline)" if hub else "no hub id in the card"
    where = f"tried {', '.join(tried)}" if tried else "no data dir is set"
    raise UserError(f"task '{config.name}': no data for split '{split}' ({where}; {hub_note}); "
                    f"set --data-dir DIR or {DATA_ENV}=DIR to the folder that holds '{config.source.local_dir}/'")


def render_input(row: dict, config: TaskConfig) -> str:
    """The text the model sees: the text field, a pair joined by [SEP], or a relation with marked entities."""
    spec = config.input
    text = row[spec.text_field]
    if spec.tokens_field and spec.head_pos_field and spec.tail_pos_field:
        tokens = list(row[spec.tokens_field])
        marks = []
        for (start_tag, end_tag), pos_field in ((("[E1]", "[/E1]"), spec.head_pos_field), (("[E2]", "[/E2]"), spec.tail_pos_field)):
            positions = row[pos_field][0]
            marks.append((min(positions), start_tag, max(positions), end_tag))
        out = []
        for i, tok in enumerate(tokens):
            out += [s for start, s, _, _ in marks if start == i]
            out.append(tok)
            out += [e for _, _, end, e in marks if end == i]
        return " ".join(out)
    if spec.head_field and spec.tail_field:
        for value, (start_tag, end_tag) in ((row[spec.head_field], ("[E1]", "[/E1]")), (row[spec.tail_field], ("[E2]", "[/E2]"))):
            index = text.lower().find(str(value).lower())
            if index < 0:
                text = f"{start_tag} {value} {end_tag} {text}"
            else:
                text = f"{text[:index]}{start_tag} {text[index:index + len(value)]} {end_tag}{text[index + len(value):]}"
        return text
    if spec.pair_field:
        return f"{text} [SEP] {row[spec.pair_field]}"
    return text


def get_task_data(name: str, fold: int = 1) -> TaskData:
    """All rows of task ``name`` with its pools for ``fold`` (1-based); cached per data dir."""
    return load_task_data(name, fold, str(data_dir()))


@functools.lru_cache(maxsize=32)
def load_task_data(name: str, fold: int, data_root: str) -> TaskData:
    """Task ``name``'s rows with its pools for ``fold``; the folds of a task share one read of its rows."""
    config = get_task_config(name)
    if not 1 <= fold <= config.pools.folds:
        raise UserError(f"task '{name}' has {config.pools.folds} fold(s); --fold {fold} is out of range")
    ids, texts, labels, split_of, skipped = _task_rows(name, data_root, repr(config))
    data = TaskData(config, fold, ids, texts, labels, skipped_empty=skipped)
    data.pools = _form_pools(config, fold, np.array(labels), np.array(split_of))
    return data


@functools.lru_cache(maxsize=16)
def _task_rows(name: str, data_root: str, card: str) -> tuple:
    """(ids, texts, labels, split of each row, rows skipped as empty) of task ``name`` as its card (``card``: the
    card's repr, so a re-registered card is read again) renders them; read column by column."""
    config = get_task_config(name)
    check_pinned(config, local_folder(config))
    ids, texts, labels, split_of = [], [], [], []
    excluded = {str(v) for v in config.exclude_labels}
    skipped = 0
    for split in config.splits:
        table = _load_split(config, split)
        required = list(dict.fromkeys([config.input.text_field, config.label_field] + [
            f for f in (config.input.pair_field, config.input.head_field, config.input.tail_field,
                        config.input.tokens_field, config.input.head_pos_field, config.input.tail_pos_field) if f]))
        for field_name in required:
            if field_name not in table.column_names:
                raise UserError(f"task '{name}', split '{split}': field '{field_name}' named in the card is not in "
                                f"the data (fields: {', '.join(table.column_names)}); fix the card's input/label_field")
        columns = table.select_columns(required).to_dict()
        for i, values in enumerate(zip(*(columns[f] for f in required))):
            row = dict(zip(required, values))
            label = _label(row[config.label_field], name, split, i, config.label_field)
            if label in excluded:
                continue
            raw = row[config.input.text_field]
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                skipped += 1
                continue
            _check_text_fields(row, config, name, split, i)
            ids.append(f"{split}:{i}")
            texts.append(render_input(row, config))
            labels.append(label)
            split_of.append(split)
    if skipped:
        log.warning("task '%s': skipped %d row(s) with empty text", name, skipped)
    if not ids:
        raise UserError(f"task '{name}': no usable rows in splits {config.splits}")
    return ids, texts, labels, split_of, skipped


def _label(value, task: str, split: str, row: int, field_name: str) -> str:
    """A row's label as a class name; a missing (null) or non-scalar label is refused, never a class 'None'."""
    if value is None or isinstance(value, (list, dict)) or (isinstance(value, float) and value != value):
        raise UserError(f"task '{task}', split '{split}' row {row + 1}: label field '{field_name}' is {value!r}; "
                        f"give every row a label (or drop the row)")
    return str(value)


def _check_text_fields(row: dict, config: TaskConfig, task: str, split: str, index: int) -> None:
    """The text fields of a row must be text (a list or number in a text field is refused, not stringified)."""
    spec = config.input
    for field_name in (spec.text_field, spec.pair_field):
        if field_name and isinstance(row[field_name], (list, dict, tuple)):
            raise UserError(f"task '{task}', split '{split}' row {index + 1}: field '{field_name}' is a "
                            f"{type(row[field_name]).__name__} ({str(row[field_name])[:40]!r}), not text; fix the "
                            f"data or point the card's input fields at a text field")


def _seeded_split(items: list, fractions: Dict[str, float], key: str) -> Dict[str, list]:
    order = np.random.default_rng(hash_seed(key, 8)).permutation(len(items))
    out, start = {}, 0
    cumulative = 0.0
    for pool in POOLS:
        cumulative += fractions.get(pool, 0.0)
        end = int(round(cumulative * len(items)))
        out[pool] = [items[i] for i in sorted(order[start:end])]
        start = end
    return out


def _class_lists(config: TaskConfig, fold: int, present: List[str]) -> Dict[str, List[str]]:
    pools = config.pools
    if pools.class_splits_file:
        path = local_folder(config) / pools.class_splits_file
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"task '{config.name}': cannot read class split file {path}: {exc}") from None
        if not isinstance(spec, dict):
            raise UserError(f"{path}: expected a JSON object with source/validation/target (or train/test) lists, "
                            f"or a 'folds' list of them")
        if "folds" in spec:
            folds = spec["folds"]
            if not isinstance(folds, list) or len(folds) < fold or not isinstance(folds[fold - 1], dict):
                raise UserError(f"{path}: 'folds' must be a list of at least {fold} objects with source/validation/"
                                f"target lists (the card's pools.folds)")
            spec = folds[fold - 1]
        aliases = {"source": ("source", "train"), "validation": ("validation", "valid"), "target": ("target", "test")}
        spec = {pool: next((spec[k] for k in keys if isinstance(spec.get(k), list)), None)
                for pool, keys in aliases.items()}
        lists = {p: [str(c) for c in (spec[p] or [])] for p in POOLS}
        absent = sorted({c for cs in lists.values() for c in cs} - set(present))
        if absent:
            raise UserError(f"{path}: names {len(absent)} class(es) absent from the data of task '{config.name}' "
                            f"(e.g. {', '.join(absent[:3])}); fix the file or the card's splits")
        shared = sorted(set(lists["source"]) & set(lists["target"]) | set(lists["validation"]) & set(lists["target"])
                        | set(lists["source"]) & set(lists["validation"]))
        if shared:
            raise UserError(f"{path}: class(es) {', '.join(shared[:3])} are in more than one pool; pools must be "
                            f"class-disjoint, fix the file")
        return lists
    if pools.fractions:
        return _seeded_split(sorted(present), pools.fractions, f"{config.name}:{config.version}:{pools.seed}")
    lists = {p: [str(c) for c in (getattr(pools, p) or [])] for p in POOLS}
    absent = sorted({c for cs in lists.values() for c in cs} - set(present))
    if absent:
        raise UserError(f"task '{config.name}': pools name class(es) absent from the data: {', '.join(absent[:5])}")
    return lists


def _form_pools(config: TaskConfig, fold: int, labels: np.ndarray, split_of: np.ndarray) -> Dict[str, Pool]:
    present = sorted(set(labels.tolist()))
    if config.pools.strategy == "classes":
        lists = _class_lists(config, fold, present)
        return {p: Pool(lists[p], np.flatnonzero(np.isin(labels, lists[p]))) for p in POOLS}
    pools = config.pools
    if pools.fractions:
        rows = _seeded_split(list(range(len(labels))), pools.fractions, f"{config.name}:{config.version}:{pools.seed}")
        row_sets = {p: np.array(rows[p], dtype=np.int64) for p in POOLS}
    else:
        for p in POOLS:
            unknown = set(getattr(pools, p) or []) - set(config.splits)
            if unknown:
                raise UserError(f"task '{config.name}': pools.{p} names split(s) {sorted(unknown)} not in splits {config.splits}")
        row_sets = {p: np.flatnonzero(np.isin(split_of, getattr(pools, p) or [])) for p in POOLS}
    return {p: Pool(sorted(set(labels[r].tolist())), r) for p, r in row_sets.items()}
