"""Episodes: determinism across processes, disjointness, pool membership, all-way, variable shot, cross-dataset."""
import json
import os
import subprocess
import sys

import pytest

from fewshot_bench.cli import main
from fewshot_bench.data.loading import get_task_data, set_data_dir
from fewshot_bench.episodes.sampling import Setting, sample_episode
from fewshot_bench.core.errors import UserError

from helpers import HERE, shared_data_dir


@pytest.fixture
def data_dir():
    path = shared_data_dir()
    set_data_dir(path)
    return path


def _episode_json(args, env):
    out = subprocess.run([sys.executable, "-m", "fewshot_bench", "episodes", *args], env=env, cwd=HERE,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_same_fingerprint_in_two_processes(data_dir):
    env = {**os.environ, "FEWSHOT_BENCH_DATA": str(data_dir), "PYTHONHASHSEED": "1"}
    args = ["banking77", "--n-way", "5", "--k-shot", "5", "--query", "15", "--seed", "0", "--index", "0"]
    first = _episode_json(args, env)
    second = _episode_json(args, {**env, "PYTHONHASHSEED": "2"})
    assert first == second
    local = sample_episode(get_task_data("banking77"), n_way=5, k_shot=5, q_query=15, seed=0, index=0)
    assert local.fingerprint == first["fingerprint"]


def test_seed_index_and_fold_change_the_episode(data_dir):
    data = get_task_data("banking77")
    base = sample_episode(data, seed=0, index=0).fingerprint
    assert sample_episode(data, seed=0, index=1).fingerprint != base
    assert sample_episode(data, seed=1, index=0).fingerprint != base
    assert sample_episode(get_task_data("banking77", 2), seed=0, index=0).fingerprint != base


@pytest.mark.parametrize("task,pool", [("banking77", "target"), ("banking77", "source"), ("hwu64", "validation"),
                                       ("sst2", "target"), ("fewrel", "target")])
def test_disjoint_support_query_and_pool_membership(data_dir, task, pool):
    data = get_task_data(task)
    n_way = 2 if task == "sst2" else 5
    for index in range(5):
        ep = sample_episode(data, pool=pool, n_way=n_way, k_shot=3, q_query=4, seed=7, index=index)
        assert not set(ep.support_ids) & set(ep.query_ids)
        assert set(ep.classes) <= set(data.pools[pool].classes)
        pool_ids = {data.ids[r] for r in data.pools[pool].rows}
        assert set(ep.support_ids) | set(ep.query_ids) <= pool_ids
        by_id = dict(zip(data.ids, data.labels))
        assert all(by_id[i] == ep.classes[l] for i, l in zip(ep.support_ids, ep.support_labels))
        assert all(by_id[i] == ep.classes[l] for i, l in zip(ep.query_ids, ep.query_labels))
        assert sorted(ep.support_labels) == sorted(list(range(n_way)) * 3) and len(ep.query_ids) == 4 * n_way


def test_label_ids_are_shuffled_per_episode(data_dir):
    data = get_task_data("clinc150")
    orders = {sample_episode(data, n_way=5, seed=0, index=i).classes for i in range(10)}
    assert len(orders) == 10
    first = sample_episode(data, n_way=5, seed=0, index=0)
    assert list(first.classes) != sorted(first.classes) or len(orders) > 1


def test_all_way_and_variable_shot(data_dir):
    data = get_task_data("clinc150")
    ep = sample_episode(data, n_way="all", k_shot=1, q_query=2, seed=0, index=0)
    assert ep.n_way == 50 and set(ep.classes) == set(data.pools["target"].classes)
    ep = sample_episode(data, n_way=5, k_shot=(1, 4), q_query=3, seed=0, index=0)
    counts = [ep.support_labels.count(i) for i in range(5)]
    assert all(1 <= c <= 4 for c in counts)
    assert len({tuple(sample_episode(data, n_way=5, k_shot=(1, 4), q_query=3, seed=0, index=i).support_labels)
                for i in range(5)}) > 1


def test_cross_dataset_setting(data_dir):
    setting = Setting("clinc150", n_way=5, k_shot=1, q_query=5, source_task="banking77")
    target, source = setting.target_episode(0, 0), setting.source_episode(0, 0)
    assert target.task == "clinc150" and source.task == "banking77"
    assert set(source.classes) <= set(get_task_data("banking77").pools["source"].classes)
    pubmed = Setting("fewrel_pubmed", source_task="fewrel")
    assert pubmed.source_episode(0, 0).task == "fewrel"
    with pytest.raises(UserError, match="source pool is empty"):
        Setting("fewrel_pubmed").source_episode(0, 0)


def test_variable_shot_flag_on_cli(data_dir, capsys):
    assert main(["episodes", "banking77", "--k-shot", "1-3", "--query", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["k_shot"] == [1, 3]
