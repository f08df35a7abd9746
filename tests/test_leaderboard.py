"""Leaderboard: bootstrap CI, rank groups from paired tests, comparison with the reference, overall, CSV safety, CLI."""
import csv

import numpy as np
import pytest

from fewshot_bench.analysis.across import cell_units, units
from fewshot_bench.cli import main
from fewshot_bench.store.schema import COLUMNS, OVERALL_COLUMNS
from fewshot_bench.report.forest import leaderboard_figure
from fewshot_bench.report.leaderboard import aggregate, annotated_entries, load_entries, overall, write_csv
from fewshot_bench.analysis.pairs import pair_table
from fewshot_bench.analysis.stats import bootstrap_ci
from fewshot_bench.store.results import ResultsStore

from helpers import SETTING, build_store, record


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "results.sqlite"
    build_store(path)
    return path


def _by_method(rows):
    return {row["method"]: row for row in rows}


def test_ci_contains_mean_and_is_deterministic(store_path):
    rows = aggregate(store_path, bootstrap=2000, seed=0)
    assert rows == aggregate(store_path, bootstrap=2000, seed=0)
    for row in rows:
        assert list(row) == list(COLUMNS)
        assert row["acc_ci95_low"] <= row["acc_mean"] <= row["acc_ci95_high"]
    full_ft = _by_method(rows)["full_ft"]
    assert full_ft["acc_ci95_low"] < full_ft["acc_mean"] < full_ft["acc_ci95_high"]
    assert bootstrap_ci([0.7]) == (0.7, 0.7)


def test_ci_does_not_depend_on_the_order_episodes_were_written(tmp_path):
    accuracies = [0.5, 0.9, 0.7, 0.6, 1.0, 0.8]
    rows = []
    for name, order in (("forward", range(6)), ("shuffled", [3, 0, 5, 1, 4, 2])):  # e.g. two torchrun ranks
        with ResultsStore(tmp_path / f"{name}.sqlite") as store:
            for i in order:
                store.write_episode(record(episode_index=i, accuracy=accuracies[i]))
        rows.append(aggregate(tmp_path / f"{name}.sqlite", bootstrap=500, seed=0))
    assert rows[0] == rows[1]


def test_rank_groups_span_protocols_and_compare_only_nested_episode_sets(store_path):
    rows = _by_method(aggregate(store_path, bootstrap=200))
    full_ft, protonet, lora, maml = (rows[m] for m in ("full_ft", "protonet", "lora", "maml"))
    evil = rows['=HYPERLINK("http://evil")']
    # one cell, all protocols together: every pair differs on every common episode, so all 6 comparisons survive Holm
    assert [r["rank_group"] for r in (full_ft, protonet, maml, evil)] == [1, 2, 3, 4]
    assert [r["rank"] for r in (full_ft, protonet, maml, evil)] == [1, 2, 3, 4]
    assert evil["beaten_by"] == ';'.join(sorted(["full_ft", "protonet", "maml"]))
    assert lora["episode_set_sha256"] != full_ft["episode_set_sha256"]
    assert lora["rank_group"] == 1 and lora["delta_vs_ref"] is None  # other seed: better, but not comparable
    anil = rows["anil"]  # same episodes, but another setting (cross-dataset): another cell
    assert anil["rank_group"] == 1 and (anil["task"], maml["task"]) == ("other->demo", "demo")
    assert "no-reference" in anil["flags"] and anil["ref_method"] is None
    assert rows["-x"]["rank_group"] == 1  # other backbone


def test_comparison_with_the_reference(store_path):
    rows = _by_method(aggregate(store_path, bootstrap=500))
    full_ft, protonet, maml = rows["full_ft"], rows["protonet"], rows["maml"]
    assert full_ft["ref_method"] == "full_ft" and full_ft["delta_vs_ref"] is None  # the reference itself
    assert protonet["delta_vs_ref"] == pytest.approx(-0.2)  # 9 common ok episodes: -(0.1 + 0.02 i), i = 1..9
    assert protonet["delta_ci95_low"] <= -0.2 <= protonet["delta_ci95_high"] < 0
    assert protonet["p_value"] == pytest.approx(2 / 2 ** 9, abs=1e-6)  # exact sign flip: all 9 differences negative
    assert protonet["p_holm"] == pytest.approx(6 * 2 / 2 ** 10, abs=1e-6)  # Holm step-down over the cell's 6 comparisons
    assert maml["delta_vs_ref"] == pytest.approx(-0.535) and maml["p_value"] == pytest.approx(2 / 2 ** 10, abs=1e-6)


def test_failed_episodes_and_missing_gradients(store_path):
    protonet = _by_method(aggregate(store_path, bootstrap=200))["protonet"]
    assert protonet["episodes"] == 10 and protonet["failed_episodes"] == 1
    assert protonet["acc_mean"] == pytest.approx(0.55)  # mean of the 9 ok episodes
    assert protonet["grad_dir_consistency"] is None and protonet["sec_per_episode"] == 1.5


