"""Content fingerprints: cards pin their data files' sha256, stores keep each episode's content hash, and a run
refuses to resume on data that changed under the same ids and labels."""
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from fewshot_bench.cli import main
from fewshot_bench.core.errors import UserError
from fewshot_bench.data.cards import BUILTIN_TASKS_DIR, load_card
from fewshot_bench.data.pinning import check_pinned, data_record, file_sha256
from fewshot_bench.episodes.sampling import content_sha256
from fewshot_bench.store import content

DEMO = BUILTIN_TASKS_DIR / "demo_intents"
CARD = BUILTIN_TASKS_DIR / "demo_intents.yaml"


def _task(tmp_path, pins=True, name="mydemo"):
    """A copy of the demo task as a user's task: card in tmp/tasks, data in tmp/data/<name>."""
    data = tmp_path / "data" / name
    data.mkdir(parents=True)
    (data / "data.jsonl").write_bytes((DEMO / "data.jsonl").read_bytes())
    text = CARD.read_text().replace("name: demo_intents", f"name: {name}").replace(
        "  local_dir: demo_intents\n  packaged: true\n", f"  local_dir: {name}\n").replace("demo: true\n", "")
    if not pins:
        text = text[:text.index("  # the files")] + text[text.index("splits:"):]
    cards = tmp_path / "tasks"
    cards.mkdir()
    (cards / f"{name}.yaml").write_text(text)
    return cards, data


def test_shipped_cards_pin_the_files_they_read():
    for card in sorted(BUILTIN_TASKS_DIR.glob("*.yaml")):
        config = load_card(card)
        assert config.source.sha256, f"{card.name} pins no data file"
        if config.source.packaged:
            check_pinned(config, BUILTIN_TASKS_DIR / config.source.local_dir)


def test_a_changed_data_file_is_refused_in_one_line(tmp_path, monkeypatch):
    cards, data = _task(tmp_path)
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", str(tmp_path / "data"))
    config = load_card(cards / "mydemo.yaml")
    check_pinned(config, data)  # the copy is the pinned file
    with open(data / "data.jsonl", "a") as handle:
        handle.write(json.dumps({"text": "one more", "label": "play_music"}) + "\n")
    with pytest.raises(UserError) as err:
        check_pinned(config, data)
    message = str(err.value)
    assert "\n" not in message and "data.jsonl" in message and file_sha256(data / "data.jsonl")[:16] in message
    assert "restore the file" in message and "bump the card's version" in message
    (data / "data.jsonl").unlink()
    with pytest.raises(UserError, match="missing, but task 'mydemo' pins source.sha256"):
        check_pinned(config, data)


@pytest.mark.parametrize("pin, match", [("abc", "not a sha256"), ("A" * 64, "not a sha256"),
                                        ("/etc/passwd", "must be a relative path")])
def test_a_bad_pin_is_refused_when_the_card_loads(tmp_path, pin, match):
    cards, _ = _task(tmp_path)
    card = cards / "mydemo.yaml"
    text = card.read_text()
    if pin.startswith("/"):
        text = text.replace("    data.jsonl:", f"    {pin}:")
    else:
        text = text.replace(file_sha256(DEMO / "data.jsonl"), pin)
    card.write_text(text)
    with pytest.raises(UserError, match=match):
        load_card(card)


def test_data_record_names_each_file_read(tmp_path, monkeypatch):
    cards, data = _task(tmp_path, pins=False)
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", str(tmp_path / "data"))
    from fewshot_bench.data.cards import register_cards
    register_cards(cards)
    record = data_record(["mydemo"], lambda config: data)
    assert record == {"mydemo": {"version": 1, "local_dir": "mydemo", "files": {
        "data.jsonl": hashlib.sha256((data / "data.jsonl").read_bytes()).hexdigest()}}}


def _run(tmp_path, store):
    return main(["run", "--tasks-dir", str(tmp_path / "tasks"), "--data-dir", str(tmp_path / "data"),
                 "--tasks", "mydemo", "--backbone", "tiny-encoder", "--methods", "protonet", "--n-way", "5",
                 "--k-shot", "1", "--query", "2", "--episodes", "2", "--store", str(store)])


