"""Per-cell Holm and the across-cell tests on a synthetic suite: 60 cells x 10 methods x 100 episodes with a
planted 2-point difference, a planted null over 200 cells, and cells sharing target episodes counted once."""
import numpy as np
import pytest

from fewshot_bench.analysis import compare
from fewshot_bench.analysis.across import across_cells, units
from fewshot_bench.store.schema import COLUMNS
from fewshot_bench.analysis.stats import bootstrap_ci

QUERIES = 75  # 5-way, 15 queries per class: accuracies on the 1/75 lattice
METHODS = [f"m{i}" for i in range(10)]


def _entry(cell, method, accuracy, fingerprints):
    low, high = bootstrap_ci(accuracy, 200)
    row = dict.fromkeys(COLUMNS)
    row.update(method=method, episodes=len(accuracy), episodes_planned=len(accuracy),
               acc_mean=round(float(np.mean(accuracy)), 4), acc_ci95_low=round(low, 4), acc_ci95_high=round(high, 4))
    return compare.Entry(cell=cell, row=row, accuracy=dict(zip(fingerprints, accuracy)), predictions={},
                         fingerprints=frozenset(fingerprints))


def _suite(cells, effect, seed, episodes=100, shared=None):
    """``cells`` cells of ``METHODS`` on ``episodes`` episodes: episode difficulty + method noise (SD 0.02) on
    the 1/75 lattice; m0 gets ``effect`` on top. ``shared``: (cell, earlier cell) pairs drawing the same
    episodes (same fingerprints, same accuracies of every method)."""
    rng = np.random.default_rng(seed)
    entries, drawn = [], {}
    for c in range(cells):
        cell = (f"task{c}", f"task{c}/fold1/5way1shot15q", "minilm")
        source = dict(shared or {}).get(c)
        fingerprints = [f"{source if source is not None else c}-{i}" for i in range(episodes)]
        base = rng.uniform(0.5, 0.8, episodes)
        for m, method in enumerate(METHODS):
            accuracy = drawn[(source, method)] if source is not None else \
                np.rint((base + rng.normal(0, 0.02, episodes) + (effect if m == 0 else 0)) * QUERIES) / QUERIES
            drawn[(c, method)] = accuracy
            entries.append(_entry(cell, method, accuracy, fingerprints))
    compare.annotate(entries, "m1", bootstrap=200)
    return entries


def _significant_pairs(entries):
    return {(e.cell, w, e.method) for e in entries for w in (e.row["beaten_by"] or "").split(";") if w}


@pytest.fixture(scope="module")
def planted():
    return _suite(60, 0.02, seed=0)


def test_a_planted_two_point_difference_is_significant_in_every_cell(planted):
    cells = compare.by_cell(planted)
    assert len(cells) == 60 and all(len(m) == 10 for m in cells.values())
    found = _significant_pairs(planted)
    for cell, members in cells.items():
        for e in members:
            if e.method != "m0":
                assert (cell, "m0", e.method) in found, (cell, e.method)
            assert (e.row["rank_group"] == 1) == (e.method == "m0")
    null_decisions = {cell for cell, winner, _ in found if winner != "m0"}
    assert len(null_decisions) <= 0.05 * 60  # per-cell Holm: family-wise error <= 5% in each cell
    m0 = next(e for e in planted if e.method == "m0")
    assert m0.row["delta_dz"] > 0.5 and m0.row["p_holm"] < 0.05  # d_z beside the Δ against the reference m1


def test_the_across_cell_test_finds_the_planted_method_and_nothing_else(planted):
    suite = across_cells(planted)
    assert suite.units == 60 and suite.merged == []
    assert len(suite.pairs) == 45
    winners = {(p.a, p.b): p.winner for p in suite.pairs}
    assert all(winners[("m0", m)] == "m0" for m in METHODS[1:])
    assert all(w is None for (a, _), w in winners.items() if a != "m0")
    ranks = suite.ranks
    assert sorted(ranks.methods) == METHODS and ranks.methods[0] == "m0" and ranks.cells == 60
    others = ranks.average_ranks[1:]
    assert ranks.average_ranks[0] + ranks.cd < min(others)  # m0 apart in a CD diagram
    assert max(others) - min(others) < ranks.cd and ranks.friedman_p < 1e-6
    # CD = q_0.05(10) / sqrt 2 * sqrt(k (k + 1) / 6N), q_0.05 = 3.164 for 10 methods (Demsar 2006, Table 5)
    assert ranks.cd == pytest.approx(3.164 * np.sqrt(10 * 11 / (6 * 60)), rel=1e-3)


def test_a_planted_null_stays_null_at_the_nominal_rate():
    """200 cells where all 10 methods are equal: per-cell Holm keeps the family-wise error <= 5%; the raw
    per-pair rate stays at or below the nominal 5%; across the cells no method pair is decided."""
    null = _suite(200, 0.0, seed=1)
    cells_with_a_decision = {cell for cell, _, _ in _significant_pairs(null)}
    assert len(cells_with_a_decision) / 200 <= 0.05
    raw = [e.row["p_value"] for e in null if e.row["p_value"] is not None]  # m1 (reference) vs 9 others
    assert len(raw) == 1800 and np.mean(np.array(raw) < 0.05) <= 0.055
    assert all(p.winner is None for p in across_cells(null).pairs)


def test_cells_sharing_target_episodes_count_once():
    """Cell 3 draws exactly cell 1's episodes (e.g. clinc150->hwu64 and hwu64 fold 1): detected from the
    fingerprints, one unit."""
    entries = _suite(4, 0.02, seed=2, episodes=20, shared={3: 1})
    assert [len(u) for u in units(entries)] == [1, 2, 1]
    suite = across_cells(entries)
    assert suite.units == 3 and suite.merged == [["task1/fold1/5way1shot15q", "task3/fold1/5way1shot15q"]]
    assert all(p.units == 3 for p in suite.pairs) and suite.ranks.cells == 3
