"""Issue 25: destructive and malformed input refused before anything is written, valid input accepted, and a
method's failure (exception, SystemExit, KeyboardInterrupt, bad output, cheating figures) failing only its episode.

Each bad-input case prepares its files in a tmp dir (the working directory, so default outputs land there too),
snapshots that tree (content and mtime of every file, -wal/-shm included), runs the command in-process, and
asserts exit code 2, exactly one ``error:`` line, no traceback and an unchanged tree.
"""
import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest
import yaml

from fewshot_bench.cli import main

TINY = ["--backbone", "tiny-encoder", "--device", "cpu"]
RUN = ["run", "--tasks", "demo_intents", *TINY, "--methods", "protonet", "--episodes", "1", "--k-shot", "1",
       "--store", "{tmp}/s.sqlite", "--out", "{tmp}/lb.csv"]
TUNE = ["tune", "--tasks", "demo_intents", *TINY, "--methods", "protonet", "--episodes", "1", "--trials", "1",
        "--store", "{tmp}/t.sqlite", "--out", "{tmp}/tuned.yaml"]
CARD = {"name": "v2_card", "version": 1, "description": "d", "citation": "c", "license": "l",
        "source": {"local_dir": "demo_intents", "packaged": True}, "splits": ["data"],
        "pools": {"strategy": "classes", "source": ["play_music", "set_timer", "weather_forecast"],
                  "validation": ["translate_phrase", "add_calendar_event"],
                  "target": ["movie_showtimes", "water_plants", "pay_utility_bill", "find_parking"]}}
DATA_CARD = {"name": "v2_data", "version": 1, "description": "d", "citation": "c", "license": "l",
             "source": {"local_dir": "v2"}, "splits": ["train"],
             "pools": {"strategy": "classes", "fractions": {"source": 0.4, "validation": 0.2, "target": 0.4}}}
CARDS = ["--tasks-dir", "{tmp}/cards"]
CHECK = ["check-task", "v2_data", *CARDS, "--data-dir", "{tmp}/data"]
# a 747-byte-class alias bomb: 9 levels of 9 aliases (9**9 values once expanded)
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def write(path: Path, text) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text, encoding="utf-8")


def card(tmp: Path, text=None, **changes) -> None:
    write(tmp / "cards" / "card.yaml", text if text is not None else yaml.safe_dump({**CARD, **changes}))


def data_task(tmp: Path, rows=None, raw=None, card_changes=None, splits_file=None) -> None:
    """A card reading ``data/v2/train.jsonl`` (``rows`` as JSON lines, or ``raw`` text) from the tmp data dir."""
    if rows is None and raw is None:
        rows = [{"text": f"utterance {i} of {c}", "label": c} for c in "abcdefghij" for i in range(6)]
    write(tmp / "data" / "v2" / "train.jsonl", raw if raw is not None else "".join(json.dumps(r) + "\n" for r in rows))
    fields = {**DATA_CARD, **(card_changes or {})}
    if splits_file is not None:
        write(tmp / "data" / "v2" / "splits.json", splits_file)
        fields["pools"] = {"strategy": "classes", "class_splits_file": "splits.json"}
    write(tmp / "cards" / "card.yaml", yaml.safe_dump(fields))


def config(tmp: Path, text: str) -> None:
    write(tmp / "c.yaml", text)


def method_file(tmp: Path, body: str) -> None:
    write(tmp / "m.py", "import torch\nfrom fewshot_bench.methods import Figure, Method, MethodConfig, Predictor\n"
          + body)


def unrelated_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
        conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.close()


def store(path: Path, **changes) -> None:
    """A valid results store with one episode (input of leaderboard / merge / compare cases)."""
    from fewshot_bench.store.results import ResultsStore

    from helpers import record

    with ResultsStore(path) as opened:
        opened.write_episode(record(**changes))


def shards(tmp: Path) -> None:
    """Two shards holding different ok rows for the same episode key."""
    store(tmp / "a.sqlite", accuracy=0.5)
    store(tmp / "b.sqlite", accuracy=0.9, run_id="run1")


