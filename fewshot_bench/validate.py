"""Check a leaderboard CSV or a results store; each problem is one line "FILE:WHERE: column: what (expected ...)"."""
from __future__ import annotations

import csv
import re
from collections import Counter
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Dict, List, Tuple

from .errors import UserError
from .leaderboard import COLUMNS, FORMULA_PREFIXES, rank_of
from .store import EPISODE_COLUMNS, PROTOCOLS, RUN_COLUMNS, SQLITE_MAGIC, STATUSES

_INTS = {"rank": 1, "n_way": 2, "q_query": 1, "episodes": 1, "failed_episodes": 0}  # column -> minimum
_RANGES = {"acc_mean": (0, 1), "acc_ci95_low": (0, 1), "acc_ci95_high": (0, 1), "macro_f1_mean": (0, 1),
           "grad_norm_cv": (0, float("inf")), "grad_dir_consistency": (-1, 1), "source_alignment": (-1, 1),
           "path_efficiency": (0, 1), "sec_per_episode": (0, float("inf")), "peak_mem_mb": (0, float("inf")),
           "trainable_params": (0, float("inf"))}  # optional numbers: empty allowed
_TEXT = ("method", "protocol", "backbone", "task", "k_shot", "version")
_SLACK = 1e-6


def _check_header(path, header: List[str]) -> List[str]:
    if header == list(COLUMNS):
        return []
    problems = []
    for i, (got, want) in enumerate(zip(header, COLUMNS), start=1):
        if got != want:
            problems.append(f"{path}:1: header: column {i} is '{got}' (expected '{want}')")
            break
    missing = [c for c in COLUMNS if c not in header]
    extra = [c for c in header if c not in COLUMNS]
    if missing:
        problems.append(f"{path}:1: header: missing column(s) {', '.join(missing)} (expected {','.join(COLUMNS)})")
    if extra:
        problems.append(f"{path}:1: header: unexpected column(s) {', '.join(extra)} (expected {','.join(COLUMNS)})")
    return problems or [f"{path}:1: header: {len(header)} columns (expected {len(COLUMNS)})"]


def _check_row(where: str, row: Dict[str, str]) -> Tuple[List[str], Dict]:
    """Problems of one row and its parsed numbers (None for empty optional cells, missing for bad cells)."""
    problems, values = [], {}
    for column, minimum in _INTS.items():
        text = row[column]
        if not re.fullmatch(r"-?\d+", text.strip()):
            problems.append(f"{where}: {column}: '{text}' is not an integer (expected an integer >= {minimum})")
        elif int(text) < minimum:
            problems.append(f"{where}: {column}: {text} is too small (expected an integer >= {minimum})")
        else:
            values[column] = int(text)
    for column, (low, high) in _RANGES.items():
        text = row[column].strip()
        if not text:
            values[column] = None
            continue
        try:
            number = float(text)
        except ValueError:
            problems.append(f"{where}: {column}: '{row[column]}' is not a number (expected a number or empty)")
            continue
        if not low - _SLACK <= number <= high + _SLACK:
            problems.append(f"{where}: {column}: {text} out of range (expected {low} <= value <= {high})")
        values[column] = number
    for column in _TEXT:
        if row[column].startswith(FORMULA_PREFIXES):
            problems.append(f"{where}: {column}: '{row[column]}' starts with a formula character "
                            f"(expected it neutralised with a leading ')")
    if row["protocol"] not in PROTOCOLS:
        problems.append(f"{where}: protocol: '{row['protocol']}' (expected one of {', '.join(PROTOCOLS)})")
    if not re.fullmatch(r"\d+(-\d+)?", row["k_shot"]):
        problems.append(f"{where}: k_shot: '{row['k_shot']}' (expected an integer or MIN-MAX such as 1-5)")
    if not re.fullmatch(r"[0-9a-f]{64}", row["episode_set_sha256"]):
        problems.append(f"{where}: episode_set_sha256: '{row['episode_set_sha256']}' (expected 64 hex characters)")
    if "episodes" in values and values.get("failed_episodes", 0) > values["episodes"]:
        problems.append(f"{where}: failed_episodes: {values['failed_episodes']} > episodes {values['episodes']} "
                        "(expected failed_episodes <= episodes)")
    ci = [values[c] for c in ("acc_ci95_low", "acc_mean", "acc_ci95_high") if c in values]  # parsed cells only
    if len(ci) == 3 and ci.count(None) not in (0, 3):
        problems.append(f"{where}: acc_mean: accuracy and its CI must be all set or all empty "
                        "(expected empty only when every episode failed)")
    elif len(ci) == 3 and ci[1] is None and values.get("failed_episodes") != values.get("episodes"):
        problems.append(f"{where}: acc_mean: empty although not every episode failed "
                        "(expected a mean accuracy when failed_episodes < episodes)")
    elif len(ci) == 3 and None not in ci and not ci[0] - _SLACK <= ci[1] <= ci[2] + _SLACK:
        problems.append(f"{where}: acc_mean: CI [{ci[0]}, {ci[2]}] does not contain the mean {ci[1]} "
                        "(expected acc_ci95_low <= acc_mean <= acc_ci95_high)")
    if values.get("trainable_params") is not None and values["trainable_params"] != int(values["trainable_params"]):
        problems.append(f"{where}: trainable_params: {row['trainable_params']} (expected an integer)")
    return problems, values


