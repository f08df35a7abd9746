"""The sealed worker (fewshot_bench.execution.worker): the same predictions as in-process, and a method that hangs, exits or
allocates without bound fails only its own episode; the next one runs in a fresh worker."""
import textwrap

import pytest
import torch

from fewshot_bench.data.loading import get_task_data
from fewshot_bench.episodes.sampling import Setting, sample_episode
from fewshot_bench.execution.harness import run_episode
from fewshot_bench.methods import MetaContext
from fewshot_bench.methods.spec import method_from_spec
from fewshot_bench.execution.worker import SealedWorker
from fewshot_bench.execution.worker_methods import method_spec

pytestmark = pytest.mark.sealed  # the worker under its default isolation

BAD = textwrap.dedent('''
    import os, time
    from dataclasses import dataclass
    import torch
    from fewshot_bench.core.config import option
    from fewshot_bench.methods import Method, MethodConfig, Predictor


    @dataclass
    class BadConfig(MethodConfig):
        mode: str = option("ok", help="ok, sleep, exit or alloc")


    class Bad(Method):
        name = "bad_method"
        config_class = BadConfig

        def adapt(self, ctx):
            if self.config.mode == "sleep":
                time.sleep(600)
            elif self.config.mode == "exit":
                os._exit(0)
            elif self.config.mode == "alloc":
                hoard = []
                while True:
                    hoard.append(bytes(256 * 2**20))  # calloc: address space, fast
            return Predictor(lambda batch: torch.zeros(len(batch), ctx.n_way), 0)
''')


@pytest.fixture(scope="module")
def episode():
    return sample_episode(get_task_data("demo_intents"), n_way=5, k_shot=2, q_query=3, seed=0, index=0)


@pytest.fixture(scope="module")
def worker():
    with SealedWorker("tiny-encoder", device="cpu", timeout=120) as sealed:
        yield sealed


@pytest.fixture(scope="module")
def bad_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("methods") / "bad.py"
    path.write_text(BAD)
    return str(path)


@pytest.fixture(scope="module")
def bad_worker(bad_file, episode):
    """Process isolation (no Landlock needed), a 5 s limit and a 3 GB memory cap; the built-ins' process and the
    method file's started and warmed up here (a method file runs in a process of its own), so the limit meets only
    the method's own time on a busy machine."""
    with SealedWorker("tiny-encoder", device="cpu", isolation="process", timeout=120,
                      memory_limit_mb=3000) as sealed:
        assert sealed.start() == sealed.start(f"{bad_file}:Bad") == "process"
        assert len(sealed._slots) == 2
        for spec in ("protonet", f"{bad_file}:Bad"):
            assert run_episode(method_from_spec(spec), episode, None, seed=0, worker=sealed)["status"] == "ok"
        sealed.timeout = 5
        yield sealed


@pytest.mark.parametrize("spec", ["protonet", "full_ft(steps=3)"])
def test_worker_predicts_as_in_process(worker, tiny_backbone, episode, spec):
    here = run_episode(method_from_spec(spec), episode, tiny_backbone, seed=3)
    there = run_episode(method_from_spec(spec), episode, None, seed=3, worker=worker)
    assert here["status"] == there["status"] == "ok", there["error"]
    assert there["predictions"] == here["predictions"] and there["accuracy"] == here["accuracy"]
    assert there["trainable_params"] == here["trainable_params"]
    for name in ("grad_norm_cv", "final_loss", "path_efficiency"):
        assert (there.get(name) is None) == (here.get(name) is None)
        if here.get(name) is not None:
            assert there[name] == pytest.approx(here[name], rel=1e-4, abs=1e-6)
    assert there["isolation"] in ("sandboxed", "process") and there["wall_seconds"] > 0


