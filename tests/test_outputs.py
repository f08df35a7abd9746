"""Output files: a leaderboard write that fails part-way leaves the previous files, byte for byte, and no temp files."""
import pytest

from fewshot_bench.report import views as summary
from fewshot_bench.cli import main
from fewshot_bench.core.outputs import atomic_files
from fewshot_bench.store.results import ResultsStore
from helpers import record

NAMES = ("leaderboard.csv", "leaderboard_overall.csv", "leaderboard_folds.csv", "leaderboard.md", "leaderboard.png",
         "leaderboard.html", "leaderboard_summary.md", "leaderboard_cells/demo_fold1_5way5shot15q_minilm.png")


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_atomic_files_replace_all_or_nothing(tmp_path):
    targets = [tmp_path / "a.csv", tmp_path / "sub" / "b.md"]
    with atomic_files(targets) as temps:
        for temp in temps:
            temp.write_text("new")
    assert [t.read_text() for t in targets] == ["new", "new"]
    with pytest.raises(RuntimeError):
        with atomic_files(targets) as temps:
            temps[0].write_text("newer")
            raise RuntimeError("killed after the first file")
    assert [t.read_text() for t in targets] == ["new", "new"]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.csv", "b.md"]


def test_leaderboard_failing_at_the_last_file_keeps_the_old_files(tmp_path, monkeypatch, capsys):
    store, out = tmp_path / "s.sqlite", tmp_path / "board" / "leaderboard.csv"
    with ResultsStore(store) as results:
        for i in range(3):
            results.write_episode(record(episode_index=i, accuracy=0.5 + 0.1 * i))
    assert main(["leaderboard", "--store", str(store), "--out", str(out), "--bootstrap", "100"]) == 0
    before = _files(out.parent)
    assert sorted(before) == sorted(NAMES)
    with ResultsStore(store) as results:  # new results: the CSV and Markdown would change
        results.write_episode(record(method="lora", episode_index=0, accuracy=0.9))

    def broken_page(*args, **kwargs):  # the HTML page is written last, after the figures and plots
        raise RuntimeError("page failed")

    monkeypatch.setattr(summary, "write_html", broken_page)
    with pytest.raises(RuntimeError, match="page failed"):
        main(["leaderboard", "--store", str(store), "--out", str(out), "--bootstrap", "100"])
    assert _files(out.parent) == before  # byte for byte, and no temporary file left
