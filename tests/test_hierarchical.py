"""Class-level CI: as wide as the episode-level one without class effects, much wider with them; the
episodes' classes come from the store's extra or are regenerated (fingerprint-checked)."""
import numpy as np

from fewshot_bench.analysis.compare import Entry
from fewshot_bench.episodes.sampling import Setting
from fewshot_bench.analysis.hierarchical import class_accuracy, class_ci, episode_labels, grouped_class_ci
from fewshot_bench.analysis.stats import bootstrap_ci


def _entry(effect, seed):
    """100 5-way episodes over 27 classes, 15 queries per class; class c is answered correctly with probability
    0.75 + beta_c, beta ~ N(0, effect)."""
    rng = np.random.default_rng(seed)
    beta = rng.normal(0, effect, 27)
    predictions, labels, accuracy = {}, {}, {}
    for e in range(100):
        classes, truth = rng.choice(27, 5, replace=False), np.repeat(np.arange(5), 15)
        correct = rng.random(75) < np.clip(0.75 + beta[classes], 0.05, 0.99)[truth]
        predicted = np.where(correct, truth, (truth + 1) % 5)
        f = f"f{e}"
        predictions[f], labels[f] = predicted.tolist(), (tuple(f"c{c}" for c in classes), tuple(truth.tolist()))
        accuracy[f] = float(np.mean(correct))
    return Entry(("t", "s", "b"), {}, accuracy, predictions, frozenset(accuracy), labels=labels)


def _ratio(entry, seed):
    low, high = class_ci(entry, list(entry.accuracy), entry.labels, seed=seed)
    e_low, e_high = bootstrap_ci(list(entry.accuracy.values()), 4000, seed)
    assert low <= np.mean(list(entry.accuracy.values())) <= high
    return (high - low) / (e_high - e_low)


def test_class_level_ci_widens_only_with_class_effects():
    without = [_ratio(_entry(0.0, s), s) for s in range(4)]
    with_effects = [_ratio(_entry(0.15, s), s) for s in range(4)]
    assert 0.7 < np.median(without) < 1.3
    assert min(with_effects) > 2.5


def test_paired_class_level_ci_and_missing_labels():
    a = _entry(0.1, 0)
    same = Entry(a.cell, {}, dict(a.accuracy), dict(a.predictions), a.fingerprints, labels=a.labels)
    assert class_ci(a, list(a.accuracy), a.labels, same) == (0.0, 0.0)  # identical predictions: zero difference
    assert class_ci(a, list(a.accuracy), {}) == (None, None)
    assert class_accuracy([0, 1, 1, 1], (("x", "y"), (0, 0, 1, 1))) == {"x": 0.5, "y": 1.0}


def test_episode_labels_regenerate_only_matching_episodes():
    episode = Setting("demo_intents", 5, 1, 15).target_episode(0, 3)
    record = dict(fingerprint=episode.fingerprint, setting="demo_intents/fold1/5way1shot15q", task="demo_intents",
                  n_way=5, k_shot="1", q_query=15, fold=1, seed=0, episode_index=3, extra={"source_task": None})
    assert episode_labels([record]) == {episode.fingerprint: (episode.classes, episode.query_labels)}
    stored = dict(record, extra={"classes": ["a", "b"], "query_labels": [0, 1]})
    assert episode_labels([stored]) == {episode.fingerprint: (("a", "b"), (0, 1))}
    assert episode_labels([dict(record, fingerprint="0" * 64)]) == {}  # another episode: no class-level CI


def test_folds_sharing_classes_are_resampled_as_dependent():
    """Two folds holding the same classes and results: their average has the CI of one fold (one class draw
    for both); two folds with disjoint classes average to a narrower CI."""
    a = _entry(0.15, 1)
    group = (a, list(a.accuracy), a.labels, None)
    assert grouped_class_ci([group, group]) == class_ci(a, list(a.accuracy), a.labels)
    renamed = {f: (tuple("other-" + c for c in classes), query) for f, (classes, query) in a.labels.items()}
    low, high = grouped_class_ci([group, (a, list(a.accuracy), renamed, None)])
    one_low, one_high = class_ci(a, list(a.accuracy), a.labels)
    assert high - low < 0.85 * (one_high - one_low)
