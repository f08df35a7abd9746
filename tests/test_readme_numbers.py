"""leaderboard/readme_numbers.py: every generated block of leaderboard/README.md, docs/sgg.md and the README's method
timing table is what the committed store gives (so the committed files cannot drift from it), and the check fails when a stated number or the store
changes; unknown or missing blocks are errors, not skipped."""
import importlib.util
import re
import shutil
import sqlite3

import pytest

from helpers import REPO, shared_data_dir

STORE = REPO / "leaderboard" / "results.sqlite"
README = REPO / "leaderboard" / "README.md"
DOCS = REPO / "docs" / "sgg.md"
FIX = "python leaderboard/readme_numbers.py --store leaderboard/results.sqlite"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("readme_numbers", REPO / "leaderboard" / "readme_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def data(monkeypatch):
    """The task data (campaign estimates of all-way cells, classes of episodes stored without them)."""
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", str(shared_data_dir()))


def test_the_committed_readme_and_docs_hold_the_stores_numbers(script, capsys):
    status = script.main(["--store", str(STORE), "--check"])
    assert status == 0, f"out of date; run `{FIX}` and commit:\n{capsys.readouterr().out}"


def _copies(tmp_path):
    readme, docs = tmp_path / "README.md", tmp_path / "sgg.md"
    shutil.copy(README, readme)
    shutil.copy(DOCS, docs)
    return readme, docs


def test_a_changed_number_fails_the_check_and_a_run_restores_it(script, tmp_path, capsys):
    readme, docs = _copies(tmp_path)
    text = readme.read_text(encoding="utf-8")
    stated = re.search(r"\n([\d,]+) episodes in the store \(", text)
    assert stated, "the compute block states the store's episode count"
    line = next(l for l in text.splitlines() if l.startswith(stated.group(1) + " episodes in the store"))
    readme.write_text(text.replace(line, line.replace(stated.group(1), "1" + stated.group(1), 1)), encoding="utf-8")
    args = ["--store", str(STORE), "--readme", str(readme), "--docs", str(docs), "--guide", "none"]
    assert script.main(args + ["--check"]) == 1
    diff = capsys.readouterr().out
    assert f"\n-1{stated.group(1)} episodes in the store" in diff and f"\n+{line}" in diff
    assert script.main(args) == 0  # without --check it writes the store's numbers back
    assert readme.read_text(encoding="utf-8") == text and docs.read_text(encoding="utf-8") == DOCS.read_text("utf-8")


def test_a_deleted_episode_changes_the_numbers(script, tmp_path, capsys):
    """One maml episode fewer in a copy of the store: its counts, coverage and MAML table no longer match."""
    store = tmp_path / "results.sqlite"
    shutil.copy(STORE, store)
    with sqlite3.connect(store) as conn:
        cell = conn.execute("SELECT setting FROM episodes WHERE method = 'maml' ORDER BY setting LIMIT 1").fetchone()[0]
        conn.execute("DELETE FROM episodes WHERE rowid = (SELECT MIN(rowid) FROM episodes WHERE method = 'maml' AND "
                     "setting = ?)", (cell,))
        total = conn.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]
    conn.close()
    assert script.main(["--store", str(store), "--check"]) == 1
    diff = capsys.readouterr().out
    assert f"\n+{total:,} episodes in the store" in diff
    assert f"\n+| {cell} | 99 / 100 |" in diff  # the MAML table: 99 maml episodes in that cell


def test_unknown_and_missing_blocks_are_errors(script, tmp_path, capsys):
    readme, docs = _copies(tmp_path)
    text = readme.read_text(encoding="utf-8")
    readme.write_text(text.replace("<!-- compute -->", "<!-- computed -->").replace("<!-- /compute -->",
                                                                                    "<!-- /computed -->"), "utf-8")
    assert script.main(["--store", str(STORE), "--readme", str(readme), "--docs", str(docs), "--check"]) == 2
    error = capsys.readouterr().err
    assert "unknown blocks computed" in error and "missing blocks compute" in error
    assert readme.read_text(encoding="utf-8") != text  # left as it was: nothing written