M = "{tmp}/m.py:M"
CASES = [
    # --- outputs that would destroy an input, or never reach the disk
    ("out-is-store", RUN + ["--out", "{tmp}/s.sqlite"], lambda t: store(t / "s.sqlite")),
    ("out-is-new-store", RUN + ["--out", "{tmp}/s.sqlite"], None),
    ("out-md-is-store", RUN + ["--store", "{tmp}/lb.md"], None),
    ("out-overall-is-store", RUN + ["--store", "{tmp}/lb_overall.csv"], None),
    ("out-html-is-store", RUN + ["--store", "{tmp}/lb.html"], None),
    ("out-is-store-wal", RUN + ["--out", "{tmp}/s.sqlite-wal"], None),
    ("out-is-config", RUN + ["--config", "{tmp}/c.yaml", "--out", "{tmp}/c.yaml"], lambda t: config(t, "episodes: 1\n")),
    ("store-is-config", RUN + ["--config", "{tmp}/c.yaml", "--store", "{tmp}/c.yaml"],
     lambda t: config(t, "episodes: 1\n")),
    ("out-is-method-file", RUN + ["--methods", M, "--out", "{tmp}/m.py"],
     lambda t: method_file(t, "class M(Method):\n    name = 'mine'\n")),
    ("store-is-method-file", RUN + ["--methods", M, "--store", "{tmp}/m.py"],
     lambda t: method_file(t, "class M(Method):\n    name = 'mine'\n")),
    ("out-is-card", RUN + [*CARDS, "--out", "{tmp}/cards/card.yaml"], lambda t: card(t)),
    ("out-is-tuned-file", RUN + ["--tuned", "{tmp}/tuned.yaml", "--out", "{tmp}/tuned.yaml"],
     lambda t: write(t / "tuned.yaml", "settings: {}\n")),
    ("store-memory", RUN + ["--store", ":memory:"], None),
    ("store-empty", RUN + ["--store", ""], None),
    ("store-uri", RUN + ["--store", "file:s.sqlite?mode=memory"], None),
    ("out-is-folder", RUN + ["--out", "{tmp}/folder"], lambda t: (t / "folder").mkdir()),
    ("out-md-is-folder", RUN, lambda t: (t / "lb.md").mkdir()),
    ("out-html-is-folder", RUN, lambda t: (t / "lb.html").mkdir()),
    ("out-png-is-folder", RUN, lambda t: (t / "lb.png").mkdir()),
    ("out-cells-is-file", RUN, lambda t: write(t / "lb_cells", "x")),
    ("leaderboard-out-is-store", ["leaderboard", "--store", "{tmp}/s.sqlite", "--out", "{tmp}/s.sqlite"],
     lambda t: store(t / "s.sqlite")),
    ("leaderboard-md-is-store", ["leaderboard", "--store", "{tmp}/lb.md", "--out", "{tmp}/lb.csv"],
     lambda t: store(t / "lb.md")),
    ("leaderboard-md-is-folder", ["leaderboard", "--store", "{tmp}/s.sqlite", "--out", "{tmp}/lb.csv"],
     lambda t: (store(t / "s.sqlite"), (t / "lb.md").mkdir())),
    ("leaderboard-html-is-folder", ["leaderboard", "--store", "{tmp}/s.sqlite", "--out", "{tmp}/lb.csv"],
     lambda t: (store(t / "s.sqlite"), (t / "lb.html").mkdir())),
    ("leaderboard-bootstrap-negative", ["leaderboard", "--store", "{tmp}/s.sqlite", "--bootstrap", "-5"],
     lambda t: store(t / "s.sqlite")),
    ("tune-out-is-store", TUNE + ["--out", "{tmp}/t.sqlite"], None),
    ("tune-store-memory", TUNE + ["--store", ":memory:"], None),
    ("tune-out-is-method-file", TUNE + ["--methods", M, "--out", "{tmp}/m.py"],
     lambda t: method_file(t, "class M(Method):\n    name = 'mine'\n")),
    ("merge-into-a-shard", ["merge", "{tmp}/a.sqlite", "--store", "{tmp}/a.sqlite"], lambda t: store(t / "a.sqlite")),
    ("merge-conflicting-shards", ["merge", "{tmp}/a.sqlite", "{tmp}/b.sqlite", "--store", "{tmp}/m.sqlite"], shards),
    ("merge-conflicting-target", ["merge", "{tmp}/b.sqlite", "--store", "{tmp}/a.sqlite"], shards),
    ("merge-into-unrelated-sqlite", ["merge", "{tmp}/a.sqlite", "--store", "{tmp}/o.sqlite"],
     lambda t: (store(t / "a.sqlite"), unrelated_sqlite(t / "o.sqlite"))),
    ("merge-store-memory", ["merge", "{tmp}/a.sqlite", "--store", ":memory:"], lambda t: store(t / "a.sqlite")),
    ("new-task-escapes", ["new-task", "../escaped"], None),
    ("new-task-slash", ["new-task", "a/b"], None),
    ("new-task-dots", ["new-task", ".."], None),
    ("new-task-space", ["new-task", "my task"], None),
    ("new-task-absolute", ["new-task", "/tmp/x"], None),
    ("new-task-local-dir-escapes", ["new-task", "x", "--local-dir", "../x"], None),
    ("new-task-local-dir-absolute", ["new-task", "x", "--local-dir", "/etc"], None),
    # --- NaN, inf and out-of-range numbers, everywhere
    ("full-ft-lr-nan", RUN + ["--methods", "full_ft(lr=nan)"], None),
    ("full-ft-lr-inf", RUN + ["--methods", "full_ft", "--method-config", "full_ft.lr=inf"], None),
    ("full-ft-lr-minus-inf", RUN + ["--methods", "full_ft(lr=-inf)"], None),
    ("full-ft-head-lr-nan", RUN + ["--methods", "full_ft(head_lr=NaN)"], None),
    ("full-ft-weight-decay-nan", RUN + ["--methods", "full_ft(weight_decay=nan)"], None),
    ("sgg-lambda-dir-nan", RUN + ["--methods", "sgg(lambda_dir=nan)"], None),
    ("sgg-lambda-dir-inf", RUN + ["--methods", "sgg", "--method-config", "sgg.lambda_dir=inf"], None),
    ("sgg-ema-nan", RUN + ["--methods", "sgg(ema=nan)"], None),
    ("protonet-temperature-nan", RUN + ["--methods", "protonet(temperature=nan)"], None),
    ("protonet-temperature-zero", RUN + ["--methods", "protonet(temperature=0)"], None),
    ("linear-probe-c-zero", RUN + ["--methods", "linear_probe(C=0)"], None),
    ("linear-probe-c-nan", RUN + ["--methods", "linear_probe(C=nan)"], None),
    ("linear-probe-c-negative", RUN + ["--methods", "linear_probe(C=-1)"], None),
    ("lora-dropout-nan", RUN + ["--methods", "lora(dropout=nan)"], None),
    ("lora-rank-zero", RUN + ["--methods", "lora(rank=0)"], None),
    ("lora-rank-huge", RUN + ["--methods", "lora(rank=99999999999999999999999)"], None),
    ("maml-inner-lr-nan", RUN + ["--methods", "maml(inner_lr=nan)"], None),
    ("maml-outer-lr-inf", RUN + ["--methods", "maml(outer_lr=inf)"], None),
    ("seed-huge", RUN + ["--seed", "99999999999999999999999"], None),
    ("episodes-huge", RUN + ["--episodes", "99999999999999999999999"], None),
    ("query-huge", RUN + ["--query", "99999999999999999999999"], None),
    ("k-shot-nan", RUN + ["--k-shot", "nan"], None),
    ("n-way-inf", RUN + ["--n-way", "inf"], None),
    ("episodes-seed-huge", ["episodes", "demo_intents", "--seed", "99999999999999999999999"], None),
    ("episodes-index-huge", ["episodes", "demo_intents", "--index", "99999999999999999999999"], None),
    ("list-fold-huge", ["list", "tasks", "--fold", "99999999999999999999999"], None),
    ("power-nan", ["power", "--store", "{tmp}/s.sqlite", "--power", "nan"], lambda t: store(t / "s.sqlite")),
    ("power-inf", ["power", "--store", "{tmp}/s.sqlite", "--power", "inf"], lambda t: store(t / "s.sqlite")),
    ("power-delta-nan", ["power", "--store", "{tmp}/s.sqlite", "--delta", "nan"], lambda t: store(t / "s.sqlite")),
    ("power-delta-inf", ["power", "--store", "{tmp}/s.sqlite", "--delta", "0.01,inf"], lambda t: store(t / "s.sqlite")),
    ("reproduce-tolerance-nan", ["reproduce", "--store", "{tmp}/s.sqlite", "--tolerance", "nan"],
     lambda t: store(t / "s.sqlite")),
    ("reproduce-tolerance-inf", ["reproduce", "--store", "{tmp}/s.sqlite", "--tolerance", "inf"],
     lambda t: store(t / "s.sqlite")),
    ("reproduce-sample-zero", ["reproduce", "--store", "{tmp}/s.sqlite", "--sample", "0"],
     lambda t: store(t / "s.sqlite")),
    ("reproduce-bootstrap-zero", ["reproduce", "--store", "{tmp}/s.sqlite", "--bootstrap", "0"],
     lambda t: store(t / "s.sqlite")),
    ("compare-bootstrap-zero", ["compare", "--store", "{tmp}/s.sqlite", "--pair", "full_ft=protonet", "--bootstrap",
                                "0"], lambda t: store(t / "s.sqlite")),
    ("compare-bootstrap-negative", ["compare", "--store", "{tmp}/s.sqlite", "--pair", "full_ft=protonet",
                                    "--bootstrap", "-3"], lambda t: store(t / "s.sqlite")),
    ("tune-trials-zero", TUNE + ["--trials", "0"], None),
    ("tune-device-tpu", TUNE + ["--device", "tpu"], None),
    ("tune-lr-nan", TUNE + ["--methods", "full_ft", "--method-config", "full_ft.lr=nan"], None),
    ("tune-seed-huge", TUNE + ["--seed", "99999999999999999999999"], None),
    ("tune-unknown-method", TUNE + ["--methods", "protonett"], None),
    ("tune-method-config-other-method", TUNE + ["--method-config", "full_ft.lr=0.1"], None),
    ("tune-method-init-raises", TUNE + ["--methods", M],
     lambda t: method_file(t, "class M(Method):\n    name = 'mine'\n    def __init__(self, config=None):\n"
                              "        raise RuntimeError('boom')\n")),
    ("tune-unknown-task", TUNE + ["--tasks", "nosuch"], None),
    ("tune-store-unrelated-sqlite", TUNE + ["--store", "{tmp}/o.sqlite"], lambda t: unrelated_sqlite(t / "o.sqlite")),
    ("run-restarts-zero", RUN + ["--restarts", "0"], None),
    ("run-threads-negative", RUN + ["--threads", "-1"], None),
    ("run-tuned-malformed", RUN + ["--tuned", "{tmp}/tuned.yaml"], lambda t: write(t / "tuned.yaml", "settings: [1\n")),
    ("run-tuned-duplicate-key", RUN + ["--tuned", "{tmp}/tuned.yaml"],
     lambda t: write(t / "tuned.yaml", "settings: {}\nsettings: {}\n")),
    ("run-store-unrelated-sqlite-wal", RUN + ["--store", "{tmp}/o.sqlite"], lambda t: unrelated_sqlite(t / "o.sqlite")),
    ("validate-a-folder", ["validate", "{tmp}/folder"], lambda t: (t / "folder").mkdir()),
    ("merge-text-shard", ["merge", "{tmp}/notes.txt", "--store", "{tmp}/m.sqlite"],
     lambda t: write(t / "notes.txt", "my notes\n")),
    # --- --config files
    ("config-methods-int", RUN + ["--config", "{tmp}/c.yaml"], lambda t: config(t, "methods: 5\n")),
    ("config-methods-int-no-flag", ["run", "--config", "{tmp}/c.yaml", *TINY],
     lambda t: config(t, "tasks: [demo_intents]\nmethods: 5\n")),
    ("config-methods-mapping", ["run", "--config", "{tmp}/c.yaml", *TINY],
     lambda t: config(t, "tasks: [demo_intents]\nmethods: {protonet: 1}\n")),
    ("config-methods-empty-list", ["run", "--config", "{tmp}/c.yaml", *TINY],
     lambda t: config(t, "tasks: [demo_intents]\nmethods: []\n")),
    ("config-methods-numbers", ["run", "--config", "{tmp}/c.yaml", *TINY],
     lambda t: config(t, "tasks: [demo_intents]\nmethods: [1, 2]\n")),
    ("config-method-config-int", RUN + ["--config", "{tmp}/c.yaml"], lambda t: config(t, "method_config: 5\n")),
    ("config-progress-seconds-nan", RUN + ["--config", "{tmp}/c.yaml"],
     lambda t: config(t, "progress_seconds: .nan\n")),
    ("config-progress-seconds-inf", RUN + ["--config", "{tmp}/c.yaml"],
     lambda t: config(t, "progress_seconds: .inf\n")),
    ("config-seed-huge", RUN[:1] + ["--config", "{tmp}/c.yaml"], lambda t: config(t, "seed: 99999999999999999999999\n")),
    ("config-duplicate-key", RUN + ["--config", "{tmp}/c.yaml"], lambda t: config(t, "episodes: 1\nepisodes: 2\n")),
    ("config-nested-duplicate-key", ["run", "--config", "{tmp}/c.yaml", *TINY],
     lambda t: config(t, "settings:\n- {task: demo_intents, task: demo_intents}\n")),
    ("config-alias-bomb", RUN + ["--config", "{tmp}/c.yaml"], lambda t: config(t, BOMB)),
    ("config-too-big", RUN + ["--config", "{tmp}/c.yaml"], lambda t: config(t, "# " + "x" * 1_100_000 + "\n")),
    ("config-python-tag", RUN + ["--config", "{tmp}/c.yaml"],
     lambda t: config(t, "episodes: !!python/object/apply:os.getcwd []\n")),
    ("config-tasks-int", ["run", "--config", "{tmp}/c.yaml", *TINY], lambda t: config(t, "tasks: 5\n")),
    ("config-device-tpu", RUN + ["--config", "{tmp}/c.yaml", "--device", "auto"], lambda t: config(t, "device: tpu\n")),
    ("config-store-memory", ["run", "--config", "{tmp}/c.yaml", *TINY],
     lambda t: config(t, "tasks: [demo_intents]\nmethods: [protonet]\nstore: ':memory:'\n")),
    ("config-out-is-store", ["run", "--config", "{tmp}/c.yaml", *TINY],
     lambda t: config(t, "tasks: [demo_intents]\nmethods: [protonet]\nstore: x.sqlite\nout: x.sqlite\n")),
    # --- method specs and method files
    ("methods-comma", RUN + ["--methods", ","], None),
    ("methods-comma-space", RUN + ["--methods", " , "], None),
    ("methods-empty", RUN + ["--methods", ""], None),
    ("tasks-comma", RUN + ["--tasks", ","], None),
    ("tune-methods-comma", TUNE + ["--methods", ","], None),
    ("spec-duplicate-field", RUN + ["--methods", "protonet(temperature=0.1,temperature=5)"], None),
    ("spec-duplicate-same-value", RUN + ["--methods", "full_ft(steps=2,steps=2)"], None),
    ("spec-empty-value", RUN + ["--methods", "protonet(temperature=)"], None),
    ("file-method-named-builtin", RUN + ["--methods", M],
     lambda t: method_file(t, "class M(Method):\n    name = 'full_ft'\n")),
    ("file-method-class-named-builtin", RUN + ["--methods", "{tmp}/m.py:protonet"],
     lambda t: method_file(t, "class protonet(Method):\n    pass\n")),
    ("file-method-init-raises", RUN + ["--methods", M],
     lambda t: method_file(t, "class M(Method):\n    name = 'mine'\n    def __init__(self, config=None):\n"
                              "        raise RuntimeError('boom')\n")),
    ("file-method-init-exits", RUN + ["--methods", M],
     lambda t: method_file(t, "class M(Method):\n    name = 'mine'\n    def __init__(self, config=None):\n"
                              "        raise ValueError('no')\n")),
    ("file-method-config-raises", RUN + ["--methods", M],
     lambda t: method_file(t, "from dataclasses import dataclass\n@dataclass\nclass C(MethodConfig):\n"
                              "    def __post_init__(self):\n        raise KeyError('x')\n"
                              "class M(Method):\n    name = 'mine'\n    config_class = C\n")),
    ("file-method-bad-protocol", RUN + ["--methods", M],
     lambda t: method_file(t, "class M(Method):\n    name = 'mine'\n    protocol = 'cheating'\n")),
    ("file-method-declares-accuracy", RUN + ["--methods", M],
     lambda t: method_file(t, "class M(Method):\n    name = 'mine'\n    figures = (Figure('accuracy', 0, 1, 'x'),)\n")),
    ("file-method-figures-string", RUN + ["--methods", M],
     lambda t: method_file(t, "class M(Method):\n    name = 'mine'\n    figures = 'sgg_mag_active'\n")),
    ("file-method-bad-attn", RUN + ["--methods", M],
     lambda t: method_file(t, "class M(Method):\n    name = 'mine'\n    attn_implementation = 'flash'\n")),
    ("file-method-lr-nan", RUN + ["--methods", M, "--method-config", "mine.lr=nan"],
     lambda t: method_file(t, "from dataclasses import dataclass\nfrom fewshot_bench.core.config import option\n"
                              "@dataclass\nclass C(MethodConfig):\n    lr: float = option(0.1)\n"
                              "class M(Method):\n    name = 'mine'\n    config_class = C\n")),
    # --- task cards
    ("card-fractions-nan", ["list", "tasks", *CARDS],
     lambda t: card(t, pools={"strategy": "classes", "fractions": {"source": float("nan"), "target": 1.0}})),
    ("card-fractions-inf", ["list", "tasks", *CARDS],
     lambda t: card(t, pools={"strategy": "classes", "fractions": {"source": float("inf"), "target": 1.0}})),
    ("card-fractions-negative", ["list", "tasks", *CARDS],
     lambda t: card(t, pools={"strategy": "classes", "fractions": {"source": -0.5, "validation": 0.5,
                                                                   "target": 1.0}})),
    ("card-fractions-over-one", ["list", "tasks", *CARDS],
     lambda t: card(t, pools={"strategy": "classes", "fractions": {"source": 1.5, "target": -0.5}})),
    ("card-pools-overlap", ["list", "tasks", *CARDS],
     lambda t: card(t, pools={**CARD["pools"], "target": ["movie_showtimes", "play_music"]})),
    ("card-pools-overlap-validation", ["list", "tasks", *CARDS],
     lambda t: card(t, pools={**CARD["pools"], "validation": ["set_timer"]})),
    ("card-pool-repeats-class", ["list", "tasks", *CARDS],
     lambda t: card(t, pools={**CARD["pools"], "target": ["water_plants", "water_plants", "find_parking"]})),
    ("card-pool-null-class", ["list", "tasks", *CARDS],
     lambda t: card(t, pools={**CARD["pools"], "target": ["water_plants", None]})),
    ("card-duplicate-key", ["list", "tasks", *CARDS],
     lambda t: card(t, yaml.safe_dump(CARD) + "version: 2\n")),
    ("card-nested-duplicate-key", ["list", "tasks", *CARDS],
     lambda t: card(t, yaml.safe_dump({k: v for k, v in CARD.items() if k != "source"})
                    + "source: {local_dir: demo_intents, local_dir: x, packaged: true}\n")),
    ("card-alias-bomb", ["list", "tasks", *CARDS], lambda t: card(t, yaml.safe_dump(CARD) + BOMB.replace("a:", "aa:"))),
    ("card-too-big", ["list", "tasks", *CARDS], lambda t: card(t, yaml.safe_dump(CARD) + "#" + "x" * 1_100_000 + "\n")),
    ("card-python-tag", ["list", "tasks", *CARDS],
     lambda t: card(t, yaml.safe_dump(CARD).replace("version: 1", "version: !!python/name:os.system"))),
    ("card-class-splits-escapes", ["list", "tasks", *CARDS],
     lambda t: card(t, pools={"strategy": "classes", "class_splits_file": "../../secret.json"})),
    ("card-class-splits-absolute", ["list", "tasks", *CARDS],
     lambda t: card(t, pools={"strategy": "classes", "class_splits_file": "/etc/passwd"})),
    ("card-local-dir-escapes", ["list", "tasks", *CARDS],
     lambda t: card(t, source={"local_dir": "../outside"})),
    ("card-local-dir-absolute", ["list", "tasks", *CARDS], lambda t: card(t, source={"local_dir": "/etc"})),
    ("card-local-dir-home", ["list", "tasks", *CARDS], lambda t: card(t, source={"local_dir": "~/data"})),
    ("card-split-escapes", ["list", "tasks", *CARDS], lambda t: card(t, splits=["../data"])),
    ("card-name-path", ["list", "tasks", *CARDS], lambda t: card(t, name="../evil")),
    ("card-name-space", ["list", "tasks", *CARDS], lambda t: card(t, name="my task")),
    ("card-version-huge", ["list", "tasks", *CARDS], lambda t: card(t, version=10**30)),
    ("card-q-query-nan", ["list", "tasks", *CARDS],
     lambda t: card(t, episodes={"n_way": 2, "k_shot": 1, "q_query": float("nan")})),
    ("card-text-field-list", ["list", "tasks", *CARDS], lambda t: card(t, input={"text_field": ["a", "b"]})),
    ("card-seed-nan", ["list", "tasks", *CARDS],
     lambda t: card(t, pools={"strategy": "classes", "fractions": {"source": 0.5, "target": 0.5}, "seed": 0.5})),
    ("card-run-pools-overlap", RUN + [*CARDS, "--tasks", "v2_card", "--n-way", "2"],
     lambda t: card(t, pools={**CARD["pools"], "target": ["movie_showtimes", "play_music"]})),
    # --- data files
    ("data-null-label", CHECK, lambda t: data_task(t, rows=[{"text": "a", "label": None}, {"text": "b", "label": "x"}])),
    ("data-missing-label", CHECK, lambda t: data_task(t, raw='{"text": "a", "label": "x"}\n{"text": "b"}\n')),
    ("data-label-list", CHECK, lambda t: data_task(t, rows=[{"text": "a", "label": ["x"]}, {"text": "b", "label": ["y"]}])),
    ("data-text-list", CHECK, lambda t: data_task(t, rows=[{"text": ["a", "b"], "label": "x"},
                                                           {"text": ["c"], "label": "y"}])),
    ("data-text-mapping", CHECK, lambda t: data_task(t, rows=[{"text": {"a": 1}, "label": "x"}])),
    ("data-empty-file", CHECK, lambda t: data_task(t, raw="")),
    ("data-malformed-jsonl", CHECK, lambda t: data_task(t, raw='{"text": "a", "label": \n')),
    ("data-not-utf8", CHECK, lambda t: data_task(t, raw=b'{"text": "caf\xe9", "label": "x"}\n')),
    ("data-split-is-folder", CHECK, lambda t: (data_task(t), os.remove(t / "data" / "v2" / "train.jsonl"),
                                               (t / "data" / "v2" / "train.jsonl").mkdir())),
    ("data-class-splits-overlap", CHECK,
     lambda t: data_task(t, splits_file=json.dumps({"train": ["a", "b", "c"], "validation": ["d"],
                                                    "test": ["c", "e", "f"]}))),
    ("data-class-splits-list", CHECK, lambda t: data_task(t, splits_file="[1, 2]")),
    ("data-class-splits-few-folds", CHECK + ["--fold", "1"],
     lambda t: data_task(t, splits_file=json.dumps({"folds": []}))),
    ("data-class-splits-malformed", CHECK, lambda t: data_task(t, splits_file="{not json")),
    ("data-class-splits-missing", CHECK,
     lambda t: (data_task(t, splits_file="{}"), os.remove(t / "data" / "v2" / "splits.json"))),
    ("data-run-null-label", RUN + [*CARDS, "--tasks", "v2_data", "--data-dir", "{tmp}/data", "--n-way", "2"],
     lambda t: data_task(t, rows=[{"text": f"t{i}", "label": None if i == 7 else "xy"[i % 2]} for i in range(40)])),
]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def invoke(argv, tmp_path, capsys):
    capsys.readouterr()
    try:
        code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    from fewshot_bench.core.registry import TASKS

    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))  # cards of --tasks-dir stay in this test
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FEWSHOT_BENCH_DATA", raising=False)
    return tmp_path


