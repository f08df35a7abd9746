"""Ten ways a submitted method file tries to score 1.0 by reading the query labels (or the scores). Each works
in-process (checked here, so the attacks are real) except the declared-figure one; under the sealed worker each
scores no better than chance or fails, and a normal method run after it is unaffected. Attacks 4, 5, 6 and 9 read
files the packaged demo data / the store: only Landlock stops them (skipped, with the reason, without it)."""
import sqlite3
import textwrap

import pytest

from fewshot_bench.execution import harness
from fewshot_bench.methods import metrics
from fewshot_bench.data.loading import get_task_data
from fewshot_bench.episodes.sampling import Setting, sample_episode
from fewshot_bench.execution.harness import run_episode
from fewshot_bench.methods.spec import method_from_spec
from fewshot_bench.execution.worker import SealedWorker

pytestmark = pytest.mark.sealed  # the worker under its default isolation

ATTACKS = textwrap.dedent('''
    import gc, glob, inspect, json, os, sqlite3, sys, warnings
    import torch
    from fewshot_bench.methods import Method, Predictor


    def answer(ctx, labels):
        """Predict the stolen label of each query text (class 0 when nothing was stolen)."""
        def predict(batch):
            rows = [int(labels.get(text, 0)) for text in batch.texts]
            return torch.nn.functional.one_hot(torch.tensor(rows), ctx.n_way).float()
        return Predictor(predict, 0)


    def from_episode(found, value):
        texts, labels = getattr(value, "query_texts", None), getattr(value, "query_labels", None)
        if texts is not None and labels is not None:
            found.update(zip(texts, labels))
        if isinstance(value, dict) and "query_labels" in value and "query_texts" in value:
            found.update(zip(value["query_texts"], value["query_labels"]))


    def by_class_name(ctx, rows):
        """text -> label id in this episode, from (text, class name) rows."""
        index = {name: i for i, name in enumerate(ctx.episode.classes)}
        return {text: index[name] for text, name in rows if name in index}


    def matching_episode(ctx, episodes):
        for episode in episodes:
            if episode.support_ids == ctx.episode.support_ids:
                return dict(zip(episode.query_texts, episode.query_labels))
        return {}


    class Frames(Method):
        name = "attack_frames"

        def adapt(self, ctx):
            found, frame = {}, sys._getframe()
            while frame is not None:
                for value in list(frame.f_locals.values()):
                    from_episode(found, value)
                frame = frame.f_back
            return answer(ctx, found)


    class Stack(Method):
        name = "attack_stack"

        def adapt(self, ctx):
            found = {}
            for info in inspect.stack():
                for value in list(info.frame.f_locals.values()) + list(info.frame.f_globals.values()):
                    from_episode(found, value)
            return answer(ctx, found)


    class Garbage(Method):
        name = "attack_gc"

        def adapt(self, ctx):
            found = {}
            with warnings.catch_warnings():  # getattr on every object wakes deprecated module attributes
                warnings.simplefilter("ignore")
                for value in gc.get_objects():
                    try:
                        from_episode(found, value)
                    except Exception:
                        pass
            return answer(ctx, found)


    class Files(Method):
        name = "attack_files"

        def adapt(self, ctx):
            from fewshot_bench.data.cards import BUILTIN_TASKS_DIR
            folders = [os.path.join(str(BUILTIN_TASKS_DIR), ctx.episode.task)]
            if os.environ.get("FEWSHOT_BENCH_DATA"):
                folders.append(os.path.join(os.environ["FEWSHOT_BENCH_DATA"], ctx.episode.task))
            rows = []
            for folder in folders:
                for path in glob.glob(os.path.join(folder, "*.jsonl")):
                    try:
                        with open(path) as f:
                            rows += [(r["text"], r["label"]) for r in map(json.loads, f)]
                    except OSError:
                        pass
            return answer(ctx, by_class_name(ctx, rows))


    class DataAPI(Method):
        name = "attack_data_api"

        def adapt(self, ctx):
            from fewshot_bench.data.loading import get_task_data
            try:
                data = get_task_data(ctx.episode.task)
                return answer(ctx, by_class_name(ctx, zip(data.texts, data.labels)))
            except Exception:
                return answer(ctx, {})


    class Resample(Method):
        name = "attack_resample"

        def adapt(self, ctx):
            from fewshot_bench.data.loading import get_task_data
            from fewshot_bench.episodes.sampling import sample_episode
            view = ctx.episode
            try:
                data = get_task_data(view.task)
                guesses = (sample_episode(data, n_way=view.n_way, k_shot=view.k_shot, q_query=view.q_query,
                                          seed=seed, index=index) for seed in range(3) for index in range(10))
                return answer(ctx, matching_episode(ctx, guesses))
            except Exception:
                return answer(ctx, {})


    class SourcePool(Method):
        name = "attack_source_pool"
        protocol = "source-guided"

        def adapt(self, ctx):
            found = {}
            pool = getattr(ctx, "_source_episodes", None)
            try:  # in-process: the sampler's slots name the task, fold, shape and seed: draw target episodes
                from fewshot_bench.data.loading import get_task_data
                from fewshot_bench.episodes.sampling import sample_episode
                n_way, k_shot, q_query = pool._shape
                data = get_task_data(pool._task, pool._fold)
                found = matching_episode(ctx, (sample_episode(data, n_way=n_way, k_shot=k_shot, q_query=q_query,
                                                              seed=pool._seed, index=i) for i in range(10)))
            except Exception:
                pass
            try:  # in a worker: ask the harness for the target pool over its own pipe
                from multiprocessing.connection import Connection
                from fewshot_bench.worker_sandbox import pack
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    connections = [o for o in gc.get_objects() if isinstance(o, Connection)]
                for conn in connections:
                    conn.send_bytes(pack(("pool", "target", 2)))
                    reply = torch.load(__import__("io").BytesIO(conn.recv_bytes()), weights_only=False)
                    if reply[0] == "episode":
                        from_episode(found, reply[1])
            except Exception:
                pass
            for i in range(10):  # and scan the source pool itself for the query texts
                try:
                    from_episode(found, ctx.source_episode(i))
                except Exception:
                    pass
            return answer(ctx, {t: found[t] for t in ctx.episode.query_texts if t in found})


    class Scorer(Method):
        name = "attack_scorer"

        def adapt(self, ctx):
            import fewshot_bench.execution.harness as harness, fewshot_bench.methods.metrics as metrics
            perfect = lambda labels, predictions: {"accuracy": 1.0, "macro_f1": 1.0}
            metrics.query_scores = harness.query_scores = perfect
            return answer(ctx, {})


    class Store(Method):
        name = "attack_store"

        def adapt(self, ctx):
            candidates = [os.environ.get("ATTACK_STORE", "")] + glob.glob("*.sqlite") + sys.argv
            for path in candidates:
                try:
                    if path.endswith(".sqlite") and os.path.exists(path):
                        with sqlite3.connect(path) as db:
                            db.execute("UPDATE episodes SET accuracy = 1.0 WHERE method = 'attack_store'")
                except Exception:
                    pass
            return answer(ctx, {})


    class Harness(Method):
        """Not a label theft: end the run (kill the harness) or read its memory. trainable_params says what worked."""
        name = "attack_harness"

        def adapt(self, ctx):
            import signal
            worked = 0
            try:
                with open(f"/proc/{os.getppid()}/mem", "rb"):
                    worked += 1
            except OSError:
                pass
            try:
                os.kill(os.getppid(), signal.SIGKILL)
                worked += 10
            except OSError:
                pass
            return Predictor(answer(ctx, {}).predict, worked)


    class Figure(Method):
        name = "attack_figure"

        def adapt(self, ctx):
            ctx.figures["accuracy"] = 1.0
            return answer(ctx, {})
''')

