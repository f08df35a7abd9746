"""Test helpers shared by several test modules (the only module tests import from each other)."""
import hashlib
import os
import sqlite3
from pathlib import Path

import pytest
import torch

from fewshot_bench.store.results import ResultsStore

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent  # cwd for subprocesses: the installed package, not the source tree, is imported
SETTING = "demo/fold1/5way5shot15q"


def shared_data_dir() -> Path:
    """The real datasets: $FEWSHOT_BENCH_DATA or ../shared/data. Missing in CI is a failure, not a skip."""
    path = Path(os.environ.get("FEWSHOT_BENCH_DATA") or REPO.parent / "shared" / "data")
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide the datasets at {path} (set FEWSHOT_BENCH_DATA)")
        pytest.skip(f"no datasets at {path}")
    return path


def committed_rows(path) -> int:
    """Episode rows committed to the store at ``path``; 0 until a writer has created the file and its schema."""
    if not os.path.exists(path):
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]
    except sqlite3.DatabaseError:  # file created, schema not written yet
        return 0


def record(**overrides) -> dict:
    """A complete synthetic episode record; the fingerprint depends on task/setting/seed/index only."""
    row = dict(run_id="run0", config_hash="cfg0", method="full_ft", protocol="target-only", backbone="minilm",
               task="demo", setting="demo/fold1/5way5shot15q", n_way=5, k_shot=5, q_query=15, fold=1, seed=0,
               episode_index=0, status="ok", error="", accuracy=0.8, macro_f1=0.75, final_loss=0.3,
               grad_norm_cv=0.5, grad_dir_consistency=0.2, path_efficiency=0.6, source_alignment=0.1,
               wall_seconds=1.5, peak_mem_mb=100.0, trainable_params=1000, steps=10, predictions=[0, 1, 2],
               extra={"note": "x"}, embedding_cache_seconds=0.0, meta_train_seconds=12.5,
               same_class_source=0,
               restart=0, support_loss_before=1.2, support_loss_after=0.4, adapt_changed=0.1, isolation="in-process")
    row.update(overrides)
    row.setdefault("fingerprint", hashlib.sha256(
        f"{row['task']}|{row['setting']}|{row['seed']}|{row['episode_index']}".encode()).hexdigest())
    return row


def build_store(path, episodes: int = 10) -> None:
    """full_ft > protonet on one episode set (protonet: no gradients, one failed episode); lora on another seed;
    maml meta-trained on the same set and anil meta-trained cross-dataset (source 'other') on it too; a
    formula-named method with a negative gradient cosine."""
    with ResultsStore(path) as store:
        for i in range(episodes):
            store.write_episode(record(method="full_ft", episode_index=i, accuracy=0.6 + 0.03 * i))
            store.write_episode(record(
                method="protonet", episode_index=i, accuracy=None if i == 0 else 0.5 + 0.01 * i,
                status="failed" if i == 0 else "ok", grad_norm_cv=None, grad_dir_consistency=None,
                path_efficiency=None, source_alignment=None, steps=0))
            store.write_episode(record(method="lora", seed=1, episode_index=i, accuracy=0.9))
            store.write_episode(record(method="maml", protocol="meta-trained", episode_index=i, accuracy=0.2))
            store.write_episode(record(method="anil", protocol="meta-trained", setting="other->" + SETTING,
                                       fingerprint=record(episode_index=i)["fingerprint"], episode_index=i,
                                       accuracy=0.4))
            store.write_episode(record(method='=HYPERLINK("http://evil")', episode_index=i, accuracy=0.1,
                                       grad_dir_consistency=-0.25))
            store.write_episode(record(method="-x", backbone="+bert", episode_index=i, accuracy=0.3))


def adapt(method, backbone, episode, source=None, seed: int = 3):
    """``method.adapt`` on ``episode`` (source pool ``source``) from a seeded RNG: (query logits, the context)."""
    from fewshot_bench.methods import EpisodeContext

    torch.manual_seed(seed)
    ctx = EpisodeContext(backbone, episode, seed, source_episodes=source)
    predictor = method.adapt(ctx)
    with torch.no_grad():
        logits = predictor.predict(ctx.batch(episode, "query"))
    return logits, ctx
