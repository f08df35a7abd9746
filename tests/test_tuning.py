"""fewshot-bench tune: planted best config found, equal budget per method, validation pool only, run --tuned."""
import collections
import json
import sys
from dataclasses import dataclass

import pytest
import torch
import yaml

from fewshot_bench.execution import evaluate as loop_module
from fewshot_bench.cli import main
from fewshot_bench.core.config import option
from fewshot_bench.core.errors import UserError
from fewshot_bench.methods import Method, MethodConfig, Predictor
from fewshot_bench.core.registry import register_method
from fewshot_bench.methods.search_space import Choice, Range, SearchSpace
from fewshot_bench.store.results import ResultsStore

TUNE = ["tune", "--tasks", "demo_intents", "--n-way", "3", "--k-shot", "2", "--query", "3", "--episodes", "3",
        "--backbone", "tiny-encoder", "--device", "cpu"]


@dataclass
class PlantedConfig(MethodConfig):
    shift: int = option(1, help="predicted label = bag-of-words nearest centroid + shift (mod N); 0 is best")
    noise: int = option(1, help="irrelevant knob")


class Planted(Method):
    """Bag-of-words nearest centroid of the support texts, its labels rotated by ``shift``: shift 0 is clearly best."""
    name = "planted"
    config_class = PlantedConfig
    search_space = SearchSpace({"shift": Choice((1, 2, 0)), "noise": Range(1, 2, integer=True)}, cost=("shift",))

    def adapt(self, ctx):
        vocab = {w for text in ctx.support_texts for w in text.lower().split()}
        index = {w: i for i, w in enumerate(sorted(vocab))}

        def bag(texts):
            out = torch.zeros(len(texts), len(index) + 1)
            for row, text in enumerate(texts):
                for w in text.lower().split():
                    out[row, index.get(w, len(index))] += 1.0
            return torch.nn.functional.normalize(out, dim=1)

        labels = ctx.support.labels.cpu()
        centroids = torch.stack([bag(ctx.support_texts)[labels == c].mean(0) for c in range(ctx.n_way)])

        def predict(batch):
            logits = bag(batch.texts) @ centroids.T
            return torch.roll(logits, shifts=self.config.shift, dims=1)

        return Predictor(predict, 0)


@pytest.fixture(autouse=True)
def planted(monkeypatch, tmp_path):
    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", str(tmp_path / "cache"))
    register_method("planted", Planted, overwrite=True)


@pytest.fixture
def evaluated(monkeypatch):
    """The episodes run_episode is given, in order (tune's trials go through it)."""
    seen = []
    real = loop_module.run_episode

    def spy(method, episode, *args, **kwargs):
        seen.append(episode)
        return real(method, episode, *args, **kwargs)

    monkeypatch.setattr(loop_module, "run_episode", spy)
    return seen


def _trials(store):
    with ResultsStore(store) as opened:
        return opened.trials()


def test_planted_best_config_is_found_and_stored(tmp_path):
    store, out = tmp_path / "s.sqlite", tmp_path / "tuned.yaml"
    assert main(TUNE + ["--methods", "planted", "--trials", "6", "--sampler", "grid", "--store", str(store),
                        "--out", str(out)]) == 0
    entry = yaml.safe_load(out.read_text())["settings"]["demo_intents/fold1/3way2shot3q"]["planted"]
    assert entry["tuned"] and entry["overrides"]["shift"] == 0
    rows = _trials(store)
    assert len(rows) == 6 and sum(r["chosen"] for r in rows) == 1
    best = max(r["accuracy"] for r in rows)
    chosen = next(r for r in rows if r["chosen"])
    assert chosen["accuracy"] == best > max(r["accuracy"] for r in rows if r["config"]["shift"] != 0)
    assert all(r["acc_ci95_low"] <= r["accuracy"] <= r["acc_ci95_high"] and r["wall_seconds"] > 0 for r in rows)