def test_csv_neutralises_formulas_keeps_numbers(store_path, tmp_path):
    rows = aggregate(store_path, bootstrap=200)
    out = tmp_path / "lb.csv"
    write_csv(rows, out)
    with open(out, newline="") as handle:
        table = list(csv.reader(handle))
    assert tuple(table[0]) == COLUMNS
    cells = {line[1]: dict(zip(COLUMNS, line)) for line in table[1:]}
    evil = cells['\'=HYPERLINK("http://evil")']
    assert evil["grad_dir_consistency"] == "-0.25"
    assert cells["'-x"]["backbone"] == "'+bert"
    assert cells["protonet"]["grad_dir_consistency"] == ""
    assert not any(cell.startswith(("=", "+", "@")) for line in table for cell in line)


def test_overall(store_path):
    summary = {r["method"]: r for r in overall(aggregate(store_path, bootstrap=200))}
    full_ft, protonet = summary["full_ft"], summary["protonet"]
    assert list(full_ft) == list(OVERALL_COLUMNS)
    assert full_ft["acc_mean"] == pytest.approx(0.735) and full_ft["mean_rank_group"] == 1
    assert full_ft["acc_ci95_low"] < 0.735 < full_ft["acc_ci95_high"]
    assert (protonet["wins"], protonet["ties"], protonet["losses"]) == (0, 0, 1)
    assert full_ft["wins"] is None  # the reference is not compared with itself
    assert (full_ft["cells"], full_ft["cells_total"], full_ft["flags"]) == (1, 2, "incomplete")  # no anil cell


def test_cli_writes_all_outputs(store_path, tmp_path, capsys):
    out = tmp_path / "board" / "leaderboard.csv"
    assert main(["leaderboard", "--store", str(store_path), "--out", str(out), "--bootstrap", "500"]) == 0
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard_overall.csv", "leaderboard.png"):
        assert (out.parent / name).stat().st_size > 0
    markdown = (out.parent / "leaderboard.md").read_text()
    assert "How to read" in markdown and "detectable difference" in markdown and "chance 0.20" in markdown
    assert "protonet < full_ft" in markdown  # significant after Holm, in the findings
    assert str(out) in capsys.readouterr().out


def test_cli_reference_flag(store_path, tmp_path, capsys):
    out = tmp_path / "leaderboard.csv"
    assert main(["leaderboard", "--store", str(store_path), "--out", str(out), "--bootstrap", "200",
                 "--reference", "protonet"]) == 0
    with open(out, newline="") as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle)}
    assert rows["full_ft"]["ref_method"] == "protonet" and float(rows["full_ft"]["delta_vs_ref"]) == pytest.approx(0.2)
    assert main(["leaderboard", "--store", str(store_path), "--out", str(tmp_path / "typo.csv"),
                 "--reference", "protonett"]) == 2
    err = capsys.readouterr().err
    assert "--reference 'protonett'" in err and "protonet" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "typo.csv").exists()


def test_figure_is_a_forest_plot_per_cell(store_path):
    rows = aggregate(store_path, bootstrap=200)
    saturated = [{**r, "task": "easy", "flags": "saturated"} for r in rows if r["task"] == "demo"]
    fig = leaderboard_figure(rows + saturated)
    titles = [axis.get_title() for axis in fig.axes]
    demo = titles.index("demo/fold1 5-way 5-shot, minilm, 10 ep.\nchance 0.20, full_ft 0.735")
    assert "demo/fold1 5-way 5-shot, +bert, 10 ep.\nchance 0.20" in titles  # several backbones: named in the title
    easy = next(axis for axis in fig.axes if axis.get_title().startswith("easy"))
    assert easy.get_title().endswith("(saturated)") and easy.get_facecolor()[:3] != fig.axes[demo].get_facecolor()[:3]
    compared = [r for r in rows if r["task"] == "demo" and r["backbone"] == "minilm" and r["delta_vs_ref"] is not None]
    assert len(fig.axes[demo].lines) >= len(compared) + 1  # one point per compared method + the zero line
    no_ref = next(axis for axis in fig.axes if axis.get_title().startswith("other->demo"))
    assert "full_ft not in this cell" in [t.get_text() for t in no_ref.texts]


