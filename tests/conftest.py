"""Shared fixtures: offline hub, a temporary cache for the whole session, registries restored after each
test, the tiny random encoder (loaded once per session), the demo episode."""
import contextlib
import os

import pytest

# Set before any test module imports transformers / huggingface_hub (they read it at import time).
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def hermetic_environment(tmp_path_factory):
    """Offline hub; $FEWSHOT_BENCH_CACHE in a temporary folder (this process and its subprocesses), so
    no test reads or writes the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("FEWSHOT_BENCH_CACHE", str(tmp_path_factory.mktemp("fewshot_bench_cache")))
        yield


@pytest.fixture(autouse=True)
def methods_in_process(request, monkeypatch):
    """Runs that name no --isolation run methods in-process ($FEWSHOT_BENCH_ISOLATION, also in subprocesses): the
    sealed worker's ~10 s start is paid only by the tests about it, marked ``sealed``, which get the default."""
    if request.node.get_closest_marker("sealed") is None:
        monkeypatch.setenv("FEWSHOT_BENCH_ISOLATION", "in-process")
    else:
        monkeypatch.delenv("FEWSHOT_BENCH_ISOLATION", raising=False)


@pytest.fixture(autouse=True)
def restored_data_dir():
    """$FEWSHOT_BENCH_DATA as it was before the test (bench scripts and set_data_dir change it), with the
    task-data cache cleared when it changed, so no test reads another test's temporary data folder."""
    before = os.environ.get("FEWSHOT_BENCH_DATA")
    yield
    if os.environ.get("FEWSHOT_BENCH_DATA") != before:
        from fewshot_bench.data.loading import load_task_data

        if before is None:
            os.environ.pop("FEWSHOT_BENCH_DATA", None)
        else:
            os.environ["FEWSHOT_BENCH_DATA"] = before
        load_task_data.cache_clear()


@pytest.fixture(autouse=True)
def restored_registries():
    """Tasks, methods and backbones registered by a test are removed when it ends, even when it fails."""
    from fewshot_bench.core.registry import BACKBONES, METHODS, TASKS

    with contextlib.ExitStack() as stack:
        for registry in (TASKS, METHODS, BACKBONES):
            stack.enter_context(registry.scoped())
        yield


@pytest.fixture(scope="session")
def tiny_backbone():
    from fewshot_bench.methods.backbone import load_backbone

    return load_backbone("tiny-encoder", device="cpu")


@pytest.fixture
def demo_episode():
    from fewshot_bench.data.loading import get_task_data
    from fewshot_bench.episodes.sampling import sample_episode

    return sample_episode(get_task_data("demo_intents"), n_way=3, k_shot=2, q_query=2, seed=0, index=0)


@pytest.fixture(scope="module")
def backbone():
    """The tiny random encoder with eager attention (double backward: SGG exact mode, MAML)."""
    from fewshot_bench.methods.backbone import load_backbone

    return load_backbone("tiny-encoder", device="cpu", attn_implementation="eager")


@pytest.fixture(scope="module")
def demo():
    """(demo target episode 5-way 5-shot 5-query, source(i, k=5, q=5) -> source-pool episode i)."""
    from fewshot_bench.data.loading import get_task_data
    from fewshot_bench.episodes.sampling import sample_episode

    data = get_task_data("demo_intents")

    def source(i, k=5, q=5):
        return sample_episode(data, pool="source", n_way=5, k_shot=k, q_query=q, seed=0, index=i)

    return sample_episode(data, pool="target", n_way=5, k_shot=5, q_query=5, seed=0, index=0), source
