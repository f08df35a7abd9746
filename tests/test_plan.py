"""`fewshot-bench run --dry-run`: cells and tokens first, each method calibrated once (cached), hours per method and
cell with one-off costs apart; nothing written but the calibration cache."""
import json
import os
import re

import pytest
import yaml

from fewshot_bench.execution import calibration
from fewshot_bench.execution.calibration import CostLine
from fewshot_bench.cli import main
from fewshot_bench.data.loading import get_task_data
from fewshot_bench.execution.plan import episode_rates, make_plan
from fewshot_bench.execution.run_config import RunConfig
from fewshot_bench.methods.spec import method_from_spec, parse_spec
from fewshot_bench.data.cards import BUILTIN_TASKS_DIR, register_cards

ARGV = ["run", "--dry-run", "--backbone", "tiny-encoder", "--tasks", "demo_intents", "--k-shot", "1,2", "--query", "2",
        "--episodes", "4", "--methods", "protonet,full_ft(steps=2),fomaml(meta_steps=1),full_ft(steps=2,lr=0.0001)",
        "--threads", "1"]
SHARED = "full_ft(steps=2,lr=0.0001)"  # another learning rate: full_ft(steps=2)'s cost shape, its line


def test_the_line_is_affine_in_tokens_and_meta_training_scales_with_a_cells_tokens():
    line = CostLine(fixed=2.0, per_support_token=0.01, per_query_token=0.001, meta_seconds=30.0, probe_tokens=300.0)
    assert line.episode_seconds(100, 200) == pytest.approx(2.0 + 1.0 + 0.2)
    assert line.episode_seconds(200, 200) - line.episode_seconds(100, 200) == pytest.approx(1.0)
    assert line.meta_train_seconds(300) == pytest.approx(30.0) and line.meta_train_seconds(600) == pytest.approx(60.0)
    assert CostLine(fixed=1.0).meta_train_seconds(600) == 0.0


def test_repeated_support_keeps_the_queries_and_multiplies_the_padded_support_tokens(tiny_backbone, demo_episode):
    repeated = calibration.repeated_support(demo_episode, 3)
    assert repeated.query_texts == demo_episode.query_texts
    assert repeated.support_texts == demo_episode.support_texts * 3
    s1, q1, tokens, texts = calibration.episode_tokens(tiny_backbone, demo_episode)
    s2, q2, _, _ = calibration.episode_tokens(tiny_backbone, repeated)
    assert s2 == 3 * s1 and q2 == q1 and texts == len(set(demo_episode.support_texts + demo_episode.query_texts))
    assert calibration.repeats(2000) == 2 and calibration.repeats(100) == 6 and calibration.repeats(10) == 16


def test_a_stepped_method_is_timed_at_one_and_three_steps_and_its_line_is_that_of_its_steps(monkeypatch):
    """Adaptation = set-up + steps x one step, both affine in the support tokens: the points at 1 and 3 steps (at S
    and r x S) give the line of the configured 10 steps exactly; only the probe point's queries are all there."""
    plan = make_plan(config(tasks=["demo_intents"], methods=["full_ft"]))
    probe, backbone, timed = plan.probe, next(iter(plan.backbones.values())), []

    def fake(method, episode, backbone_, probe_, autocast):
        support, query, _, _ = calibration.episode_tokens(backbone, episode)
        steps = method.config.steps
        timed.append((steps, support, len(episode.query_texts)))
        adapt = 0.5 + 0.001 * support + steps * (0.2 + 0.002 * support)
        return adapt, {"wall_seconds": adapt + 0.003 * query, "status": "ok"}
    monkeypatch.setattr(calibration, "_timed_episode", fake)
    line = calibration.measure(method_from_spec("full_ft", {}), backbone, probe)
    s, r, n_way = probe.support_tokens, calibration.repeats(probe.support_tokens), probe.episode.n_way
    queries = len(probe.episode.query_texts)
    assert timed == [(1, s, n_way), (1, s, queries), (3, s, n_way), (1, r * s, n_way), (3, r * s, n_way)]
    assert line.fixed == pytest.approx(0.5 + 10 * 0.2)
    assert line.per_support_token == pytest.approx(0.001 + 10 * 0.002)
    assert line.per_query_token == pytest.approx(0.003)


def test_methods_that_differ_only_in_float_fields_or_renamed_defaults_share_a_cost_shape():
    shape = lambda spec: calibration.cost_shape(method_from_spec(*parse_spec(spec)))  # noqa: E731
    assert shape("sgg") == shape("sgg-no-mag") == shape("sgg-no-dir") == shape("sgg(lambda_dir=2.0,lr=0.001)")
    assert shape("full_ft") == shape("full_ft(lr=0.001,head_lr=0.1)")
    others = ["sgg", "sgg-no-align", "sgg(mode=exact)", "sgg(steps=20)", "full_ft", "maml", "fomaml", "lora"]
    assert len({json.dumps(shape(spec), sort_keys=True) for spec in others}) == len(others)  # target-only, eager, ...
    assert "object at 0x" not in json.dumps(shape("sgg"), default=str)  # the same key in every process