def test_a_pinned_field_leaves_the_space_and_the_file_says_so(tmp_path):
    store, out = tmp_path / "s.sqlite", tmp_path / "tuned.yaml"
    assert main(TUNE + ["--methods", "planted", "--method-config", "planted.shift=2", "--trials", "2", "--sampler",
                        "grid", "--store", str(store), "--out", str(out)]) == 0
    document = yaml.safe_load(out.read_text())
    assert document["budget"]["pinned"] == ["planted.shift=2"]
    assert document["settings"]["demo_intents/fold1/3way2shot3q"]["planted"]["overrides"]["shift"] == 2
    assert {r["config"]["shift"] for r in _trials(store)} == {2} and len({r["config"]["noise"] for r in _trials(store)}) == 2


def test_every_method_gets_the_same_trials_and_episodes(tmp_path):
    store = tmp_path / "s.sqlite"
    assert main(TUNE + ["--methods", "planted,linear_probe,protonet", "--trials", "3", "--store", str(store),
                        "--out", str(tmp_path / "t.yaml")]) == 0
    rows = _trials(store)
    per_method = collections.Counter(r["method"] for r in rows)
    assert per_method == {"planted": 3, "linear_probe": 3, "protonet": 1}  # protonet: no space, defaults once
    assert {r["state"] for r in rows if r["method"] == "protonet"} == {"untuned"}
    assert {r["episodes"] for r in rows} == {3}
    assert len({r["episode_set_sha256"] for r in rows}) == 1


def test_an_interrupted_tune_resumes_and_chooses_what_an_uninterrupted_one_does(tmp_path, evaluated):
    import shutil
    import sqlite3

    whole, cut = tmp_path / "whole.sqlite", tmp_path / "cut.sqlite"
    flags = ["--methods", "planted", "--trials", "4", "--sampler", "tpe"]
    assert main(TUNE + flags + ["--store", str(whole), "--out", str(tmp_path / "whole.yaml")]) == 0
    shutil.copyfile(whole, cut)
    with sqlite3.connect(cut) as conn:  # stopped during trial 2: trials 0 and 1 are stored
        conn.execute("DELETE FROM trials WHERE trial >= 2")
    evaluated.clear()
    assert main(TUNE + flags + ["--store", str(cut), "--out", str(tmp_path / "cut.yaml")]) == 0
    assert len(evaluated) == 2 * 3, "only the two trials not stored run (3 episodes each)"
    assert yaml.safe_load((tmp_path / "cut.yaml").read_text()) == yaml.safe_load((tmp_path / "whole.yaml").read_text())
    keep = ("trial", "config", "accuracy", "chosen")
    assert [{k: r[k] for k in keep} for r in _trials(cut)] == [{k: r[k] for k in keep} for r in _trials(whole)]


def test_tune_draws_validation_episodes_only(tmp_path, evaluated):
    assert main(TUNE + ["--methods", "planted", "--trials", "2", "--store", str(tmp_path / "s.sqlite"),
                        "--out", str(tmp_path / "t.yaml")]) == 0
    from fewshot_bench.data.loading import get_task_data
    from fewshot_bench.episodes.sampling import sample_episode

    data = get_task_data("demo_intents")
    target = {sample_episode(data, pool="target", n_way=3, k_shot=2, q_query=3, seed=0, index=i).fingerprint
              for i in range(50)}
    assert len(evaluated) == 6 and {e.pool for e in evaluated} == {"validation"}
    assert not {e.fingerprint for e in evaluated} & target
    assert set().union(*(e.classes for e in evaluated)) <= set(data.pools["validation"].classes)


def test_run_tuned_uses_the_chosen_config_per_setting(tmp_path, capsys):
    tuned = tmp_path / "tuned.yaml"
    assert main(TUNE + ["--methods", "planted,protonet", "--trials", "4", "--store", str(tmp_path / "t.sqlite"),
                        "--out", str(tuned)]) == 0
    chosen = yaml.safe_load(tuned.read_text())["settings"]["demo_intents/fold1/3way2shot3q"]["planted"]["config"]

    def run(k_shot, store):
        return main(["run", "--tasks", "demo_intents", "--methods", "planted,protonet", "--n-way", "3", "--k-shot",
                     k_shot, "--query", "3", "--episodes", "2", "--backbone", "tiny-encoder", "--device", "cpu",
                     "--store", str(store), "--out", "", "--tuned", str(tuned)])

    store = tmp_path / "run.sqlite"
    assert run("2", store) == 0
    with ResultsStore(store) as opened:
        rows = opened.episodes()
        configs = [json.loads(r["config_json"]) for r in opened.runs()]
    assert collections.Counter(r["method"] for r in rows) == {"planted[tuned]": 2, "protonet": 2}
    assert {r["setting"] for r in rows} == {"demo_intents/fold1/3way2shot3q"}
    assert configs[0]["tuned"] == str(tuned)
    from fewshot_bench.store.results import config_hash

    planted_hashes = {r["config_hash"] for r in rows if r["method"] == "planted[tuned]"}
    assert planted_hashes == {config_hash({"method": "planted", "config": chosen, "seed": 0, "backbone": "tiny-encoder",
                                           "source_task": None})}
    # a setting the file has no config for: one line, exit 2, nothing written
    missing = tmp_path / "missing.sqlite"
    assert run("1", missing) == 2
    assert "has no config for planted on demo_intents/fold1/3way1shot3q" in capsys.readouterr().err
    assert not missing.exists()


