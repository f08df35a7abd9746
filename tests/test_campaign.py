"""`fewshot-bench campaign` (status, run, merge, audit) on the tiny backbone and the demo task: the same rows as a plain
`run`, kill and resume, merge of complete units only, bad input, and the committed store's units read as done
(config hashes stay stable across refactors)."""
import csv
import dataclasses
import hashlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from fewshot_bench.execution.campaign import share_out
from fewshot_bench.execution.campaign_queue import Finished, estimate, load_campaign
from fewshot_bench.execution.plan import episode_rates
from fewshot_bench.methods.backbone import load_backbone
from fewshot_bench.cli import main
from fewshot_bench.store.results import ResultsStore

from helpers import REPO, committed_rows, record, shared_data_dir

TINY = {"tasks": ["demo_intents"], "backbone": "tiny-encoder", "query": 2, "seed": 0}
ENTRIES = [{**TINY, "methods": ["full_ft", "protonet"], "method_config": ["full_ft.steps=2"], "n_way": 5, "k_shot": 1,
            "episodes": 3},
           {**TINY, "methods": ["full_ft"], "method_config": ["full_ft.steps=2"], "k_shot": 2, "episodes": 2,
            "restarts": 2}]
# full_ft and lora on banking77 and hwu64 5-way 1-shot were stored on 2026-11-26 with source_every=2, their default
# until commit 74035f6 (2026-12-03) set it to 0: a config change, so today's run hash differs and `run` (and the
# campaign) would compute them again under the new one.
ROWS = "SELECT method, setting, episode_index, COALESCE(restart, 0), predictions, accuracy, config_hash FROM episodes"


@pytest.fixture(autouse=True)
def no_data_dir(monkeypatch):
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", "")


def write_campaign(path, entries):
    path.write_text(yaml.safe_dump({"entries": entries}))
    return str(path)


def empty_store(path):
    """A new results store in rollback-journal mode, as the committed one is."""
    ResultsStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    return str(path)


def rows(path):
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return sorted(conn.execute(ROWS).fetchall())


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def args(action, file, store, shards, *extra):
    return ["campaign", action, "--file", str(file), "--store", str(store), "--shards", str(shards), *extra]


def test_campaign_in_two_processes_then_merged_equals_a_plain_run(tmp_path, capsys):
    file, store, shards = write_campaign(tmp_path / "c.yaml", ENTRIES), empty_store(tmp_path / "s.sqlite"), tmp_path / "sh"
    before = digest(store)
    assert main(args("run", file, store, shards, "--processes", "2")) == 0
    assert digest(store) == before, "campaign run must only read the store"
    assert sorted(p.name for p in shards.glob("shard*.sqlite")) == ["shard0.sqlite", "shard1.sqlite"]
    assert "units 4/4 | episodes 10/10" in capsys.readouterr().out
    recorded = [json.loads(line) for line in (shards / "estimates.jsonl").read_text().splitlines()]
    assert sorted(r["unit"] for r in recorded) == sorted(str(u) for u in load_campaign(file).units)
    assert {r["rate"] for r in recorded} == {"default"} and {r["seconds"] for r in recorded} == {10.0 * 3, 10.0 * 2}
    assert main(args("merge", file, store, shards)) == 0
    assert "merged 4 complete units (10 episode rows)" in capsys.readouterr().out
    assert main(args("audit", file, store, shards)) == 0
    out = capsys.readouterr().out
    with sqlite3.connect(store) as conn:
        took = conn.execute("SELECT SUM(wall_seconds) FROM episodes").fetchone()[0]
    assert f"all: 4 complete units, estimated {100 / 3600:.3g} CPU-hours, took {took / 3600:.3g} " in out
    assert "default: 4 complete units" in out and "0 recorded units not complete yet" in out
    plain = tmp_path / "plain.sqlite"
    base = ["run", "--backbone", "tiny-encoder", "--tasks", "demo_intents", "--query", "2", "--seed", "0", "--threads",
            "1", "--method-config", "full_ft.steps=2", "--store", str(plain), "--out", ""]
    assert main(base + ["--methods", "full_ft,protonet", "--n-way", "5", "--k-shot", "1", "--episodes", "3"]) == 0
    assert main(base + ["--methods", "full_ft", "--k-shot", "2", "--episodes", "2", "--restarts", "2"]) == 0
    assert rows(store) == rows(plain) and len(rows(store)) == 10
    assert not (tmp_path / "s.sqlite-wal").exists()
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    capsys.readouterr()
    assert main(args("status", file, store, shards)) == 0
    assert capsys.readouterr().out.startswith("nothing to do: all 4 units")