def test_meta_training_in_the_worker(worker, tiny_backbone, episode):
    """fomaml(meta_steps=1): meta-trained in the worker (source episodes served by the harness), its state back
    here, and the same adapted predictions and adaptation figures as in-process."""
    source = Setting("demo_intents", n_way=5, k_shot=2, q_query=3).source_episodes(0)
    here = method_from_spec("fomaml", {"meta_steps": 1})
    here.meta_train(MetaContext(tiny_backbone, 0, source))
    there = method_from_spec("fomaml", {"meta_steps": 1})
    state = worker.meta_train(there, seed=0, source_episodes=source)
    expected = here.state_dict()
    assert set(state) == set(expected)
    assert all(torch.allclose(state[k], expected[k].cpu(), atol=1e-6) for k in expected)
    a = run_episode(here, episode, tiny_backbone, seed=1)
    b = run_episode(there, episode, None, seed=1, worker=worker)
    assert a["status"] == b["status"] == "ok", b["error"]
    assert a["predictions"] == b["predictions"]
    for name in ("support_loss_before", "support_loss_after", "adapt_changed"):
        assert b[name] == pytest.approx(a[name], rel=1e-4)


def test_meta_trained_method_without_state_fails_in_the_worker(worker, episode):
    record = run_episode(method_from_spec("fomaml", {"meta_steps": 1}), episode, None, seed=1, worker=worker)
    assert record["status"] == "failed" and "SealedWorker.meta_train" in record["error"]


def test_method_spec_round_trip(bad_file):
    method = method_from_spec(f"{bad_file}:Bad", {"mode": "sleep"})
    spec, overrides = method_spec(method)
    assert spec == f"{bad_file}:Bad" and overrides == {"mode": "sleep"}
    assert method_spec(method_from_spec("protonet"))[0] == "fewshot_bench.baselines.protonet:PrototypicalNetwork"


def _after(bad_worker, bad_file, episode, starts_before):
    """The same method file's next (normal) episode succeeds in a fresh worker (its start is not timed: a generous
    limit for its cold first episode); a built-in is unaffected."""
    bad_worker.timeout = 120
    try:
        ok = run_episode(method_from_spec(f"{bad_file}:Bad"), episode, None, seed=0, worker=bad_worker)
    finally:
        bad_worker.timeout = 5
    assert ok["status"] == "ok", ok["error"]
    assert ok["accuracy"] == pytest.approx(1 / episode.n_way)
    slot = bad_worker._slots[bad_file]
    assert slot.alive and slot.process.pid != starts_before
    built_in = run_episode(method_from_spec("protonet"), episode, None, seed=0, worker=bad_worker)
    assert built_in["status"] == "ok", built_in["error"]


def _pid(bad_worker, bad_file):
    slot = bad_worker._slots.get(bad_file)
    return slot.process.pid if slot is not None and slot.alive else None


def test_a_hanging_method_times_out(bad_worker, bad_file, episode):
    import time

    method = method_from_spec(f"{bad_file}:Bad", {"mode": "sleep"})
    bad_worker._host(method, 0)  # started before the clock: the limit is the episode's
    pid = _pid(bad_worker, bad_file)
    started = time.monotonic()
    record = run_episode(method, episode, None, seed=0, worker=bad_worker)
    assert time.monotonic() - started < 15
    assert record["status"] == "failed" and record["error"] == "timeout: the episode exceeded 5 s"
    assert record["isolation"] == "process"
    _after(bad_worker, bad_file, episode, pid)


def test_a_method_calling_os_exit_fails_its_episode(bad_worker, bad_file, episode):
    method = method_from_spec(f"{bad_file}:Bad", {"mode": "exit"})
    bad_worker._host(method, 0)
    pid = _pid(bad_worker, bad_file)
    record = run_episode(method, episode, None, seed=0, worker=bad_worker)
    assert record["status"] == "failed"
    assert "exited with status 0" in record["error"] and "os._exit" in record["error"]
    _after(bad_worker, bad_file, episode, pid)


def test_runaway_allocation_is_a_memory_error(bad_worker, bad_file, episode):
    method = method_from_spec(f"{bad_file}:Bad", {"mode": "alloc"})
    bad_worker._host(method, 0)
    record = run_episode(method, episode, None, seed=0, worker=bad_worker)
    assert record["status"] == "failed" and "MemoryError" in record["error"]
    ok = run_episode(method_from_spec(f"{bad_file}:Bad"), episode, None, seed=0, worker=bad_worker)
    assert ok["status"] == "ok", ok["error"]