def test_missing_optuna_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main(TUNE + ["--methods", "planted", "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "pip install 'fewshot-bench[tune]'" in capsys.readouterr().err
    assert not (tmp_path / "s.sqlite").exists()


def test_search_space_declarations():
    from fewshot_bench.methods.spec import method_from_spec

    for name in ("full_ft", "lora", "sgg", "sgg-no-dir", "sgg-no-mag", "sgg-no-align", "maml", "fomaml", "linear_probe"):
        cls = type(method_from_spec(name))
        cls.search_space.check(cls.config_class, name)
    assert method_from_spec("protonet").search_space is None
    assert "lambda_dir" not in method_from_spec("sgg-no-dir").search_space.fields
    space = SearchSpace({"a": Choice((1, 2)), "b": Range(1, 3, integer=True)})
    assert space.grid() == {"a": [1, 2], "b": [1, 2, 3]}
    assert SearchSpace({"a": Range(1e-3, 1.0, log=True)}).grid() is None
    with pytest.raises(UserError, match="does not have"):
        SearchSpace({"nope": Choice((1,))}).check(PlantedConfig, "planted")
    with pytest.raises(ValueError):
        Range(0.0, 1.0, log=True)


def test_trials_run_in_the_sealed_worker_of_isolation(tmp_path):
    """A method file that fails outside a worker process: its (untuned) trial scores under --isolation process and
    its episodes fail in-process, so tune runs methods where run does."""
    method_file = tmp_path / "where.py"
    method_file.write_text(
        "import multiprocessing\nimport torch\nfrom fewshot_bench.methods import Method, Predictor\n\n\n"
        "class Where(Method):\n    name = 'where'\n\n    def adapt(self, ctx):\n"
        "        if multiprocessing.parent_process() is None:\n"
        "            raise RuntimeError('not in a worker')\n"
        "        return Predictor(lambda batch: torch.zeros(len(batch.input_ids), ctx.episode.n_way))\n")
    states = {}
    for isolation in ("process", "in-process"):
        store = tmp_path / f"{isolation}.sqlite"
        assert main(TUNE + ["--methods", f"{method_file}:Where", "--isolation", isolation, "--store", str(store),
                            "--out", str(tmp_path / f"{isolation}.yaml")]) == 0
        states[isolation] = [(r["state"], round(r["accuracy"], 4)) for r in _trials(store)]
    # all-zero logits predict the first class: 1/3 of a 3-way episode's queries; a failed episode scores 0
    assert states == {"process": [("untuned", 0.3333)], "in-process": [("untuned", 0.0)]}


def test_a_search_space_with_cost_fields_is_tuned_in_the_sealed_worker(tmp_path):
    """Under a worker the harness holds a stub of the method (its config as a dict): ties still go to the cheaper
    config, read from that dict."""
    method_file = tmp_path / "costly.py"
    method_file.write_text(
        "from dataclasses import dataclass\nimport torch\nfrom fewshot_bench.core.config import option\n"
        "from fewshot_bench.methods import Method, MethodConfig, Predictor\n"
        "from fewshot_bench.methods.search_space import Choice, SearchSpace\n\n\n"
        "@dataclass\nclass CostlyConfig(MethodConfig):\n    steps: int = option(1, help='irrelevant, costly')\n\n\n"
        "class Costly(Method):\n    name = 'costly'\n    config_class = CostlyConfig\n"
        "    search_space = SearchSpace({'steps': Choice((4, 2, 1))}, cost=('steps',))\n\n"
        "    def adapt(self, ctx):\n"
        "        return Predictor(lambda batch: torch.zeros(len(batch.input_ids), ctx.episode.n_way))\n")
    store, out = tmp_path / "s.sqlite", tmp_path / "tuned.yaml"
    assert main(TUNE + ["--methods", f"{method_file}:Costly", "--isolation", "process", "--sampler", "grid",
                        "--trials", "3", "--store", str(store), "--out", str(out)]) == 0
    assert sorted(r["cost"] for r in _trials(store)) == [1.0, 2.0, 4.0]
    entry = yaml.safe_load(out.read_text())["settings"]["demo_intents/fold1/3way2shot3q"][f"{method_file}:Costly"]
    assert entry["overrides"] == {"steps": 1}


def test_cross_domain_target_without_validation_classes_is_tuned_on_the_source_task(tmp_path, evaluated):
    """A target task whose classes are all evaluated (like fewrel_pubmed) is tuned on its source task's validation
    pool; the chosen config is filed under the cross-domain setting that run --tuned looks up."""
    cards = tmp_path / "cards"
    cards.mkdir()
    target_only = {"name": "target_only", "version": 1, "description": "d", "citation": "c", "license": "l",
                   "source": {"local_dir": "demo_intents", "packaged": True}, "splits": ["data"],
                   "pools": {"strategy": "classes", "target": ["movie_showtimes", "water_plants", "pay_utility_bill",
                                                                "find_parking", "language_lesson", "play_music",
                                                                "set_timer"]}}
    (cards / "target_only.yaml").write_text(yaml.safe_dump(target_only), encoding="utf-8")
    tuned, store = tmp_path / "tuned.yaml", tmp_path / "t.sqlite"
    flags = ["--tasks", "target_only", "--source-task", "demo_intents", "--tasks-dir", str(cards), "--n-way", "3",
             "--k-shot", "2", "--query", "3", "--backbone", "tiny-encoder", "--device", "cpu"]
    assert main(["tune", *flags, "--methods", "planted", "--episodes", "2", "--trials", "2", "--store", str(store),
                 "--out", str(tuned)]) == 0
    document = yaml.safe_load(tuned.read_text())
    assert document["budget"]["source_task"] == "demo_intents"
    entry = document["settings"]["demo_intents->target_only/fold1/3way2shot3q"]["planted"]
    assert entry["validated_on"] == "demo_intents/fold1/validation/3way2shot3q"
    from fewshot_bench.data.loading import get_task_data

    validation = set(get_task_data("demo_intents").pools["validation"].classes)
    assert len(evaluated) == 4 and all(set(e.classes) <= validation for e in evaluated)
    assert {r["setting"] for r in _trials(store)} == {"demo_intents/fold1/validation/3way2shot3q"}
    run_store = tmp_path / "run.sqlite"
    assert main(["run", *flags, "--methods", "planted", "--episodes", "1", "--tuned", str(tuned),
                 "--store", str(run_store), "--out", ""]) == 0
    with ResultsStore(run_store) as opened:
        assert [(r["method"], r["setting"]) for r in opened.episodes()] == [
            ("planted[tuned]", "demo_intents->target_only/fold1/3way2shot3q")]
    # 7- and 6-way target episodes, 5 validation classes in the source task: both are tuned on its 5-way episodes,
    # each filed under its own setting; the second reads the first's trials back instead of running them again
    wide = [*flags[:flags.index("--n-way")], "--n-way", "7,6", *flags[flags.index("--n-way") + 2:]]
    evaluated.clear()
    assert main(["tune", *wide, "--methods", "planted", "--episodes", "1", "--trials", "1", "--store",
                 str(tmp_path / "wide.sqlite"), "--out", str(tmp_path / "wide.yaml")]) == 0
    settings = yaml.safe_load((tmp_path / "wide.yaml").read_text())["settings"]
    for n_way in (7, 6):
        entry = settings[f"demo_intents->target_only/fold1/{n_way}way2shot3q"]["planted"]
        assert entry["validated_on"] == "demo_intents/fold1/validation/5way2shot3q"
    assert len(evaluated) == 1