def test_at_least_120_distinct_cases():
    assert len(CASES) >= 120 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("argv, setup", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_anything_is_written(argv, setup, workdir, capsys):
    if setup:
        setup(workdir)
    before = snapshot(workdir)
    code, _, err = invoke(argv, workdir, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert snapshot(workdir) == before, err


def test_refused_merge_leaves_an_unrelated_sqlite_file_out_of_wal(workdir, capsys):
    store(workdir / "a.sqlite")
    unrelated_sqlite(workdir / "o.sqlite")
    code, _, _ = invoke(["merge", "{tmp}/a.sqlite", "--store", "{tmp}/o.sqlite"], workdir, capsys)
    assert code == 2
    with sqlite3.connect(workdir / "o.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_store_locked_too_long_is_one_line(workdir, capsys, monkeypatch):
    import fewshot_bench.store.results as store_module

    store(workdir / "s.sqlite")
    holder = sqlite3.connect(workdir / "s.sqlite")
    holder.execute("BEGIN EXCLUSIVE")
    real_connect = sqlite3.connect
    monkeypatch.setattr(store_module.sqlite3, "connect", lambda path, timeout=60, **kw: real_connect(path, timeout=0.2))
    try:
        code, _, err = invoke(RUN, workdir, capsys)
    finally:
        holder.rollback()
        holder.close()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "locked" in lines[0] and "Traceback" not in err, err


# --- valid input that was refused -------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, setup", [
    (["run", "--methods", "protonet", *TINY, "--episodes", "1"], None),
    (["run", "--config", "{tmp}/c.yaml", *TINY], lambda t: config(t, "tasks: [demo_intents]\nmethods: [protonet]\n"
                                                                     "episodes: 1\nk_shot: [1]\n")),
    (["run", "--config", "{tmp}/c.yaml", *TINY], lambda t: config(t, "tasks: demo_intents\nmethods: protonet\n"
                                                                     "episodes: 1\nk_shot: [1]\n")),
], ids=["methods-without-data-dir", "config-tasks-and-methods", "config-comma-strings"])
def test_valid_input_is_accepted(argv, setup, workdir, capsys):
    if setup:
        setup(workdir)
    code, _, err = invoke(argv, workdir, capsys)
    assert code == 0, err
    rows = sqlite3.connect(workdir / "runs" / "results.sqlite").execute("SELECT method, status FROM episodes").fetchall()
    assert rows and {m for m, _ in rows} == {"protonet"} and {s for _, s in rows} == {"ok"}


def test_new_task_suggests_check_task_with_the_data_dir(workdir, capsys):
    (workdir / "data").mkdir()
    code, out, err = invoke(["new-task", "mine", "--data-dir", "{tmp}/data"], workdir, capsys)
    assert code == 0, err
    assert f"--data-dir {workdir / 'data'}" in out and "check-task mine" in out


# --- a method's failure fails its episode; the run goes on -------------------------------------------------------
METHODS = '''
import os, signal, sys
import torch
from fewshot_bench.methods import Figure, Method, Predictor

SHARE = Figure("my_share", 0, 1, "a share the method reports")


class Honest(Method):
    name = "honest"

    def adapt(self, ctx):
        n_way = ctx.n_way
        return Predictor(lambda batch: torch.zeros(len(batch), n_way))


class Exits(Honest):
    name = "exits"

    def adapt(self, ctx):
        sys.exit(0)


class Interrupts(Honest):
    name = "interrupts"

    def adapt(self, ctx):
        raise KeyboardInterrupt


class Raises(Honest):
    name = "raises"

    def adapt(self, ctx):
        raise RuntimeError("broken method")


class ExitsInPredict(Honest):
    name = "exits_in_predict"

    def adapt(self, ctx):
        def predict(batch):
            sys.exit(3)
        return Predictor(predict)


class WrongShape(Honest):
    name = "wrong_shape"

    def adapt(self, ctx):
        return Predictor(lambda batch: torch.zeros(len(batch), ctx.n_way + 1))


class NotATensor(Honest):
    name = "not_a_tensor"

    def adapt(self, ctx):
        return Predictor(lambda batch: [[0.0] * ctx.n_way] * len(batch))


class NaNLogits(Honest):
    name = "nan_logits"

    def adapt(self, ctx):
        return Predictor(lambda batch: torch.full((len(batch), ctx.n_way), float("nan")))


class ReturnsNone(Honest):
    name = "returns_none"

    def adapt(self, ctx):
        return None


class Cheats(Honest):
    name = "cheats"

    def adapt(self, ctx):
        ctx.figures.update(accuracy=1.0, macro_f1=1.0)
        return super().adapt(ctx)


class Undeclared(Honest):
    name = "undeclared"

    def adapt(self, ctx):
        ctx.figures["x"] = 1
        return super().adapt(ctx)


class OutOfRange(Honest):
    name = "out_of_range"
    figures = (SHARE,)

    def adapt(self, ctx):
        ctx.figures["my_share"] = float("nan")
        return super().adapt(ctx)


class Declared(Honest):
    name = "declared"
    figures = (SHARE,)

    def adapt(self, ctx):
        ctx.figures["my_share"] = 0.25
        return super().adapt(ctx)


class MetaFails(Honest):
    name = "meta_fails"
    protocol = "meta-trained"

    def meta_train(self, ctx):
        raise SystemExit("meta-training gave up")


class CtrlC(Honest):
    name = "ctrl_c"

    def adapt(self, ctx):
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C arrives while this method runs
        return super().adapt(ctx)
'''
FAILING = ["exits", "interrupts", "raises", "exits_in_predict", "wrong_shape", "not_a_tensor", "returns_none",
           "cheats", "undeclared", "out_of_range"]


def _rows(path):
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM episodes ORDER BY method, episode_index")]
    conn.close()
    return rows


def _run_methods(workdir, capsys, names, episodes=2, extra=()):
    write(workdir / "m.py", METHODS)
    classes = {line.split("(")[0][6:]: line for line in METHODS.splitlines() if line.startswith("class ")}
    by_name = {}
    for cls in classes:
        source = METHODS.split(f"class {cls}(")[1]
        by_name[source.split('name = "')[1].split('"')[0]] = cls
    specs = ",".join(["protonet"] + [f"{{tmp}}/m.py:{by_name[n]}" for n in names])
    argv = ["run", "--tasks", "demo_intents", *TINY, "--k-shot", "1", "--query", "2", "--episodes", str(episodes),
            "--methods", specs, "--store", "{tmp}/s.sqlite", "--out", "", *extra]
    return invoke(argv, workdir, capsys)


def test_failing_methods_fail_their_episodes_and_the_run_goes_on(workdir, capsys):
    code, _, err = _run_methods(workdir, capsys, ["honest", *FAILING, "nan_logits", "declared"])
    assert code == 0, err
    rows = _rows(workdir / "s.sqlite")
    by_method = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    assert set(by_method) == {"protonet", "honest", "nan_logits", "declared", *FAILING}
    assert all(len(v) == 2 for v in by_method.values())
    for name in ("protonet", "honest", "declared"):
        assert {r["status"] for r in by_method[name]} == {"ok"}, name
    for name in FAILING:
        assert {r["status"] for r in by_method[name]} == {"failed"}, name
        assert all(r["accuracy"] is None and r["error"] for r in by_method[name]), name
    assert {r["status"] for r in by_method["nan_logits"]} == {"diverged"}
    assert by_method["exits"][0]["error"].startswith("SystemExit")
    assert by_method["interrupts"][0]["error"].startswith("KeyboardInterrupt")
    assert "undeclared figure 'accuracy'" in by_method["cheats"][0]["error"]
    assert "undeclared figure 'x'" in by_method["undeclared"][0]["error"]
    assert "my_share" in by_method["out_of_range"][0]["error"]
    with sqlite3.connect(workdir / "s.sqlite") as conn:
        stored = conn.execute("SELECT method, name, value FROM figures ORDER BY method, episode_index").fetchall()
    conn.close()
    assert stored == [("declared", "my_share", 0.25)] * 2  # the failed episodes' figures are not stored
    # the honest method's rows are the same as in a run of it alone
    honest = [(r["accuracy"], r["predictions"]) for r in by_method["honest"]]
    os.remove(workdir / "s.sqlite")
    assert _run_methods(workdir, capsys, ["honest"])[0] == 0
    assert [(r["accuracy"], r["predictions"]) for r in _rows(workdir / "s.sqlite") if r["method"] == "honest"] == honest


def test_cheating_figures_cannot_change_the_stored_accuracy(workdir, capsys):
    code, _, err = _run_methods(workdir, capsys, ["honest", "cheats"], episodes=1)
    assert code == 0, err
    stored = {r["method"]: r for r in _rows(workdir / "s.sqlite")}
    assert stored["cheats"]["accuracy"] is None and stored["cheats"]["macro_f1"] is None
    assert stored["honest"]["accuracy"] < 1.0


def test_failed_meta_training_fails_the_cells_episodes_only(workdir, capsys):
    code, _, err = _run_methods(workdir, capsys, ["meta_fails", "honest"], extra=["--source-task", "demo_intents"])
    assert code == 0, err
    rows = _rows(workdir / "s.sqlite")
    failed = [r for r in rows if r["method"] == "meta_fails"]
    assert len(failed) == 2 and all(r["status"] == "failed" and "meta-training gave up" in r["error"] for r in failed)
    assert {r["status"] for r in rows if r["method"] in ("honest", "protonet")} == {"ok"}


def test_ctrl_c_in_the_parent_stops_cleanly_keeping_finished_episodes(workdir, capsys):
    # the method stands in for the user's Ctrl-C by signalling the harness, which a sealed worker cannot do
    code, _, err = _run_methods(workdir, capsys, ["ctrl_c", "honest"], extra=("--isolation", "in-process"))
    assert code == 130, err
    assert "Traceback" not in err and "interrupted" in err
    rows = _rows(workdir / "s.sqlite")
    assert [(r["method"], r["status"]) for r in rows] == [("protonet", "ok"), ("protonet", "ok")]
    assert not any(p.name.endswith(("-wal", "-shm")) for p in workdir.iterdir())


def test_harness_checks_figures_directly(tiny_backbone, demo_episode):
    from fewshot_bench.execution.harness import run_episode
    from fewshot_bench.methods import Figure, Method, Predictor

    class Overwrites(Method):
        name = "overwrites"
        figures = (Figure("step_angle", 0, 180, "degrees"),)

        def adapt(self, ctx):
            ctx.figures.update(step_angle=30.0)
            ctx.figures = {"accuracy": 1.0}  # replaced wholesale: still checked
            return Predictor(lambda batch: torch.zeros(len(batch), ctx.n_way))

    import torch

    record = run_episode(Overwrites(), demo_episode, tiny_backbone, seed=0)
    assert record["status"] == "failed" and record.get("accuracy") is None
    assert "undeclared figure 'accuracy'" in record["error"]


def test_reading_committed_stores_leaves_no_wal_or_shm_files(capsys):
    """Committed stores use a rollback journal: a read-only reader (validate) creates no -wal/-shm beside them."""
    from helpers import REPO

    stores = sorted((REPO / "leaderboard").rglob("*.sqlite"))
    assert stores
    for path in stores:
        assert open(path, "rb").read(20)[18:20] == b"\x01\x01", f"{path} is in WAL mode: PRAGMA journal_mode=DELETE"
        assert main(["validate", str(path)]) in (0, 1)
        assert not [p for p in path.parent.iterdir() if p.name.endswith(("-wal", "-shm"))]
    capsys.readouterr()


def test_check_task_lists_every_duplicate_on_request(workdir, capsys):
    rows = [{"text": f"text {c} {i}", "label": c} for c in "abcdefghij" for i in range(6)]
    data_task(workdir, rows=rows + rows[:40])  # 40 texts twice, each within its pool
    code, out, err = invoke(CHECK, workdir, capsys)
    assert code == 0, err
    assert "--all-duplicates lists every one" in out and out.count("text ") < 40
    code, out, err = invoke(CHECK + ["--all-duplicates"], workdir, capsys)
    assert code == 0, err
    assert "--all-duplicates lists" not in out and out.count("text ") >= 40


def test_store_locked_mid_run_is_one_line_and_keeps_finished_rows(workdir, capsys, monkeypatch):
    from fewshot_bench.store.results import ResultsStore

    real_write, calls = ResultsStore.write_episode, []

    def write_then_locked(self, record, declarations=()):
        calls.append(record)
        if len(calls) > 1:
            raise sqlite3.OperationalError("database is locked")
        return real_write(self, record, declarations)

    monkeypatch.setattr(ResultsStore, "write_episode", write_then_locked)
    code, _, err = invoke(RUN + ["--episodes", "3"], workdir, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "locked" in lines[0] and "Traceback" not in err, err
    assert len(_rows(workdir / "s.sqlite")) == 1


def test_unreadable_split_file_is_one_line(workdir, capsys, monkeypatch):
    data_task(workdir)
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "train.jsonl" and "data" in self.parts:
            raise PermissionError(13, "Permission denied")
        return real(self)

    before = snapshot(workdir)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    code, _, err = invoke(CHECK, workdir, capsys)
    monkeypatch.setattr(Path, "read_bytes", real)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Permission denied" in lines[0] and "Traceback" not in err, err
    assert snapshot(workdir) == before


def test_a_killed_writers_temporary_files_are_removed(workdir):
    from fewshot_bench.core.outputs import atomic_files

    stale, live = workdir / ".lb.tmp999999999.csv", workdir / f".lb.tmp{os.getppid()}.csv"
    write(stale, "half")
    write(live, "being written")
    with atomic_files([workdir / "lb.csv"]) as (temp,):
        temp.write_text("new", encoding="utf-8")
    assert not stale.exists() and live.exists() and (workdir / "lb.csv").read_text() == "new"


def test_tune_scores_a_failing_meta_training_zero_and_goes_on(workdir, capsys):
    write(workdir / "m.py", METHODS)
    argv = ["tune", "--tasks", "demo_intents", *TINY, "--k-shot", "1", "--query", "2", "--episodes", "2", "--trials",
            "1", "--methods", "protonet,{tmp}/m.py:MetaFails", "--store", "{tmp}/t.sqlite", "--out", "{tmp}/t.yaml"]
    code, out, err = invoke(argv, workdir, capsys)
    assert code == 0, err
    chosen = yaml.safe_load((workdir / "t.yaml").read_text())["settings"]
    (entry,) = chosen.values()
    assert entry["{tmp}/m.py:MetaFails".replace("{tmp}", str(workdir))]["val_accuracy"] == 0.0
    assert entry["protonet"]["val_accuracy"] > 0.0


def test_alias_bomb_is_refused_fast(workdir, capsys):
    import time

    card(workdir, yaml.safe_dump(CARD) + BOMB.replace("a:", "aa:"))
    started = time.perf_counter()
    code, _, err = invoke(["list", "tasks", *CARDS], workdir, capsys)
    assert code == 2 and "aliases" in err and time.perf_counter() - started < 5
