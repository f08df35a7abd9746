"""The compact outputs: average ranks and critical difference, the pivot table, the summary figure's size."""
import pytest
from PIL import Image

from fewshot_bench.cli import main
from fewshot_bench.store.schema import COLUMNS
from fewshot_bench.analysis.ranks import choose_design, critical_difference, rank_summary, row_scores
from fewshot_bench.report.views import pivot_table, setting_groups
from fewshot_bench.report.summary_figure import summary_figure

from helpers import build_store


def row(method, fold, acc, task="t", delta=None, p_holm=None, flags=None, n_way=5):
    setting = f"{task}/fold{fold}/{n_way}way1shot15q"
    return {**dict.fromkeys(COLUMNS), "method": method, "protocol": "target-only", "backbone": "minilm",
            "task": task, "n_way": n_way, "k_shot": "1", "q_query": 15, "fold": fold, "setting": setting,
            "episodes": 10, "acc_mean": acc, "delta_vs_ref": delta, "p_holm": p_holm, "flags": flags, "rank_group": 1}


def test_critical_difference_matches_demsars_table():
    # Demsar (2006), Table 5(a): q_0.05 = 2.343 (k = 3), 2.569 (k = 4), 3.164 (k = 10)
    for k, q in ((3, 2.343), (4, 2.569), (10, 3.164)):
        assert critical_difference(k, 12) == pytest.approx(q * ((k * (k + 1)) / (6 * 12)) ** 0.5, abs=2e-3)


def test_average_ranks_over_the_complete_design():
    rows = [row(m, fold, acc) for fold in range(1, 6) for m, acc in (("a", 0.9), ("b", 0.8), ("c", 0.7))]
    rows += [row("d", 1, 0.95), row("c", 6, 0.5), row("e", 6, 0.6)]  # d in one cell only; fold 6 lacks a, b
    assert choose_design(row_scores(rows))[0] == ["a", "b", "c"] and len(choose_design(row_scores(rows))[1]) == 5
    summary = rank_summary(row_scores(rows))
    assert summary.methods == ["a", "b", "c"] and summary.average_ranks == [1.0, 2.0, 3.0] and summary.cells == 5
    assert summary.cd == pytest.approx(2.343 * (12 / 30) ** 0.5, abs=2e-3)
    assert summary.friedman_p == pytest.approx(0.006738, abs=1e-5)  # chi2 = 10 on 2 df
    assert summary.groups == [(0, 1), (1, 2)]  # a-c differ by 2 > CD; neighbours do not
    ties = [row(m, fold, 0.5) for fold in (1, 2) for m in ("a", "b")]
    assert rank_summary(row_scores(ties)).average_ranks == [1.5, 1.5] and rank_summary(row_scores(ties)).friedman_p is None
    assert rank_summary(row_scores([row("a", 1, 0.5), row("b", 1, 0.4)])) is None  # no two cells


def test_setting_groups_average_each_method_over_the_same_cells():
    rows = [row(m, 1, acc) for m, acc in (("a", 0.9), ("b", 0.8), ("c", 0.95))]
    rows += [row(m, fold, 0.7 if m == "a" else 0.6) for fold in (2, 3) for m in ("a", "b")]
    groups = setting_groups(rows)
    assert sorted(groups) == ["t/5way1shot15q f1", "t/5way1shot15q f2-3"]
    rows[0].update(delta_vs_ref=0.1, p_holm=0.01)
    table = pivot_table(rows, rank_summary(row_scores(rows)))
    assert table[0] == "| method | t/5way1shot15q f1 | t/5way1shot15q f2-3 |"
    lines = {line.split(" | ")[0][2:]: line for line in table[2:]}
    assert "| 0.900 +0.100 ▲1 | **0.700** /2 |" in lines["a"] and "**0.950**" in lines["c"]
    assert lines["c"].endswith("|  |")  # c did not run on folds 2-3


def test_summary_figure_stays_under_2000_px_at_the_committed_size():
    tasks = [f"task{i}" for i in range(61)]
    methods = [f"method{i}" for i in range(13)]
    rows = [row(m, 1, 0.5 + 0.01 * j, task=t, delta=0.01 * j - 0.05, p_holm=0.01 if j % 3 else 0.5)
            for t in tasks for j, m in enumerate(methods)]
    fig = summary_figure(rows, rank_summary(row_scores(rows)), "method0")
    width, height = fig.get_size_inches() * 110
    assert height < 2000 and width < 3000


def test_the_leaderboard_command_writes_the_summary_and_a_forest_plot_per_cell(tmp_path, capsys):
    store, out = tmp_path / "s.sqlite", tmp_path / "board" / "lb.csv"
    build_store(store)
    stale = tmp_path / "board" / "lb_cells" / "gone_cell.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    assert main(["leaderboard", "--store", str(store), "--out", str(out), "--bootstrap", "200"]) == 0
    plots = sorted(p.name for p in stale.parent.iterdir())
    assert plots == ["demo_fold1_5way5shot15q_bert.png", "demo_fold1_5way5shot15q_minilm.png",
                     "other_demo_fold1_5way5shot15q_minilm.png"]  # one per cell, the stale one removed
    summary = (tmp_path / "board" / "lb_summary.md").read_text()
    assert "![summary](lb.png)" in summary and "| method | demo/5way5shot15q f1 (+bert) |" in summary
    assert "## Environment" in summary
    with Image.open(tmp_path / "board" / "lb.png") as image:
        assert image.size[1] < 2000