def _check_csv(path) -> Tuple[List[str], int]:
    try:
        return _check_csv_rows(path)
    except (UnicodeDecodeError, csv.Error) as exc:
        return [f"{path}: file: cannot be read as CSV ({exc}) (expected UTF-8 CSV)"], 0


def _check_csv_rows(path) -> Tuple[List[str], int]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return [f"{path}:1: header: empty file (expected {','.join(COLUMNS)})"], 0
        problems = _check_header(path, header)
        if problems:
            return problems, 0
        groups: Dict[tuple, List[tuple]] = {}
        count = 0
        for cells in reader:
            count += 1
            where = f"{path}:{reader.line_num}"
            if len(cells) != len(COLUMNS):
                problems.append(f"{where}: row: {len(cells)} cells (expected {len(COLUMNS)})")
                continue
            row = dict(zip(COLUMNS, cells))
            row_problems, values = _check_row(where, row)
            problems += row_problems
            if {"episodes", "rank", "acc_mean"} <= set(values):  # parsed: the row can join the group checks
                key = tuple(row[c] for c in ("task", "n_way", "k_shot", "q_query", "backbone", "protocol",
                                            "episode_set_sha256"))
                groups.setdefault(key, []).append((where, values))
    for members in groups.values():
        counts = Counter(v["episodes"] for _, v in members)
        usual = counts.most_common(1)[0][0]
        expected_ranks = rank_of([v["acc_mean"] for _, v in members])
        for (where, values), expected in zip(members, expected_ranks):
            if values["episodes"] != usual:
                problems.append(f"{where}: episodes: {values['episodes']} (expected {usual} like the other rows of "
                                "its ranked group: an identical episode set has equal counts)")
            if values["rank"] != expected:
                problems.append(f"{where}: rank: {values['rank']} (expected {expected} from acc_mean order "
                                "within its task/setting/backbone/protocol/episode-set group)")
    return problems, count


def validate_csv(path) -> List[str]:
    """Problems of a leaderboard CSV (empty list when valid)."""
    return _check_csv(path)[0]


def _check_store(path) -> Tuple[List[str], int]:
    with closing(sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)) as conn:
        try:
            tables = {name: [c[1] for c in conn.execute(f"PRAGMA table_info({name})")] for name in ("runs", "episodes")}
        except sqlite3.DatabaseError as exc:
            return [f"{path}: file: cannot be read as SQLite ({exc}) (expected a results store)"], 0
        problems = [f"{path}: {table}: missing column(s) {', '.join(c for c in wanted if c not in tables[table])} "
                    f"(expected {', '.join(wanted)})"
                    for table, wanted in (("runs", RUN_COLUMNS), ("episodes", EPISODE_COLUMNS))
                    if not set(wanted) <= set(tables[table])]
        if problems:
            return problems, 0
        rows = conn.execute("SELECT rowid, status, accuracy, macro_f1, task, setting, seed, episode_index, "
                            "fingerprint, method, protocol FROM episodes ORDER BY rowid").fetchall()
    seen: Dict[tuple, tuple] = {}
    for rowid, status, accuracy, macro_f1, task, setting, seed, index, fingerprint, method, protocol in rows:
        where = f"{path}:episodes[{rowid}]"
        if status not in STATUSES:
            problems.append(f"{where}: status: '{status}' (expected one of {', '.join(STATUSES)})")
        if protocol not in PROTOCOLS:
            problems.append(f"{where}: protocol: '{protocol}' (expected one of {', '.join(PROTOCOLS)})")
        if status == "ok" and accuracy is None:
            problems.append(f"{where}: accuracy: empty for an ok episode (expected a value in [0, 1])")
        for column, value in (("accuracy", accuracy), ("macro_f1", macro_f1)):
            if value is not None and not 0 <= value <= 1:
                problems.append(f"{where}: {column}: {value} out of range (expected 0 <= value <= 1)")
        first = seen.setdefault((task, setting, seed, index), (fingerprint, method))
        if first[0] != fingerprint:
            problems.append(f"{where}: fingerprint: {method} saw a different episode {index} of {task} {setting} "
                            f"seed {seed} than {first[1]} (expected identical episodes across methods)")
    return problems, len(rows)


def validate_store(path) -> List[str]:
    """Problems of a results store (empty list when valid)."""
    return _check_store(path)[0]


def _is_sqlite(path: Path) -> bool:
    if path.suffix.lower() in (".sqlite", ".sqlite3", ".db"):
        return True
    if path.suffix.lower() == ".csv":
        return False
    with open(path, "rb") as handle:
        return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC


def cli_validate(args) -> int:
    """``fewshot-bench validate FILE``: 0 when valid, 1 with one line per problem otherwise."""
    path = Path(args.file)
    if not path.is_file():
        raise UserError(f"'{path}' does not exist (expected a leaderboard CSV or a results store)")
    problems, count = (_check_store if _is_sqlite(path) else _check_csv)(path)
    if not problems:
        print(f"OK: {path} ({count} rows checked)")
        return 0
    for problem in problems:
        print(problem)
    print(f"INVALID: {len(problems)} problem(s)")
    return 1
