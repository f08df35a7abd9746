"""Paired statistics on hand-made per-episode data with known answers: sign-flip test, Holm, paired CIs,
rank groups, flags, nested episode sets and power."""
import itertools
import math

import numpy as np
import pytest

from fewshot_bench.cli import main
from fewshot_bench.report.leaderboard import aggregate, write_csv
from fewshot_bench.analysis.stats import (_enumerated_p, detectable_difference, episodes_needed, holm, lattice, min_episodes,
                                 sign_flip_p)
from fewshot_bench.store.results import ResultsStore
from fewshot_bench.report.validate_csv import validate_csv
from helpers import record


def _store(path, methods, planned=None):
    """``methods``: {name: [(accuracy, predictions), ...] per episode}; ``planned``: episodes of the run config."""
    with ResultsStore(path) as store:
        run_id = store.start_run({"episodes": planned, "limit": None}, device="cpu", seed=0) if planned else "run0"
        for name, episodes in methods.items():
            for index, (accuracy, predictions) in enumerate(episodes):
                store.write_episode(record(run_id=run_id, method=name, episode_index=index, accuracy=accuracy,
                                           predictions=predictions))
    return path


def _rows(path, **kwargs):
    """Leaderboard rows by method; their CSV must pass validate (its rules agree with the statistics)."""
    rows = aggregate(path, bootstrap=1000, **kwargs)
    write_csv(rows, path.with_suffix(".csv"))
    assert validate_csv(path.with_suffix(".csv")) == []
    return {r["method"]: r for r in rows}


def test_sign_flip_is_exact_on_small_samples():
    rng = np.random.default_rng(3)
    differences = np.round(rng.normal(0.02, 0.05, 10) * 75) / 75
    differences[[2, 7]] = 0  # zero differences carry no sign
    nonzero = np.abs(differences[differences != 0])
    brute = np.mean([abs(np.dot(signs, nonzero)) >= abs(nonzero @ np.sign(differences[differences != 0])) - 1e-12
                     for signs in itertools.product([-1, 1], repeat=len(nonzero))])
    assert sign_flip_p(differences) == pytest.approx(brute)
    assert sign_flip_p([0.1] * 8) == pytest.approx(2 / 2 ** 8)
    assert sign_flip_p([0.0] * 5) == 1.0


def _brute_p(differences):
    d = np.asarray([x for x in differences if x != 0])
    return np.mean([abs(np.dot(signs, np.abs(d))) >= abs(d.sum()) - 1e-12
                    for signs in itertools.product([-1, 1], repeat=len(d))])


@pytest.mark.parametrize("seed", range(6))
def test_lattice_sign_flip_equals_brute_force_and_the_enumerator(seed):
    """Accuracy differences on 1/(N*Q): the convolution equals every sign pattern counted, and the two-halves
    enumerator (the off-lattice path) on up to 30 differences."""
    rng = np.random.default_rng(seed)
    n_q = [10, 75, 150, 750][seed % 4]
    small = rng.integers(-n_q // 5, n_q // 5 + 1, 12) / n_q
    assert lattice(small) is not None
    assert sign_flip_p(small) == pytest.approx(_brute_p(small), rel=1e-12)
    large = (rng.integers(0, n_q + 1, 30) - rng.integers(0, n_q + 1, 30)) / n_q
    assert sign_flip_p(large) == pytest.approx(_enumerated_p(large[large != 0]), rel=1e-9)


def test_sign_flip_has_no_floor():
    assert sign_flip_p([1 / 75] * 100) == 2 / 2 ** 100  # exactly: no Monte-Carlo floor
    assert sign_flip_p([-0.2] * 60 + [0.0] * 40) == 2 / 2 ** 60
    assert 0 < sign_flip_p(np.arange(1, 101) / 75) < 1e-17


def test_sign_flip_off_the_lattice():
    rng = np.random.default_rng(1)
    irrational = rng.normal(0.01, 0.05, 14) * np.pi
    assert lattice(irrational) is None
    assert sign_flip_p(irrational) == pytest.approx(_brute_p(irrational), rel=1e-12)
    many = rng.normal(0.01, 0.05, 200) * np.pi  # rounded onto a 2^20 grid: agrees with a fine-resolution DP
    assert sign_flip_p(many) == pytest.approx(sign_flip_p(np.round(many, 5)), rel=1e-3)


def test_holm_on_a_known_list():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.2, 0.9]) == pytest.approx([1.0, 0.6, 1.0])
    assert holm([0.001]) == [0.001]