def test_a_unit_longer_than_a_workers_share_is_split_by_episode_then_merged_equals_a_plain_run(tmp_path, capsys):
    entry = {**TINY, "methods": ["full_ft"], "method_config": ["full_ft.steps=2"], "k_shot": 1, "episodes": 4}
    file, store, shards = write_campaign(tmp_path / "c.yaml", [entry]), empty_store(tmp_path / "s.sqlite"), tmp_path / "sh"
    assert main(args("run", file, store, shards, "--processes", "2")) == 0
    assert "in 2 worker(s) (1 split between workers by episode)" in capsys.readouterr().out
    assert [sorted(r[2] for r in rows(shards / f"shard{i}.sqlite")) for i in (0, 1)] == [[0, 2], [1, 3]]
    assert main(args("merge", file, store, shards)) == 0
    assert "merged 1 complete units (4 episode rows)" in capsys.readouterr().out
    plain = tmp_path / "plain.sqlite"
    assert main(["run", "--backbone", "tiny-encoder", "--tasks", "demo_intents", "--query", "2", "--seed", "0",
                 "--threads", "1", "--method-config", "full_ft.steps=2", "--methods", "full_ft", "--k-shot", "1",
                 "--episodes", "4", "--store", str(plain), "--out", ""]) == 0
    assert rows(store) == rows(plain) and len(rows(store)) == 4


def test_share_out_deals_out_the_episodes_of_long_units_that_meta_train_nothing(tmp_path):
    full_ft, protonet, restart0, restart1 = load_campaign(write_campaign(tmp_path / "c.yaml", ENTRIES)).units
    protonet = dataclasses.replace(protonet, meta_trained=True)  # as maml's units are
    units = [full_ft, protonet, restart0, restart1]
    missing = {full_ft: [0, 1, 2], protonet: [0, 1, 2], restart0: [0, 1], restart1: [1]}

    def plans(left, processes):
        return [[(s.unit, s.episodes) for s in plan] for plan in share_out(units, left, missing, processes)]

    assert plans({full_ft: 300, protonet: 300, restart0: 20, restart1: 20}, 2) == [
        [(full_ft, None), (restart0, None)], [(protonet, None), (restart1, None)]]
    assert plans({full_ft: 900, protonet: 30, restart0: 20, restart1: 20}, 2) == [
        [(full_ft, [0, 2])], [(full_ft, [1]), (protonet, None), (restart0, None), (restart1, None)]]
    assert plans({full_ft: 900, protonet: 30, restart0: 20, restart1: 20}, 3) == [
        [(full_ft, [0]), (protonet, None)], [(full_ft, [1]), (restart0, None)], [(full_ft, [2]), (restart1, None)]]
    assert plans({full_ft: 30, protonet: 900, restart0: 20, restart1: 20}, 2)[1] == [(protonet, None)], \
        "a meta-trained unit is not split: each share would meta-train again"
    assert plans({full_ft: 20, protonet: 30, restart0: 20, restart1: 900}, 2) == [
        [(full_ft, None), (restart0, None)], [(protonet, None), (restart1, None)]], \
        "a unit with one episode missing is not split"
    uneven = share_out(units, {full_ft: 100, protonet: 20, restart0: 20, restart1: 400},
                       {**missing, restart1: list(range(10))}, 2)  # the long unit evens out the loads before it
    assert [[(s.unit, s.episodes, s.fraction) for s in plan] for plan in uneven] == [
        [(full_ft, None, 1.0), (restart1, [2, 4, 6, 8], 0.4)],
        [(protonet, None, 1.0), (restart0, None, 1.0), (restart1, [0, 1, 3, 5, 7, 9], 0.6)]]
    assert plans({full_ft: 10, protonet: 10, restart0: 10, restart1: 10}, 8) == [  # more workers than units
        [(full_ft, [0])], [(full_ft, [1])], [(full_ft, [2])], [(protonet, None)], [(restart0, [0])], [(restart0, [1])],
        [(restart1, None)]]