def test_describe_builds_the_method_in_the_worker_only(worker, tiny_backbone, episode, tmp_path):
    """A method file described through the worker is never imported here; its stub runs episodes there."""
    import sys

    from fewshot_bench.core.errors import UserError

    path = tmp_path / "head.py"
    path.write_text(BAD.replace('name = "bad_method"', 'name = "stubbed"'))
    stub = worker.describe(f"{path}:Bad(mode=ok)")
    assert (stub.name, stub.protocol, stub.config_dict()) == ("stubbed", "target-only", {"mode": "ok"})
    assert not any(getattr(m, "__file__", None) == str(path) for m in list(sys.modules.values()))
    record = run_episode(stub, episode, None, seed=0, worker=worker)
    assert record["status"] == "ok" and record["accuracy"] == pytest.approx(1 / episode.n_way), record["error"]
    protonet = worker.describe("protonet(temperature=0.5)")
    assert protonet.config_dict() == method_from_spec("protonet", {"temperature": 0.5}).config_dict()
    assert protonet.config_hash() == method_from_spec("protonet", {"temperature": 0.5}).config_hash()
    with pytest.raises(UserError, match="no config field 'nope'"):
        worker.describe("protonet(nope=1)")
    with pytest.raises(UserError, match="unknown method"):
        worker.describe("protonett")


def test_a_card_registered_here_reaches_the_worker(worker, tmp_path):
    """A task registered in the harness (e.g. a --tasks-dir card) is known to the method in the worker (in-context
    learning reads its prompt template)."""
    import dataclasses

    from fewshot_bench.core.registry import register_task
    from fewshot_bench.data.cards import get_task_config

    card = dataclasses.replace(get_task_config("demo_intents"), name="demo_copy", prompt_template="Q: {text}\nA: {label}")
    register_task("demo_copy", card)
    episode = sample_episode(get_task_data("demo_copy"), n_way=3, k_shot=1, q_query=2, seed=0, index=0)
    path = tmp_path / "card.py"
    path.write_text(BAD.replace("            return Predictor(", "            from fewshot_bench.data.cards import get_task_config\n"
                                "            assert get_task_config(ctx.episode.task).prompt_template.startswith('Q:')\n"
                                "            return Predictor("))
    record = run_episode(method_from_spec(f"{path}:Bad"), episode, None, seed=0, worker=worker)
    assert record["status"] == "ok", record["error"]


def test_a_loading_bar_does_not_cost_the_sandbox():
    """MiniLM's 'Loading weights' bar would start tqdm's monitor thread before confinement (Landlock before ABI 8
    confines the calling thread only), leaving the worker at 'process' where a bar-less backbone is sandboxed."""
    levels = []
    for backbone in ("tiny-encoder", "minilm"):
        with SealedWorker(backbone, device="cpu", isolation="sandboxed", timeout=300, memory_limit_mb=6000) as sealed:
            levels.append(sealed.start())
    assert levels[1] == levels[0], levels


def test_tqdm_in_the_worker_holds_no_semaphore(episode, tmp_path):
    """tqdm's default lock is a multiprocessing one: MiniLM's 'Loading weights' bar, before confinement, would make
    it a POSIX semaphore that the confined worker cannot unlink at exit (a PermissionError traceback and a 'leaked
    semaphore' warning at the end of every run); the worker gives tqdm a thread lock instead."""
    path = tmp_path / "bars.py"
    path.write_text(textwrap.dedent('''
        import multiprocessing.synchronize
        import torch
        from tqdm import tqdm
        from fewshot_bench.methods import Method, Predictor


        class Bars(Method):
            name = "bars"

            def adapt(self, ctx):
                for _ in tqdm(range(2)):
                    pass
                lock = tqdm.get_lock()
                if any(isinstance(held, multiprocessing.synchronize.SemLock) for held in getattr(lock, "locks", [lock])):
                    raise RuntimeError("tqdm holds a multiprocessing lock")
                return Predictor(lambda batch: torch.zeros(len(batch), ctx.n_way), 0)
    '''))
    with SealedWorker("minilm", device="cpu", isolation="sandboxed", timeout=300, memory_limit_mb=6000) as sealed:
        record = run_episode(method_from_spec(f"{path}:Bars"), episode, None, seed=0, worker=sealed)
    assert record["status"] == "ok", record["error"]