def test_planted_difference_is_found_and_identical_methods_share_a_group(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.9, 100)
    noise = rng.normal(0, 0.03, 100)
    path = _store(tmp_path / "planted.sqlite", {
        "full_ft": [(b, [0, 1, 2]) for b in base],
        "better": [(b + 0.03 + e, [0, 1, 1]) for b, e in zip(base, noise)],
        "twin": [(b, [0, 1, 2]) for b in base]})
    rows = _rows(path)
    better, twin, full_ft = rows["better"], rows["twin"], rows["full_ft"]
    assert better["delta_vs_ref"] == pytest.approx(0.03 + noise.mean(), abs=1e-4)
    assert 0 < better["delta_ci95_low"] < 0.03 < better["delta_ci95_high"]
    assert better["p_holm"] < 0.05 and better["rank_group"] == 1
    assert twin["p_value"] == 1.0 and twin["p_holm"] == 1.0 and twin["delta_vs_ref"] == 0
    assert (full_ft["rank_group"], twin["rank_group"]) == (2, 2)
    assert full_ft["beaten_by"] == twin["beaten_by"] == "better"
    assert "indistinguishable:twin(100.0%)" in full_ft["flags"] and "indistinguishable:full_ft(100.0%)" in twin["flags"]
    assert "indistinguishable" not in (better["flags"] or "")  # 2 of 3 predictions agree


def test_saturated_cells(tmp_path):
    high = _rows(_store(tmp_path / "high.sqlite", {"full_ft": [(0.98, [0])] * 5, "lora": [(0.99, [1])] * 5}))
    assert all("saturated" in r["flags"].split(";") for r in high.values())
    spread = {"full_ft": [(a, [0]) for a in (0.5, 0.9, 0.6, 0.8)], "lora": [(a, [1]) for a in (0.51, 0.9, 0.6, 0.8)]}
    narrow = _rows(_store(tmp_path / "narrow.sqlite", spread))  # 0.0025 apart, CI half-widths ~0.15
    assert narrow["lora"]["flags"].split(";") == ["narrow-spread"]  # not at ceiling: not saturated
    wide = _rows(_store(tmp_path / "wide.sqlite", {"full_ft": [(0.5, [0])] * 5, "lora": [(0.9, [1])] * 5}))
    assert wide["lora"]["flags"] is None


def test_a_nested_episode_set_is_compared_on_its_common_episodes(tmp_path):
    full = [(0.5 + 0.02 * i, [0]) for i in range(20)]
    path = _store(tmp_path / "nested.sqlite", {"full_ft": full, "short": [(a + 0.1, p) for a, p in full[:10]]},
                  planned=20)
    rows = _rows(path)
    short, full_ft = rows["short"], rows["full_ft"]
    assert short["episodes"] == 10 and short["episodes_planned"] == 20
    assert short["acc_mean"] == full_ft["acc_mean"] == pytest.approx(0.69)  # unpaired means over 10 vs 20 episodes
    assert short["delta_vs_ref"] == pytest.approx(0.1)  # paired, on the 10 common episodes
    assert short["p_value"] == pytest.approx(2 / 2 ** 10, abs=1e-6) and full_ft["beaten_by"] == "short"
    assert {"mixed-episodes", "unfinished(10/20)"} <= set(short["flags"].split(";"))
    assert "unfinished" not in full_ft["flags"] and "mixed-episodes" in full_ft["flags"]


def test_a_cell_without_the_reference_says_so(tmp_path):
    rows = _rows(_store(tmp_path / "noref.sqlite", {"lora": [(0.5, [0])] * 3, "protonet": [(0.6, [1])] * 3}))
    for row in rows.values():
        assert row["ref_method"] is None and row["delta_vs_ref"] is None and row["p_holm"] is None
        assert "no-reference" in row["flags"]


def test_power_formulas():
    assert episodes_needed(0.05, 0.01, power=0.8) == math.ceil(((1.959964 + 0.841621) * 5) ** 2) == 197
    assert detectable_difference(0.05, 197) == pytest.approx(0.01, rel=0.01)
    assert episodes_needed(0.05, 0.02) < episodes_needed(0.05, 0.01) < episodes_needed(0.05, 0.01, power=0.9)