def _counts(store):
    with sqlite3.connect(store) as conn:
        return [conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("episodes", "runs", content.TABLE)]


def test_resume_refuses_texts_changed_under_the_same_ids(tmp_path, capsys):
    _, data = _task(tmp_path, pins=False)  # unpinned: the store's content hashes are the only guard
    store = tmp_path / "s.sqlite"
    assert _run(tmp_path, store) == 0
    assert _counts(store) == [2, 1, 2]
    with sqlite3.connect(store) as conn:
        recorded = dict(((t, f), c) for t, f, c in conn.execute(f"SELECT * FROM {content.TABLE}"))
    assert _run(tmp_path, store) == 0  # same data: resumes, nothing to run
    assert _counts(store) == [2, 2, 2]
    rows = (data / "data.jsonl").read_text().splitlines()
    rows = [json.dumps({**json.loads(r), "text": json.loads(r)["text"] + "!"}) for r in rows]  # same ids and labels
    (data / "data.jsonl").write_text("\n".join(rows) + "\n")
    capsys.readouterr()
    assert _run(tmp_path, store) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other texts" in err and "mydemo" in err and "new --store" in err
    assert _counts(store) == [2, 2, 2]  # nothing written
    with sqlite3.connect(store) as conn:
        assert dict(((t, f), c) for t, f, c in conn.execute(f"SELECT * FROM {content.TABLE}")) == recorded
        data_json = {json.loads(d)["mydemo"]["files"]["data.jsonl"] for (d,) in conn.execute("SELECT data_json FROM runs")}
    assert len(data_json) == 1  # the file the runs read, before it was edited
    # validate regenerates the episodes from today's data: their texts are not the stored ones
    assert main(["validate", "--data-dir", str(tmp_path / "data"), "--tasks-dir", str(tmp_path / "tasks"),
                 str(store)]) == 1
    assert "episode_content: the stored content sha256" in capsys.readouterr().out


def test_a_shard_computed_from_other_data_is_not_merged(tmp_path, demo_episode):
    from dataclasses import replace

    from fewshot_bench.store.results import ResultsStore

    from helpers import record

    edited = replace(demo_episode, query_texts=tuple(t + "?" for t in demo_episode.query_texts))
    paths = []
    for name, episode in (("a", demo_episode), ("b", edited)):
        with ResultsStore(tmp_path / f"{name}.sqlite") as store:
            store.write_episode(record(task=episode.task, fingerprint=episode.fingerprint, run_id=name))
            content.check_and_record(store.conn, name, [episode])
        paths.append(tmp_path / f"{name}.sqlite")
    with ResultsStore(tmp_path / "target.sqlite") as target:
        assert target.merge_from(paths[:1]) == 1
        assert content.stored(target.conn) == {(demo_episode.task, demo_episode.fingerprint):
                                               content_sha256(demo_episode)}
        with pytest.raises(UserError, match="content sha256 .* nothing was merged"):
            target.merge_from(paths[1:])
        assert target.conn.execute("SELECT COUNT(*) FROM runs WHERE run_id = 'b'").fetchone()[0] == 0


def test_content_hash_covers_texts_not_only_ids(demo_episode):
    from dataclasses import replace
    same_ids = replace(demo_episode, query_texts=tuple(t + "?" for t in demo_episode.query_texts))
    assert same_ids.fingerprint == demo_episode.fingerprint
    assert content_sha256(same_ids) != content_sha256(demo_episode)
    conn = sqlite3.connect(":memory:")
    assert content.check_and_record(conn, "mem", [demo_episode]) == 1
    assert content.check_and_record(conn, "mem", [demo_episode]) == 0
    with pytest.raises(UserError, match="other texts"):
        content.check_and_record(conn, "mem", [same_ids])
    other = sqlite3.connect(":memory:")
    with pytest.raises(UserError, match="other texts"):  # a read-only store's hashes count too
        content.check_and_record(other, "mem", [same_ids], [content.stored(conn)])
    assert not content.has_table(other)