def test_an_entry_with_a_tuned_file_stores_the_rows_of_run_tuned(tmp_path, monkeypatch):
    """An entry's relative ``tuned`` path is read from the campaign file's folder, wherever the command runs."""
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text(yaml.safe_dump({"budget": {}, "settings": {"demo_intents/fold1/5way1shot2q": {
        "full_ft": {"tuned": True, "overrides": {"steps": 3, "lr": 0.001}}}}}))
    entry = {**TINY, "methods": ["full_ft"], "n_way": 5, "k_shot": 1, "episodes": 2, "tuned": "tuned.yaml"}
    file, store, shards = write_campaign(tmp_path / "c.yaml", [entry]), empty_store(tmp_path / "s.sqlite"), tmp_path / "sh"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert [unit.label for unit in load_campaign(file).units] == ["full_ft[tuned]"]
    assert main(args("run", file, store, shards)) == 0
    assert main(args("merge", file, store, shards)) == 0
    plain = tmp_path / "plain.sqlite"
    assert main(["run", "--backbone", "tiny-encoder", "--tasks", "demo_intents", "--query", "2", "--seed", "0",
                 "--threads", "1", "--methods", "full_ft", "--n-way", "5", "--k-shot", "1", "--episodes", "2",
                 "--tuned", str(tuned), "--store", str(plain), "--out", ""]) == 0
    assert rows(store) == rows(plain) and {row[0] for row in rows(store)} == {"full_ft[tuned]"}


def test_a_unit_with_config_overrides_is_estimated_from_its_default_configs_rows(tmp_path):
    entries = [{**TINY, "methods": ["full_ft", "full_ft(lr=0.001)"], "n_way": 5, "k_shot": 1, "episodes": 2}]
    plain, overridden = load_campaign(write_campaign(tmp_path / "c.yaml", entries)).units
    setting = plain.setting.label
    rates = {("full_ft", setting, "tiny-encoder"): [6.0, 2, None, 20.0]}
    assert estimate(plain, rates, {}) == (3.0, 0.0, "measured")
    assert estimate(overridden, rates, {}) == (3.0, 0.0, "measured as full_ft")
    rates[(overridden.label, setting, "tiny-encoder")] = [10.0, 2, None, 20.0]
    assert estimate(overridden, rates, {}) == (5.0, 0.0, "measured")
    assert estimate(overridden, {}, {})[2] == "default"


def test_a_unit_is_scaled_from_its_other_cells_by_its_calibrated_else_their_cost_ratio_else_by_texts(tmp_path):
    entries = [{**TINY, "methods": ["full_ft", "protonet"], "n_way": 5, "k_shot": [1, 2], "episodes": 2}]
    units = load_campaign(write_campaign(tmp_path / "c.yaml", entries)).units
    ft_1, _, ft_2, _ = units
    one, two = ft_1.setting.label, ft_2.setting.label
    rates = {("full_ft", one, "tiny-encoder"): [8.0, 2, None, 10.0],  # 4 s an episode (of 10 texts, say)
             ("protonet", one, "tiny-encoder"): [2.0, 1, None, 20.0], ("protonet", two, "tiny-encoder"): [6.0, 1, None, 30.0]}
    assert estimate(ft_2, rates, {}) == (12.0, 0.0, "scaled")  # protonet: the 2-shot cell costs 3x the 1-shot one
    calibrated = {(0, one, ft_1.spec): (5.0, 0.0), (0, two, ft_2.spec): (10.0, 0.0)}  # full_ft's own dry run: 2x
    assert estimate(ft_2, rates, {}, calibrated) == (8.0, 0.0, "scaled")
    del rates[("protonet", two, "tiny-encoder")]
    assert estimate(ft_2, rates, {}) == (8.0, 0.0, "scaled")  # no method in both: 5 x (2 + 2) texts over 10