def test_power_command_on_a_planted_sd(tmp_path, capsys):
    differences = [0.02 + 0.05 * (-1) ** i for i in range(20)]
    sd = float(np.std(differences, ddof=1))
    path = _store(tmp_path / "power.sqlite", {"full_ft": [(0.5, [0])] * 20,
                                              "lora": [(0.5 + d, [0]) for d in differences]})
    assert main(["power", "--store", str(path), "--delta", "0.01,0.05", "--power", "0.8"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "lora > full_ft" in l)
    assert line.split()[-4:] == ["20", f"{sd:.4f}", str(episodes_needed(sd, 0.01)), str(episodes_needed(sd, 0.05))]
    assert "normal approximation" in out
    rows = _rows(path)
    assert rows["lora"]["detectable_diff"] == pytest.approx(detectable_difference(sd, 20), abs=1e-4)


@pytest.mark.parametrize("argv, message", [(["--delta", "0.01,x"], "--delta expects"),
                                           (["--delta", "2"], "--delta values must be in (0, 1]"),
                                           (["--power", "1.5"], "--power must be between 0 and 1")])
def test_power_bad_input(tmp_path, capsys, argv, message):
    path = _store(tmp_path / "p.sqlite", {"full_ft": [(0.5, [0])] * 3, "lora": [(0.6, [0])] * 3})
    assert main(["power", "--store", str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_compare_command_pairs_named_methods_with_holm(tmp_path, capsys):
    from fewshot_bench.cli import main
    from fewshot_bench.store.results import ResultsStore

    from helpers import record

    store_path = tmp_path / "s.sqlite"
    with ResultsStore(store_path) as store:
        for i in range(12):
            store.write_episode(record(method="full_ft", episode_index=i, accuracy=0.60 + 0.01 * (i % 4)))
            store.write_episode(record(method="full_ft[tuned]", config_hash="cfg1", episode_index=i,
                                       accuracy=0.65 + 0.01 * (i % 4)))
    assert main(["compare", "--store", str(store_path), "--pair", "full_ft[tuned]=full_ft", "--bootstrap", "200"]) == 0
    line = capsys.readouterr().out.splitlines()[-1].split()
    # 12 episodes all +0.05: exact sign-flip p = 2 / 2^12; one comparison, so Holm leaves it
    assert line[2:5] == ["full_ft[tuned]", "full_ft", "12"] and "+0.0500" in line
    assert float(line[-2]) == pytest.approx(2 / 2 ** 12, rel=1e-3) and float(line[-1]) == float(line[-2])
    assert main(["compare", "--store", str(store_path), "--pair", "full_ft[tund]=full_ft"]) == 2
    assert "did you mean 'full_ft[tuned]'" in capsys.readouterr().err


def test_a_duplicated_method_cannot_move_a_rank_group(tmp_path):
    """A 1-NN file identical to protonet (same predictions, same accuracy): linear_probe, beaten by both, stays
    in rank group 2 (the clones count once), and its beaten_by still names both."""
    rng = np.random.default_rng(5)
    proto = np.rint(rng.uniform(0.6, 0.9, 40) * 75) / 75
    episodes = {"protonet": [(a, [0, 1, i % 3]) for i, a in enumerate(proto)],
                "one_nn": [(a, [0, 1, i % 3]) for i, a in enumerate(proto)],
                "linear_probe": [(a - 4 / 75, [0, 2, 2]) for a in proto]}
    rows = _rows(_store(tmp_path / "clone.sqlite", episodes), reference="protonet")
    assert rows["linear_probe"]["beaten_by"] == "one_nn;protonet" and rows["linear_probe"]["rank_group"] == 2
    assert rows["one_nn"]["rank_group"] == rows["protonet"]["rank_group"] == 1


def test_narrow_spread_is_never_set_beside_a_significant_difference(tmp_path):
    """Two methods 1/75 apart on every one of 40 noisy episodes: the spread is far below the CI half-width,
    yet the paired test is decisive, so the cell is not narrow-spread."""
    rng = np.random.default_rng(6)
    base = np.rint(rng.uniform(0.3, 0.9, 40) * 75) / 75
    rows = _rows(_store(tmp_path / "n.sqlite", {"full_ft": [(a, [0]) for a in base],
                                                "lora": [(a + 1 / 75, [1]) for a in base]}))
    assert rows["lora"]["p_holm"] < 0.05 and rows["full_ft"]["beaten_by"] == "lora"
    assert "narrow-spread" not in (rows["lora"]["flags"] or "")


def test_power_never_goes_below_the_sign_flip_minimum():
    assert min_episodes(0.05) == 6 and sign_flip_p([0.1] * 6) < 0.05 <= sign_flip_p([0.1] * 5)
    assert episodes_needed(0.001, 0.5) == 6  # the normal approximation would say 1
    assert detectable_difference(0.05, 5) is None and detectable_difference(0.05, 6) is not None


def test_pairs_split_at_the_equals_sign_outside_a_label_s_overrides():
    from fewshot_bench.analysis.pairs import parse_pairs
    from fewshot_bench.core.errors import UserError

    assert parse_pairs(["maml(head_init=zero,inner_lr=0.3)=maml", "sgg[tuned]=sgg(lr=0.1)"]) == [
        ("maml(head_init=zero,inner_lr=0.3)", "maml"), ("sgg[tuned]", "sgg(lr=0.1)")]
    with pytest.raises(UserError, match="expects METHOD=OTHER"):
        parse_pairs(["maml(head_init=zero)"])