def test_cli_missing_or_empty_store(tmp_path, capsys):
    assert main(["leaderboard", "--store", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "none.sqlite" in capsys.readouterr().err
    ResultsStore(tmp_path / "empty.sqlite").close()
    assert main(["leaderboard", "--store", str(tmp_path / "empty.sqlite"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no episodes in" in capsys.readouterr().err


def test_sgg_term_activity_is_aggregated_per_row(tmp_path):
    from fewshot_bench.methods.sgg.method import SGG

    store_path = tmp_path / "s.sqlite"
    with ResultsStore(store_path) as store:
        for i in range(4):
            store.write_episode(record(method="sgg", episode_index=i, figures=dict(
                sgg_mag_active=0.25 * i, sgg_align_active=0.5, sgg_dir_angle=10.0 + i, sgg_step_angle=None)),
                SGG.figures)
            store.write_episode(record(method="full_ft", config_hash="cfg1", episode_index=i))
    rows = {r["method"]: r for r in aggregate(store_path, bootstrap=100)}
    assert (rows["sgg"]["sgg_mag_active"], rows["sgg"]["sgg_align_active"], rows["sgg"]["sgg_dir_angle"]) == \
        (0.375, 0.5, 11.5)
    assert rows["full_ft"]["sgg_mag_active"] is None and rows["sgg"]["sgg_step_angle"] is None


TWIN = "other->" + SETTING


def _twin_store(path):
    """full_ft > protonet on demo fold 1 and on other->demo (the same episodes, the same accuracies); equal on
    demo fold 2; the fold 1 episodes again on backbone bert."""
    with ResultsStore(path) as store:
        for i in range(10):
            for setting in (SETTING, TWIN):
                fingerprint = record(episode_index=i)["fingerprint"]
                store.write_episode(record(method="full_ft", setting=setting, fingerprint=fingerprint, episode_index=i,
                                           accuracy=0.9))
                store.write_episode(record(method="protonet", setting=setting, fingerprint=fingerprint,
                                           episode_index=i, accuracy=0.5 + 0.01 * i))
            for method, accuracy in (("full_ft", 0.6 + 0.01 * i), ("protonet", 0.6 + 0.01 * i)):
                store.write_episode(record(method=method, setting="demo/fold2/5way5shot15q", fold=2, episode_index=i,
                                           accuracy=accuracy))
                store.write_episode(record(method=method, backbone="bert", episode_index=i, accuracy=accuracy))
    return path


def test_overall_counts_cells_sharing_target_episodes_once(tmp_path):
    """other->demo draws exactly demo fold 1's episodes (like clinc150->hwu64 and hwu64 fold 1) and its target-only
    rows repeat them; demo fold 2 is another unit. Counted twice, protonet's mean would be (2 A + C) / 3 and its
    losses 2; counted once: (A + C) / 2 and 1 loss. The same episodes on another backbone stay their own unit."""
    path = _twin_store(tmp_path / "dup.sqlite")
    entries = annotated_entries(path, bootstrap=200)
    rows = [e.row for e in entries]
    assert sorted(map(len, units(entries))) == [1, 1, 2]
    for table in (overall(rows), overall(rows, cell_units(entries))):  # from the rows' episode sets; from fingerprints
        protonet = {(r["method"], r["backbone"]): r for r in table}[("protonet", "minilm")]
        a, c = 0.545, 0.645
        assert (protonet["cells"], protonet["cells_total"], protonet["units"], protonet["units_total"]) == (3, 3, 2, 2)
        assert protonet["acc_mean"] == pytest.approx((a + c) / 2, abs=1e-4) != pytest.approx((2 * a + c) / 3, abs=1e-3)
        assert (protonet["wins"], protonet["ties"], protonet["losses"]) == (0, 1, 1)
        assert protonet["mean_rank_group"] == 1.5  # (2 + 1) / 2; counted twice: (2 + 2 + 1) / 3
        cells = {r["setting"]: r for r in rows if r["method"] == "protonet" and r["backbone"] == "minilm"}
        half = [cells[s]["acc_ci95_high"] - cells[s]["acc_mean"] for s in (SETTING, "demo/fold2/5way5shot15q")]
        assert protonet["acc_ci95_high"] - protonet["acc_mean"] == pytest.approx(np.hypot(*half) / 2, abs=2e-4)
        assert {(r["method"], r["units"], r["units_total"]) for r in table if r["backbone"] == "bert"} == \
            {("full_ft", 1, 1), ("protonet", 1, 1)}


def test_compare_counts_a_comparison_repeated_on_the_same_episodes_once(tmp_path, capsys):
    """protonet=full_ft in demo fold 1 and in other->demo: the same 10 differences, one member of the Holm family
    (with demo fold 2 and bert: 3 comparisons, not 4)."""
    path = _twin_store(tmp_path / "dup.sqlite")
    table = {(r["setting"], r["backbone"]): r
             for r in pair_table(load_entries(path, bootstrap=1), [("protonet", "full_ft")], 100)}
    first, repeat = table[(SETTING, "minilm")], table[(TWIN, "minilm")]
    assert repeat["same_as"] == SETTING and first["same_as"] is None and table[(SETTING, "bert")]["same_as"] is None
    assert first["p"] == pytest.approx(2 / 2 ** 10)
    assert repeat["p_holm"] == first["p_holm"] == pytest.approx(3 * 2 / 2 ** 10)  # Holm over 3 (the others: p = 1)
    assert main(["compare", "--store", str(path), "--pair", "protonet=full_ft", "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "Holm over these 3 comparisons, 1 repeating another on the same episodes counted once (=)" in out
    assert f"(= {SETTING})" in out
