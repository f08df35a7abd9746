"""Source pools that share classes with the evaluated pool: detected, marked in the store and CSV, ranked apart."""
import sqlite3

import yaml

from fewshot_bench.cli import main
from fewshot_bench.store.results import ResultsStore
from fewshot_bench.report.validate import validate_store
from fewshot_bench.report.validate_csv import validate_csv

from helpers import record

# the demo data split by examples, as sst2/trec/ag_news are: every pool holds all 15 classes
SAME_CLASS_CARD = {"name": "same_class_demo", "version": 1, "description": "d", "citation": "c", "license": "l",
                   "source": {"local_dir": "demo_intents", "packaged": True}, "splits": ["data"],
                   "pools": {"strategy": "examples", "fractions": {"source": 0.5, "validation": 0.2, "target": 0.3}}}


def _cards(tmp_path, card):
    folder = tmp_path / "cards"
    folder.mkdir()
    (folder / f"{card['name']}.yaml").write_text(yaml.safe_dump(card), encoding="utf-8")
    return folder


def test_shared_classes_are_detected_from_the_pools(tmp_path):
    from fewshot_bench.episodes.sampling import Setting
    from fewshot_bench.data.cards import register_cards

    register_cards(_cards(tmp_path, SAME_CLASS_CARD))
    assert len(Setting("same_class_demo", 5, 1, 2).shared_source_classes) == 15
    assert Setting("demo_intents", 5, 1, 2).shared_source_classes == ()  # class-disjoint pools


def test_a_meta_trained_method_on_a_same_class_pool_is_marked_and_ranked_apart(tmp_path, caplog):
    cards, store, out = _cards(tmp_path, SAME_CLASS_CARD), tmp_path / "s.sqlite", tmp_path / "lb.csv"
    assert main(["run", "--tasks-dir", str(cards), "--tasks", "same_class_demo", "--backbone", "tiny-encoder",
                 "--methods", "fomaml(meta_steps=1),protonet", "--n-way", "5", "--k-shot", "1", "--query", "2",
                 "--episodes", "3", "--store", str(store), "--out", str(out)]) == 0
    assert "shares 15 class(es) with the evaluated pool" in caplog.text
    with sqlite3.connect(store) as conn:
        marks = dict(conn.execute("SELECT DISTINCT method, same_class_source FROM episodes"))
    assert marks == {"fomaml(meta_steps=1)": 1, "protonet": None}
    rows = {r.split(",")[1]: r for r in out.read_text().splitlines()[1:]}
    assert "same-class-source" in rows["fomaml(meta_steps=1)"] and "same-class-source" not in rows["protonet"]
    assert validate_csv(out) == [] and validate_store(store) == []


def _same_class_store(path):
    """protonet and full_ft (target-only) tie; maml trained on a same-class source pool beats both everywhere."""
    with ResultsStore(path) as store:
        for i in range(20):
            store.write_episode(record(method="full_ft", episode_index=i, accuracy=0.60 + 0.01 * (i % 3)))
            store.write_episode(record(method="protonet", episode_index=i, accuracy=0.60 + 0.01 * (i % 3),
                                       config_hash="cfg1"))
            store.write_episode(record(method="maml", protocol="meta-trained", episode_index=i, config_hash="cfg2",
                                       accuracy=0.90, same_class_source=1))


def test_same_class_rows_never_lower_the_rank_of_few_shot_rows(tmp_path):
    _same_class_store(tmp_path / "s.sqlite")
    out = tmp_path / "lb.csv"
    assert main(["leaderboard", "--store", str(tmp_path / "s.sqlite"), "--out", str(out), "--bootstrap", "200"]) == 0
    import csv

    rows = {r["method"]: r for r in csv.DictReader(out.open())}
    assert rows["full_ft"]["rank_group"] == rows["protonet"]["rank_group"] == "1"
    assert rows["full_ft"]["beaten_by"] == "" and "same-class-source" in rows["maml"]["flags"]
    assert float(rows["maml"]["delta_vs_ref"]) > 0.25 and float(rows["maml"]["p_holm"]) < 0.05  # the leak, shown
    overall = {r["method"]: r for r in csv.DictReader((tmp_path / "lb_overall.csv").open())}
    assert "maml" not in overall
    assert validate_csv(out) == []


def test_validate_rejects_a_same_class_row_in_a_clean_rank_group(tmp_path):
    _same_class_store(tmp_path / "s.sqlite")
    out = tmp_path / "lb.csv"
    assert main(["leaderboard", "--store", str(tmp_path / "s.sqlite"), "--out", str(out), "--bootstrap", "200"]) == 0
    lines = out.read_text().splitlines()
    header = lines[0].split(",")
    tampered = []
    for line in lines[1:]:
        cells = line.split(",")
        if cells[header.index("method")] == "full_ft":
            cells[header.index("beaten_by")], cells[header.index("rank_group")] = "maml", "2"
            cells[header.index("rank")] = "2"
        tampered.append(",".join(cells))
    out.write_text("\n".join([lines[0], *tampered]) + "\n")
    problems = validate_csv(out)
    assert any("beaten_by: maml carry the flag same-class-source" in p for p in problems), problems


def test_the_leak_mark_is_everywhere_a_leaked_rows_number_appears(tmp_path, capsys, monkeypatch):
    """compare's output, the Markdown's "what the data can decide" line and the forest plot's label."""
    from fewshot_bench.report import forest as figure
    from fewshot_bench.analysis.compare import LEAK_MARK

    _same_class_store(tmp_path / "s.sqlite")
    assert main(["compare", "--store", str(tmp_path / "s.sqlite"), "--pair", "maml=full_ft", "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert f"maml{LEAK_MARK}" in out and "same-class-source" in out.splitlines()[-1]
    labels = []
    real = figure.leaderboard_figure

    def spy(rows, reference):
        fig = real(rows, reference)
        labels.extend(t.get_text() for ax in fig.axes for t in ax.get_yticklabels())
        return fig
    monkeypatch.setattr("fewshot_bench.report.views.leaderboard_figure", spy)  # the forest plots are drawn by summary.Views
    out_csv = tmp_path / "lb.csv"
    assert main(["leaderboard", "--store", str(tmp_path / "s.sqlite"), "--out", str(out_csv), "--bootstrap", "100"]) == 0
    findings = next(l for l in (tmp_path / "lb.md").read_text().splitlines() if l.startswith("- **demo fold 1"))
    assert f"maml{LEAK_MARK} +0.2" in findings  # the nominal difference to full_ft, marked
    assert f"maml{LEAK_MARK}" in labels and "protonet" in labels