def test_a_unit_nothing_stored_measures_is_estimated_from_the_dry_runs_calibration(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", str(tmp_path / "cache"))
    entry = {**TINY, "methods": ["protonet", "full_ft"], "method_config": ["full_ft.steps=2"], "n_way": 5,
             "k_shot": 1, "episodes": 2}
    file, store = write_campaign(tmp_path / "c.yaml", [entry]), empty_store(tmp_path / "s.sqlite")

    def estimates():
        assert main(args("status", file, store, tmp_path / "sh")) == 0
        table = [line.split() for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
        return {row[2]: row[5:7] for row in table if len(row) == 8}

    assert estimates() == {"protonet": ["10.00", "(default)"], "full_ft(steps=2)": ["10.00", "(default)"]}
    assert main(["run", "--dry-run", "--backbone", "tiny-encoder", "--tasks", "demo_intents", "--query", "2", "--seed",
                 "0", "--methods", "protonet", "--n-way", "5", "--k-shot", "1", "--episodes", "2", "--threads",
                 "1"]) == 0  # calibrates protonet only
    capsys.readouterr()
    (setting, _), seconds = next(iter(episode_rates(load_campaign(file).configs[0], calibrate_missing=False).items()))
    assert estimates() == {"protonet": [f"{seconds:.2f}", "(calibrated)"], "full_ft(steps=2)": ["10.00", "(default)"]}
    assert main(args("status", file, store, tmp_path / "sh", "--threads", "2")) == 0  # the cache holds 1 thread's
    assert "(calibrated)" not in capsys.readouterr().out


def test_calibrated_rates_load_each_backbone_once_for_all_entries(tmp_path, monkeypatch):
    from fewshot_bench.execution import campaign_queue, plan

    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "calibration.json").write_text("{}")
    loaded = []
    monkeypatch.setattr(plan, "load_backbone", lambda *a, **k: loaded.append(a) or load_backbone(*a, **k))
    campaign = load_campaign(write_campaign(tmp_path / "c.yaml", ENTRIES))
    assert campaign_queue.calibrated_rates(campaign, campaign.units) == {}  # the cache holds no method
    assert loaded == [("tiny-encoder",)], "one load for both entries"


def test_killed_campaign_resumes_without_recomputing(tmp_path):
    entry = {**TINY, "methods": ["full_ft"], "method_config": ["full_ft.steps=30"], "k_shot": 2, "episodes": 20}
    file, store, shards = write_campaign(tmp_path / "c.yaml", [entry]), empty_store(tmp_path / "s.sqlite"), tmp_path / "sh"
    cmd = [sys.executable, "-m", "fewshot_bench", *args("run", file, store, shards, "--processes", "1")]
    shard, log = shards / "shard0.sqlite", tmp_path / "campaign.log"
    with open(log, "w") as output:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while committed_rows(shard) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # `kill`: the campaign stops its worker, which loses at most its episode
        proc.wait(timeout=120)
    done = committed_rows(shard)
    assert 2 <= done < 20, f"the campaign must be killed mid-way ({done} episodes): {log.read_text()}"
    with sqlite3.connect(shard) as conn:
        before = dict(conn.execute("SELECT episode_index, created_at FROM episodes").fetchall())
    resumed = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr + (shards / "shard0.log").read_text()
    with sqlite3.connect(shard) as conn:
        after = dict(conn.execute("SELECT episode_index, created_at FROM episodes WHERE status = 'ok'").fetchall())
    assert sorted(after) == list(range(20))
    assert all(after[i] == before[i] for i in before), "stored episodes must be skipped, not recomputed"
    assert committed_rows(store) == 0
    assert len((shards / "estimates.jsonl").read_text().splitlines()) == 1, "a unit's estimate is recorded once"


def test_merge_takes_complete_units_only(tmp_path, capsys):
    entry = {**TINY, "methods": ["protonet", "linear_probe"], "k_shot": 1, "episodes": 3}
    file, store, shards = write_campaign(tmp_path / "c.yaml", [entry]), empty_store(tmp_path / "s.sqlite"), tmp_path / "sh"
    protonet, probe = load_campaign(file).units
    shards.mkdir()
    with ResultsStore(shards / "shard0.sqlite") as shard:
        for unit, indices in ((protonet, [0, 1, 2]), (probe, [0, 1])):
            for i in indices:
                shard.write_episode(unit_record(unit, i))
        shard.write_episode(unit_record(probe, 2, status="failed", accuracy=None))  # a failed episode is not done
    assert main(args("merge", file, store, shards)) == 0
    out = capsys.readouterr().out
    assert "merged 1 complete units (3 episode rows)" in out and "1 incomplete units" in out and "2/3 episodes" in out
    assert {r[0] for r in rows(store)} == {"protonet"} and len(rows(store)) == 3
    assert {r[0] for r in rows(shards / "shard0.sqlite")} == {"protonet", "linear_probe"}
    assert not (tmp_path / "s.sqlite-wal").exists()
    assert main(args("status", file, store, shards)) == 0
    out = capsys.readouterr().out
    assert "linear_probe" in out and "2/3" in out and "protonet" not in out


def unit_record(unit, index, **overrides):
    """A synthetic stored episode of ``unit`` under the keys `run` writes."""
    config_hash, method, backbone, task, setting = unit.key
    return record(config_hash=config_hash, method=method, backbone=backbone, task=task, setting=setting,
                  episode_index=index, restart=unit.restart, **overrides)


def test_status_on_a_store_holding_everything_lists_nothing(tmp_path, capsys):
    file, store, shards = write_campaign(tmp_path / "c.yaml", ENTRIES), empty_store(tmp_path / "s.sqlite"), tmp_path / "sh"
    units = load_campaign(file).units
    assert [(u.label, u.restart) for u in units] == [("full_ft(steps=2)", 0), ("protonet", 0), ("full_ft(steps=2)", 0),
                                                      ("full_ft(steps=2)", 1)]
    assert main(args("status", file, store, shards)) == 0
    assert "4 of 4 units to do (10 episodes)" in capsys.readouterr().out
    with ResultsStore(store) as opened:
        for unit in units:
            for i in range(unit.episodes):
                opened.write_episode(unit_record(unit, i))
    assert main(args("status", file, store, shards)) == 0
    assert capsys.readouterr().out == f"nothing to do: all 4 units of {file} are done\n"
    assert main(args("run", file, store, shards)) == 0 and not shards.exists()


def test_committed_store_units_read_as_done(tmp_path, capsys, monkeypatch):
    """Hash stability: every core-suite row of the committed leaderboard with all its planned episodes ok is a unit
    `campaign status` finds done in (a copy of) the committed store, which it leaves byte for byte unchanged."""
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", str(shared_data_dir()))
    store = tmp_path / "results.sqlite"
    shutil.copyfile(REPO / "leaderboard" / "results.sqlite", store)
    before = digest(store)
    file = REPO / "leaderboard" / "campaign.yaml"
    campaign = load_campaign(file)
    core = load_campaign(write_campaign(tmp_path / "core.yaml", [{"suite": "core"}]))
    cells, methods = {u.setting.label for u in core.units}, {u.label for u in core.units}
    with open(REPO / "leaderboard" / "leaderboard.csv", newline="", encoding="utf-8") as handle:
        complete = {(r["setting"], r["method"]) for r in csv.DictReader(handle)
                    if r["setting"] in cells and r["method"] in methods and r["failed_episodes"] == "0"
                    and r["episodes"] == r["episodes_planned"] == "100"}
    assert len(complete) >= 30
    finished = Finished([store])
    units = {(u.setting.label, u.label): u for u in campaign.units if u.restart == 0}
    assert {(u.setting.label, u.label) for u in core.units} <= set(units), "the campaign covers the core suite"
    not_done = {cell for cell in complete if len(finished.done_indices(*units[cell].key)) < 100}
    assert not not_done, f"a config hash changed: `run` would recompute stored episodes of {sorted(not_done)}"
    assert main(args("status", file, store, tmp_path / "no-shards")) == 0
    out = capsys.readouterr().out
    listed = {tuple(line.split()[1:4]) for line in out.splitlines() if line[:1].isdigit()}
    assert not {(setting, method, "0") for setting, method in complete} & listed and "warning: " not in out
    assert digest(store) == before and not (tmp_path / "results.sqlite-wal").exists()


@pytest.mark.parametrize("case", ["missing file", "unknown method", "processes 0", "processes 65", "shards file",
                                  "missing store"])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    file, store, shards = write_campaign(tmp_path / "c.yaml", ENTRIES), empty_store(tmp_path / "s.sqlite"), tmp_path / "sh"
    extra, expected = [], {"missing file": "nope.yaml", "unknown method": "ful_ft", "processes 0": "--processes 0",
                           "processes 65": "--processes 65", "shards file": "is a file",
                           "missing store": "gone.sqlite"}[case]
    if case == "missing file":
        file = tmp_path / "nope.yaml"
    elif case == "unknown method":
        file = write_campaign(tmp_path / "bad.yaml", [{**ENTRIES[0], "methods": ["ful_ft"]}])
    elif case.startswith("processes"):
        extra = ["--processes", case.split()[1]]
    elif case == "shards file":
        shards = tmp_path / "c.yaml"
    else:
        store = tmp_path / "gone.sqlite"
    before = sorted(p.name for p in tmp_path.iterdir())
    for action in ("status", "run", "merge"):
        code = main(args(action, file, store, shards, *extra))
        err = capsys.readouterr().err
        if case.startswith("processes") and action != "run":
            continue  # --processes matters to run only
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and expected in err, (action, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_audit_counts_complete_units_only_and_names_a_bad_file(tmp_path, capsys):
    entry = {**TINY, "methods": ["protonet", "linear_probe"], "k_shot": 1, "episodes": 2}
    file, store, shards = write_campaign(tmp_path / "c.yaml", [entry]), empty_store(tmp_path / "s.sqlite"), tmp_path / "sh"
    assert main(args("audit", file, store, shards)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "estimates.jsonl: no such file" in err and "campaign run" in err
    protonet, probe = load_campaign(file).units
    shards.mkdir()
    with ResultsStore(shards / "shard0.sqlite") as shard:
        for unit, indices in ((protonet, [0, 1]), (probe, [0])):
            for i in indices:
                shard.write_episode(unit_record(unit, i, wall_seconds=3.0))
    lines = [{"key": list(u.key), "unit": str(u), "episodes": 2, "meta_trained": False, "seconds": 4.0, "rate": rate,
              "threads": 1, "recorded": "2026-12-05T09:00:00+0000"} for u, rate in ((protonet, "scaled as x"),
                                                                                   (probe, "measured"))]
    (shards / "estimates.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(args("audit", file, store, shards)) == 0
    out = capsys.readouterr().out
    assert "all: 1 complete units, estimated 0.00111 CPU-hours, took 0.00167 (1.50x)" in out
    assert "scaled: 1 complete units" in out and "measured" not in out and "1 recorded units not complete yet" in out
    with open(shards / "estimates.jsonl", "a") as handle:
        handle.write("{not json\n")
    assert main(args("audit", file, store, shards)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "estimates.jsonl:3: not an estimate record" in err