KINDS = ["Frames", "Stack", "Garbage", "Files", "DataAPI", "Resample", "SourcePool", "Scorer", "Store", "Figure"]
NEEDS_LANDLOCK = {"Files", "DataAPI", "Resample", "Store"}  # files only the kernel can keep from a process


@pytest.fixture(scope="module")
def setting():
    return Setting("demo_intents", n_way=5, k_shot=2, q_query=3)


@pytest.fixture(scope="module")
def episode():
    return sample_episode(get_task_data("demo_intents"), n_way=5, k_shot=2, q_query=3, seed=0, index=2)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A results store the store attack finds through $ATTACK_STORE (set before the worker starts)."""
    path = tmp_path_factory.mktemp("store") / "results.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE episodes (method TEXT, accuracy REAL)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTACK_STORE", str(path))
        yield path


@pytest.fixture(scope="module")
def attack_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("submitted") / "attacks.py"
    path.write_text(ATTACKS)
    return str(path)


@pytest.fixture(scope="module")
def worker(store):
    with SealedWorker("tiny-encoder", device="cpu", timeout=60) as sealed:
        yield sealed


@pytest.fixture(scope="module")
def alone(tiny_backbone, episode):
    """protonet's predictions on the episode, run alone."""
    return run_episode(method_from_spec("protonet"), episode, tiny_backbone, seed=0)["predictions"]


