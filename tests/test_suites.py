"""Suites: per-setting shapes and folds, flags overriding them, errors naming the field."""
import pytest

from fewshot_bench.cli import build_parser
from fewshot_bench.core.errors import UserError
from fewshot_bench.execution.run_config import RunConfig, build_config, settings_of


def _labels(config):
    return [s.label for s in settings_of(config)]


def test_settings_entries_carry_their_own_shapes_and_folds():
    config = RunConfig(k_shot=[1, 5], settings=[
        {"task": "banking77", "n_way": ["all", 10], "k_shot": [1], "folds": "all"},
        {"task": "fewrel_pubmed", "source_task": "fewrel"}])
    labels = _labels(config)
    assert labels[:2] == ["banking77/fold1/allway1shot15q", "banking77/fold1/10way1shot15q"]
    assert sorted({label.split("/")[1] for label in labels[:10]}) == [f"fold{i}" for i in range(1, 6)]
    assert labels[10:] == ["fewrel->fewrel_pubmed/fold1/5way1shot15q", "fewrel->fewrel_pubmed/fold1/5way5shot15q"]


def test_folds_beyond_a_card_are_left_out_and_all_means_every_fold():
    assert _labels(RunConfig(tasks=["huffpost"], folds=[1, 2, 3], k_shot=[1])) == ["huffpost/fold1/5way1shot15q"]
    assert len(_labels(RunConfig(tasks=["hwu64", "huffpost"], folds="all", k_shot=[1]))) == 5 + 1


@pytest.mark.parametrize("settings, message", [
    ([{"task": "banking77", "fold": 2}], "settings[0]: unknown field 'fold'; did you mean 'folds'?"),
    ([{"task": "banking77", "folds": [0]}], "settings[0].folds: [0] is not a list of folds"),
    ([{"task": "banking77", "n_way": [1]}], "n_way '1' is not a number of classes"),
])
def test_bad_settings_entries_name_the_field(settings, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]").replace("?", r"\?")):
        RunConfig(settings=settings)


def test_flags_override_the_suites_per_setting_values(tmp_path):
    config_file = tmp_path / "suite.yaml"
    config_file.write_text("settings:\n- {task: banking77, k_shot: [1, 5], folds: all}\n- {task: huffpost, n_way: [all]}\n")
    args = build_parser().parse_args(["run", "--config", str(config_file), "--fold", "2", "--k-shot", "5"])
    labels = _labels(build_config(vars(args)))
    assert labels == ["banking77/fold2/5way5shot15q", "huffpost/fold1/allway5shot15q"]


def test_the_stress_suite_runs_sgg_and_full_ft_at_3x_10x_and_30x_their_default_learning_rate(monkeypatch):
    """tasks/suites/stress.yaml: the two core cells, 100 episodes of 15 queries, seed 0; each method's lr a 3x, a 10x
    and a 30x multiple of its config dataclass's default, labelled with the override; the demo block without data."""
    import dataclasses
    import math

    from fewshot_bench.core.config import from_mapping
    from fewshot_bench.execution.run_config import load_suite, method_specs
    from fewshot_bench.methods.spec import method_from_spec, method_label, parse_spec

    config = from_mapping(RunConfig, {k: v for k, v in load_suite("stress").items() if k != "demo"}, "suite stress")
    assert _labels(config) == ["banking77/fold1/5way1shot15q", "fewrel->fewrel_pubmed/fold1/5way1shot15q"]
    assert (config.episodes, config.query, config.seed) == (100, 15, 0)
    factors = {}
    for spec, overrides in method_specs(config).items():
        name = parse_spec(spec)[0]
        method = method_from_spec(name, overrides)
        default = next(f.default for f in dataclasses.fields(type(method.config)) if f.name == "lr")
        factors.setdefault(name, []).append(method.config.lr / default)
        assert method_label(name, overrides) == spec and spec.startswith(f"{name}(lr=")
    assert set(factors) == {"sgg", "full_ft"}
    for name, found in factors.items():
        assert len(found) == 3 and all(math.isclose(f, e) for f, e in zip(sorted(found), (3, 10, 30))), (name, found)
    monkeypatch.delenv("FEWSHOT_BENCH_DATA", raising=False)
    demo = build_config(vars(build_parser().parse_args(["run", "--suite", "stress"])))
    assert _labels(demo) == ["demo_intents/fold1/5way1shot5q"] and demo.methods == config.methods


def test_the_smoke_suite_keeps_its_own_store_apart_from_the_demo(tmp_path):
    parse = build_parser().parse_args
    smoke = build_config(vars(parse(["run", "--suite", "smoke"])))
    assert (smoke.store, smoke.out) == ("runs/smoke/results.sqlite", "runs/smoke/leaderboard.csv")
    demo = build_config(vars(parse(["run"])))
    assert (demo.store, demo.out) == ("runs/results.sqlite", "runs/leaderboard.csv")
    given = build_config(vars(parse(["run", "--suite", "smoke", "--store", str(tmp_path / "s.sqlite")])))
    assert given.store == str(tmp_path / "s.sqlite") and given.out == "runs/smoke/leaderboard.csv"
