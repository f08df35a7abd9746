"""The sealed method contract: a method that tries every route to the query labels it is handed gets none."""
import dataclasses
import functools

import torch

from fewshot_bench.episodes.sampling import Episode, Setting, SourcePool
from fewshot_bench.execution.harness import run_episode
from fewshot_bench.methods import EpisodeContext, Method, Predictor
from fewshot_bench.episodes.sealed import EpisodeView

LEAKS = ("query_labels", "query_ids", "fingerprint", "seed", "index", "target_episode")


def reachable(*roots, limit=300_000):
    """Every object reachable from ``roots`` through attributes, slots, containers, closures, default
    arguments, bound methods and partials (not through modules or classes: those lead to the datasets,
    which a method could import anyway)."""
    seen, stack, found = set(), list(roots), []
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, type(functools), str, bytes, int, float, bool, type(None))):
            continue
        seen.add(id(obj))
        found.append(obj)
        if isinstance(obj, torch.Tensor):
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        if isinstance(obj, functools.partial):
            stack.extend([obj.func, obj.args, obj.keywords])
        for name in ("__self__", "__func__", "__closure__", "__defaults__", "__kwdefaults__", "cell_contents"):
            try:
                stack.append(getattr(obj, name))
            except (AttributeError, ValueError):
                pass
        stack.extend(getattr(obj, "__dict__", {}).values())
        for slot in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, slot):
                stack.append(getattr(obj, slot))
    return found


class Cheater(Method):
    """Tries every route to the query labels it can reach from what the harness hands it."""

    name = "cheater"
    found = []

    def adapt(self, ctx):
        found = Cheater.found
        for attr in LEAKS:
            if hasattr(ctx.episode, attr):
                found.append(f"ctx.episode.{attr}")
        if ctx.batch(ctx.episode, "query").labels is not None:
            found.append("ctx.batch(ctx.episode, 'query').labels")
        for obj in reachable(ctx):
            if isinstance(obj, (Episode, Setting)):
                found.append(f"reachable {type(obj).__name__}")
            elif any(hasattr(obj, attr) for attr in ("query_labels", "target_episode")) and not isinstance(obj, type):
                found.append(f"reachable {type(obj).__name__} with labels")

        def predict(batch):
            if batch.labels is not None:
                found.append("query batch labels")
            for obj in reachable(batch):
                if isinstance(obj, (Episode, Setting)) or hasattr(obj, "query_labels"):
                    found.append(f"reachable from the query batch: {type(obj).__name__}")
            return torch.zeros(len(batch), ctx.n_way)

        return Predictor(predict, 0)


def test_a_cheating_method_reaches_no_query_label(tiny_backbone):
    setting = Setting("demo_intents", n_way=3, k_shot=2, q_query=4)  # K != Q: no accidental equal tuples
    episode = setting.target_episode(0, 0)
    Cheater.found = []
    record = run_episode(Cheater(), episode, tiny_backbone, seed=0, source_episodes=SourcePool(setting, 0))
    assert record["status"] == "ok", record["error"]
    assert Cheater.found == []
    assert record["predictions"] == [0] * len(episode.query_labels)  # scored by the harness, not the method


def test_the_view_is_the_episode_without_its_query_labels_or_key(tiny_backbone, demo_episode):
    view = EpisodeView.of(demo_episode)
    hidden = {f.name for f in dataclasses.fields(Episode)} - {f.name for f in dataclasses.fields(EpisodeView)}
    assert {"query_labels", "query_ids", "fingerprint", "seed", "index"} <= hidden
    assert view.support_labels == demo_episode.support_labels and view.query_texts == demo_episode.query_texts
    ctx = EpisodeContext(tiny_backbone, demo_episode, 0)
    assert isinstance(ctx.episode, EpisodeView)


def test_the_cheater_would_see_labels_through_an_unsealed_context(tiny_backbone, demo_episode):
    """The check itself can fail: a context still holding the full episode is caught."""
    ctx = EpisodeContext(tiny_backbone, demo_episode, 0)
    ctx.leaked = demo_episode
    Cheater.found = []
    Cheater().adapt(ctx)
    assert any("Episode" in item for item in Cheater.found)

