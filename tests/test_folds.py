"""Fold averages: only settings present in several folds, fold-level t intervals, written beside the CSV."""
import csv

import pytest
from scipy import stats

from fewshot_bench.cli import main
from fewshot_bench.analysis.folds import fold_summary, without_fold
from fewshot_bench.store.results import ResultsStore

from helpers import record


def test_without_fold():
    assert without_fold("banking77/fold3/5way1shot15q") == "banking77/5way1shot15q"
    assert without_fold("a->b/fold12/validation/allway5shot15q") == "a->b/validation/allway5shot15q"


def _folded_store(path, folds=(1, 2, 3)):
    """full_ft at 0.60 + 0.05 f and protonet 0.02 f below it in every episode of fold f; one single-fold cell."""
    with ResultsStore(path) as store:
        for fold in folds:
            setting = f"demo/fold{fold}/5way1shot15q"
            for i in range(10):
                common = dict(setting=setting, fold=fold, episode_index=i, k_shot=1)
                store.write_episode(record(method="full_ft", accuracy=0.60 + 0.05 * fold, **common))
                store.write_episode(record(method="protonet", config_hash="cfg1", accuracy=0.60 + 0.03 * fold,
                                           **common))
        store.write_episode(record(method="full_ft", setting="demo/fold1/10way1shot15q", n_way=10, k_shot=1))


def test_fold_summary_averages_fold_means_with_a_t_interval(tmp_path):
    _folded_store(tmp_path / "s.sqlite")
    out = tmp_path / "lb.csv"
    assert main(["leaderboard", "--store", str(tmp_path / "s.sqlite"), "--out", str(out), "--bootstrap", "200"]) == 0
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "lb_folds.csv").open())}
    assert set(rows) == {"full_ft", "protonet"}  # the 10-way cell has one fold: not summarised
    proto = rows["protonet"]
    assert proto["setting"] == "demo/5way1shot15q" and proto["folds"] == "3" and proto["episodes"] == "30"
    means = [0.63, 0.66, 0.69]
    half = stats.t.ppf(0.975, 2) * 0.03 / 3 ** 0.5  # SD of the fold means is 0.03
    assert float(proto["acc_mean"]) == pytest.approx(0.66, abs=1e-4)
    assert float(proto["acc_ci95_low"]) == pytest.approx(sum(means) / 3 - half, abs=1e-4)
    deltas = [-0.02, -0.04, -0.06]
    assert float(proto["delta_vs_ref"]) == pytest.approx(sum(deltas) / 3, abs=1e-4)
    assert float(proto["delta_ci95_high"]) == pytest.approx(-0.04 + stats.t.ppf(0.975, 2) * 0.02 / 3 ** 0.5, abs=1e-4)
    assert "## Averaged over folds" in (tmp_path / "lb.md").read_text()


def test_one_fold_gives_no_summary():
    assert fold_summary([dict(setting="t/fold1/5way1shot15q", backbone="b", method="m", acc_mean=0.5, fold=1,
                              delta_vs_ref=None, flags=None, protocol="target-only", task="t", n_way=5, k_shot="1",
                              q_query=15, episodes=10, ref_method=None)]) == []


def test_a_reference_missing_from_folds_gives_no_reference_not_a_crash(tmp_path, capsys):
    """The reference in one fold only: its cells compare, the other folds' cells say "no reference", and a
    difference over one fold has no t CI, so the fold summary leaves it empty."""
    path = tmp_path / "s.sqlite"
    with ResultsStore(path) as store:
        for fold in (1, 2, 3):
            for i in range(6):
                common = dict(setting=f"demo/fold{fold}/5way1shot15q", fold=fold, episode_index=i, k_shot=1)
                store.write_episode(record(method="protonet", config_hash="cfg1", accuracy=0.5 + 0.05 * fold, **common))
                if fold == 1:
                    store.write_episode(record(method="full_ft", accuracy=0.7, **common))
    out = tmp_path / "lb.csv"
    assert main(["leaderboard", "--store", str(path), "--out", str(out), "--bootstrap", "100"]) == 0
    assert main(["validate", str(out)]) == 0
    proto = next(r for r in csv.DictReader((tmp_path / "lb_folds.csv").open()) if r["method"] == "protonet")
    assert proto["delta_folds"] == "1" and proto["delta_vs_ref"] == proto["delta_ci95_low"] == ""
    markdown = (tmp_path / "lb.md").read_text()
    assert "| no reference |" in markdown and "| reference |" in markdown
    assert "-0.1500 [" in markdown  # fold 1: protonet 0.55 vs full_ft 0.70 on every episode