def _reset(store):
    with sqlite3.connect(store) as db:
        db.execute("DELETE FROM episodes")
        db.execute("INSERT INTO episodes VALUES ('attack_store', 0.2)")


def _stored(store):
    with sqlite3.connect(store) as db:
        return db.execute("SELECT accuracy FROM episodes").fetchone()[0]


@pytest.mark.parametrize("kind", KINDS)
def test_attack_works_in_process(kind, attack_file, tiny_backbone, episode, setting, store, monkeypatch):
    """The control: without the worker each attack but the declared figure gets every query right."""
    monkeypatch.setattr(harness, "query_scores", harness.query_scores)  # restored after the scorer attack
    monkeypatch.setattr(metrics, "query_scores", metrics.query_scores)
    _reset(store)
    record = run_episode(method_from_spec(f"{attack_file}:{kind}"), episode, tiny_backbone, seed=0,
                         source_episodes=setting.source_episodes(0))
    if kind == "Figure":
        assert record["status"] == "failed" and "undeclared figure 'accuracy'" in record["error"]
    elif kind == "Store":
        assert _stored(store) == 1.0
    else:
        assert record["status"] == "ok" and record["accuracy"] == 1.0, record["error"]


@pytest.mark.parametrize("kind", KINDS)
def test_attack_fails_in_the_sealed_worker(kind, attack_file, worker, episode, setting, store, alone):
    spec = f"{attack_file}:{kind}"
    level = worker.start(spec)
    if kind in NEEDS_LANDLOCK and level != "sandboxed":
        pytest.skip(f"only Landlock stops this attack, and the worker is not sandboxed here: "
                    f"{worker._slots[attack_file].note}")
    _reset(store)
    record = run_episode(method_from_spec(spec), episode, None, seed=0, worker=worker,
                         source_episodes=setting.source_episodes(0))
    chance = 1 / episode.n_way
    assert record["status"] == "failed" or record["accuracy"] <= chance + 0.2, record
    if kind == "Figure":
        assert "undeclared figure 'accuracy'" in record["error"]
    assert _stored(store) == 0.2
    after = run_episode(method_from_spec("protonet"), episode, None, seed=0, worker=worker)
    assert after["status"] == "ok" and after["predictions"] == alone


def test_the_sandbox_keeps_the_harness_alive_and_unread(attack_file, worker, episode):
    """Landlock's scopes: no signal to the harness (a SIGKILL would end the run), no /proc/PID/mem of it."""
    spec = f"{attack_file}:Harness"
    if worker.start(spec) != "sandboxed":
        pytest.skip(f"without Landlock the worker could kill this test process: {worker._slots[attack_file].note}")
    record = run_episode(method_from_spec(spec), episode, None, seed=0, worker=worker)
    assert record["status"] == "ok" and record["trainable_params"] == 0, record


def test_confine_says_why_not_without_landlockpy(monkeypatch):
    import sys

    from fewshot_bench.execution.worker_process import confine

    monkeypatch.setitem(sys.modules, "landlockpy", None)
    assert "landlockpy is not installed" in confine(read=[], write=[], deny=[])
