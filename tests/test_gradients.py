"""Gradient diagnostics: named by the trainable set they are computed on, never compared across sets, and their
within-cell Spearman correlation with accuracy reported."""
import pytest

from fewshot_bench.cli import main
from fewshot_bench.store.schema import LEADERBOARD
from fewshot_bench.analysis.gradients import COLUMNS, accuracy_spearman, basis
from fewshot_bench.store.results import ResultsStore

from helpers import record


def test_basis_names_the_trainable_set():
    assert (basis(22_715_141), basis(75_653), basis(1000), basis(512)) == ("22.7M", "75.7k", "1.0k", "512")
    assert basis(0) is None and basis(None) is None


def test_every_gradient_column_says_where_it_is_comparable():
    helps = {c.name: c.help for c in LEADERBOARD}
    assert all("trainable_params" in helps[c] and "not" in helps[c] for c in COLUMNS)
    assert "trainable_params" not in helps["acc_mean"]


def _records(accuracy, values, method="full_ft", params=22_715_141, setting="demo/fold1/5way5shot15q"):
    return [record(method=method, setting=setting, episode_index=i, accuracy=a, trainable_params=params,
                   grad_dir_consistency=v, grad_norm_cv=0.5, path_efficiency=None, source_alignment=v)
            for i, (a, v) in enumerate(zip(accuracy, values))]


def test_spearman_is_within_cells_per_method_and_trainable_set():
    up = [0.5 + 0.01 * i for i in range(12)]
    # cell 1 tracks accuracy exactly, cell 2 in reverse: pooled over cells the two would cancel differently
    records = _records(up, up) + _records(up, up[::-1], setting="demo/fold2/5way5shot15q")
    records += _records(up, up, method="lora", params=75_653) + _records(up, up, method="lora", params=38_789)
    records += _records(up[:5], up[:5], method="short")  # fewer than 10 episodes: no correlation
    table = {(r["method"], r["basis"], r["column"]): r for r in accuracy_spearman(records)}
    full = table[("full_ft", "22.7M", "grad_dir_consistency")]
    assert (full["cells"], full["episodes"], full["low"], full["high"], full["median"]) == (2, 24, -1.0, 1.0, 0.0)
    assert ("full_ft", "22.7M", "grad_norm_cv") not in table  # constant: undefined
    assert ("full_ft", "22.7M", "path_efficiency") not in table  # not measured
    assert table[("lora", "75.7k", "source_alignment")]["median"] == pytest.approx(1.0)
    assert ("lora", "38.8k", "source_alignment") in table and not any(k[0] == "short" for k in table)


def test_the_leaderboard_names_the_basis_and_reports_the_correlation(tmp_path):
    up = [0.5 + 0.01 * i for i in range(12)]
    with ResultsStore(tmp_path / "g.sqlite") as store:
        for r in _records(up, up) + _records(up, up[::-1], method="lora", params=75_653):
            store.write_episode(r)
    assert main(["leaderboard", "--store", str(tmp_path / "g.sqlite"), "--out", str(tmp_path / "lb.csv"),
                 "--bootstrap", "100"]) == 0
    markdown = (tmp_path / "lb.md").read_text()
    assert "grad dir. consistency @ trainable set" in markdown and " @ 22.7M |" in markdown and " @ 75.7k |" in markdown
    section = markdown.split("## Gradient diagnostics", 1)[1].split("\n## ", 1)[0]
    assert "comparable only between rows training the same parameter set" in section
    assert "| full_ft | 22.7M |  | +1.00 [+1.00, +1.00] (1) |" in section
    assert "| lora | 75.7k |  | -1.00 [-1.00, -1.00] (1) |" in section