def test_dry_run_prints_the_plan_and_writes_only_the_calibration_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", "")
    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))
    argv = ARGV + ["--store", str(tmp_path / "runs" / "s.sqlite"), "--out", str(tmp_path / "runs" / "lb.csv")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    cells, _, rest = out.partition("\ncalibration:")
    assert "demo_intents/fold1/5way1shot2q" in cells and "demo_intents/fold1/5way2shot2q" in cells  # cells first
    assert "support tokens" in cells and "query tokens" in cells
    rest = re.sub(r" \(load [^)]*\)", "", rest)  # "measured (load 1.2)": one column
    lines = {line.split()[0]: line.split() for line in rest.splitlines() if line.strip()}
    for method in ("protonet", "full_ft(steps=2)", "fomaml(meta_steps=1)"):
        assert lines[method][1] == "measured" and float(lines[method][7]) > 0  # its episode hours
    assert lines["protonet"][5] != "-" and lines["full_ft(steps=2)"][5] == "-"  # the frozen method fills a cache
    assert lines["fomaml(meta_steps=1)"][8] != "-" and lines["protonet"][8] == "-"  # meta-training, one-off
    assert lines[SHARED][1:3] == ["as", "full_ft(steps=2)"] and lines[SHARED][3:] == lines["full_ft(steps=2)"][2:]
    per_cell = rest[rest.index("estimated CPU-hours per cell"):rest.index("one-off:")].splitlines()
    assert per_cell[1].split() == ["setting", "protonet", "full_ft(steps=2)", "fomaml(meta_steps=1)", SHARED,
                                   "cache", "fill", "h", "meta-train", "h", "total", "h"]
    for label in ("demo_intents/fold1/5way1shot2q", "demo_intents/fold1/5way2shot2q"):  # a line per cell
        row = next(line.split() for line in per_cell if line.startswith(label))
        hours = [float(value.lstrip("<=")) for value in row[1:5] + row[-1:]]  # "<=": at most (the cache fill)
        assert len(row) == 8 and hours[-1] >= sum(hours[:-1]) > 0  # its total
    assert re.search(r"8 cells, 32 episodes, (about|at most) [0-9.e-]+ CPU-hours", out)  # the run's total
    assert "nothing written but the calibration cache" in out
    assert set(os.listdir(tmp_path)) == before | {"cache"}  # no store, no leaderboard, no meta-training cache
    assert os.listdir(tmp_path / "cache") == ["calibration.json"]
    entries = json.loads((tmp_path / "cache" / "calibration.json").read_text())
    assert sorted(e["method"] for e in entries.values()) == ["fomaml(meta_steps=1)", "full_ft(steps=2)", "protonet"]


def test_a_second_dry_run_reuses_the_calibrations(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", "")
    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", str(tmp_path / "cache"))
    calls = []
    measure = calibration.measure
    monkeypatch.setattr(calibration, "measure",
                        lambda method, *a, **k: calls.append(method.name) or measure(method, *a, **k))
    argv = ARGV + ["--store", str(tmp_path / "s.sqlite"), "--out", ""]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert sorted(calls) == ["fomaml", "full_ft", "protonet"] and "3 method(s) measured, 0 reused" in first
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert len(calls) == 3 and "0 method(s) measured, 4 reused from the calibration cache" in second
    table = lambda out: out[out.index("estimated CPU-hours"):out.index("one-off:")]  # noqa: E731
    assert table(second) == table(first)  # the same estimates
    assert main(argv[:-6] + ["--threads", "2", "--store", str(tmp_path / "s.sqlite"), "--out", ""]) == 0
    assert len(calls) == 6  # other torch threads: another machine state, measured again


def fake_measure(method, backbone, probe, *, autocast=None):
    """A fixed line: 1 ms per support token, 2 ms per query token, 10 s per 1k tokens of cache fill for protonet,
    100 s of meta-training at the probe's tokens for fomaml."""
    return CostLine(fixed=0.0, per_support_token=1e-3, per_query_token=2e-3,
                    fill_per_token=1e-2 if method.name == "protonet" else 0.0,
                    meta_seconds=100.0 if method.name == "fomaml" else 0.0,
                    probe_tokens=probe.support_tokens + probe.query_tokens)


@pytest.fixture
def long_task(tmp_path, monkeypatch):
    """'long_intents': demo_intents with every text four times over (about 4x the tokens, same classes)."""
    card = yaml.safe_load((BUILTIN_TASKS_DIR / "demo_intents.yaml").read_text(encoding="utf-8"))
    card.pop("demo", None)
    card.update(name="long_intents", source={"local_dir": "long_intents"})  # no pinned files: its own data
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "long_intents.yaml").write_text(yaml.safe_dump(card), encoding="utf-8")
    data = get_task_data("demo_intents")
    (tmp_path / "data" / "long_intents").mkdir(parents=True)
    with open(tmp_path / "data" / "long_intents" / "data.jsonl", "w", encoding="utf-8") as f:
        for text, label in zip(data.texts, data.labels):
            f.write(json.dumps({"text": " ".join([text] * 4), "label": label}) + "\n")
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", str(tmp_path / "cache"))
    register_cards(tmp_path / "cards")
    return "long_intents"


def config(**values) -> RunConfig:
    return RunConfig(**{"backbone": "tiny-encoder", "k_shot": [1], "query": 2, "episodes": 4, "threads": 1,
                        "methods": ["protonet", "full_ft", "fomaml"], **values})


def test_the_estimate_scales_with_the_cells_tokens(long_task, monkeypatch):
    monkeypatch.setattr(calibration, "measure", fake_measure)
    plan = make_plan(config(tasks=["demo_intents", long_task]))
    short, long = plan.settings
    assert plan.probe.setting == short  # the cheapest setting is calibrated
    assert plan.sizes[long].support_tokens > 2.5 * plan.sizes[short].support_tokens
    assert plan.sizes[long].query_tokens > 2.5 * plan.sizes[short].query_tokens
    rates = episode_rates(config(tasks=["demo_intents", long_task]))
    for spec in ("protonet", "full_ft", "fomaml"):
        for setting in (short, long):
            size = plan.sizes[setting]
            assert rates[(setting.label, spec)] == pytest.approx(1e-3 * size.support_tokens + 2e-3 * size.query_tokens)
        assert rates[(long.label, spec)] > 2.5 * rates[(short.label, spec)]


def test_one_off_costs_are_not_multiplied_by_episodes(long_task, monkeypatch):
    monkeypatch.setattr(calibration, "measure", fake_measure)
    plans = {}
    for episodes in (5, 16, 32):  # each samples episodes 0..4: the same mean tokens
        plans[episodes] = plan = make_plan(config(tasks=["demo_intents"], episodes=episodes))
        plan.calibrate(progress=False)
    setting = plans[5].settings[0]
    meta = {n: p.meta_seconds(setting, "fomaml") for n, p in plans.items()}
    assert meta[5] == meta[16] == meta[32] > 0  # once per cell, whatever its episodes
    assert plans[5].meta_seconds(setting, "protonet") == 0.0
    fills = {n: p.cache_fills()[setting] for n, p in plans.items()}
    size = plans[5].sizes[setting]
    assert fills[5] == (pytest.approx(1e-2 * 5 * size.texts * size.tokens_per_text), True)  # at most 5 episodes' texts
    assert fills[16] == fills[32] == (pytest.approx(1e-2 * size.pool_texts * size.tokens_per_text), False)  # the pool
    assert plans[32].episode_seconds(setting, "protonet") == plans[16].episode_seconds(setting, "protonet")


def test_cells_of_one_pool_share_one_cache_fill(long_task, monkeypatch):
    monkeypatch.setattr(calibration, "measure", fake_measure)
    plan = make_plan(config(tasks=["demo_intents"], k_shot=[1, 2], episodes=50))
    plan.calibrate(progress=False)
    first, second = (plan.cache_fills()[s] for s in plan.settings)
    size = plan.sizes[plan.settings[0]]
    assert first[0] == pytest.approx(1e-2 * size.pool_texts * size.tokens_per_text) and second[0] == 0.0


def test_an_unset_episode_timeout_is_derived_from_the_dry_runs_estimate(tmp_path, monkeypatch, capsys):
    from fewshot_bench.cli.app import build_parser
    from fewshot_bench.execution import runner
    from fewshot_bench.execution.run_config import build_config

    monkeypatch.setenv("FEWSHOT_BENCH_DATA", "")
    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", str(tmp_path / "cache"))
    argv = ARGV[2:] + ["--store", str(tmp_path / "s.sqlite"), "--out", ""]
    config = build_config(vars(build_parser().parse_args(["run", *argv])))
    assert config.episode_timeout is None and runner.estimated_rates(config) == {}  # no calibration yet: 3600
    assert main(["run", "--dry-run", *argv]) == 0
    capsys.readouterr()
    rates = runner.estimated_rates(config)
    timeouts = runner.estimated_timeouts(config, rates)
    assert len(timeouts) == 2 * 4 and set(timeouts) == {(s, m) for s in ("demo_intents/fold1/5way1shot2q",
                                                                          "demo_intents/fold1/5way2shot2q")
                                                         for m in config.methods}
    assert all(value >= runner.TIMEOUT_FLOOR for value in timeouts.values())
    given = build_config(vars(build_parser().parse_args(["run", *argv, "--episode-timeout", "5"])))
    assert runner.estimated_timeouts(given, rates) == {}  # a given timeout is the timeout
    cost = runner.unit_costs(rates)  # the run's ETA weighs each unit by its method and cell's estimate
    from fewshot_bench.execution.evaluate import Unit
    from fewshot_bench.execution.run_config import settings_of
    setting = settings_of(config)[0]
    assert cost(Unit(setting, "protonet", 0)) == rates[(setting.label, "protonet")]
    assert cost(Unit(setting, "unknown", 0)) == sum(rates.values()) / len(rates)
