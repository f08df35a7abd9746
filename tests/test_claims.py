"""leaderboard/claims.py: each claim one Holm family over the cells both rows complete; verdicts follow the signs of
the significant cells; the README's claims table is the script's output on the committed store."""
import importlib.util
import re

import numpy as np
import pytest

from fewshot_bench.compare import Entry

from helpers import REPO

CLAIMS_TABLE = re.compile(r"<!-- claims -->\n(.*?)<!-- /claims -->", re.S)


@pytest.fixture(scope="module")
def claims():
    spec = importlib.util.spec_from_file_location("claims_script", REPO / "leaderboard" / "claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entry(method, setting, accuracy, planned=None, same_class_source=False):
    fingerprints = [f"{setting}#{i}" for i in range(len(accuracy))]  # distinct episodes per cell
    row = dict(method=method, episodes=len(accuracy), failed_episodes=0,
               episodes_planned=len(accuracy) if planned is None else planned, restarts=1)
    return Entry(cell=("t", setting, "b"), row=row, accuracy=dict(zip(fingerprints, accuracy)),
                 predictions={f: [0] for f in fingerprints}, fingerprints=frozenset(fingerprints),
                 same_class_source=same_class_source)


def _verdicts(claims, entries):
    return {r["claim"]: r["verdict"] for r in claims.claim_rows(entries)}


def test_planted_effects_decide_the_claims(claims):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 0.8, 40)
    entries = [_entry("sgg", "a/fold1/5way1shot15q", base + 0.1), _entry("full_ft", "a/fold1/5way1shot15q", base),
               _entry("sgg", "b/fold1/5way1shot15q", base), _entry("full_ft", "b/fold1/5way1shot15q", base + 0.1),
               _entry("lora", "a/fold1/5way1shot15q", base + 0.1 + rng.normal(0, 0.001, 40)),
               _entry("sgg", "x->y/fold1/5way1shot15q", base + 0.1),
               _entry("sgg-no-align", "x->y/fold1/5way1shot15q", base),
               _entry("maml", "a/fold1/5way1shot15q", base - 0.2, planned=100)]  # incomplete: not compared
    verdicts = _verdicts(claims, entries)
    assert verdicts["SGG is more accurate than full fine-tuning"].startswith("mixed (better in 1, worse in 1 of 2")
    assert verdicts["SGG is more accurate than LoRA"].startswith("undecided (no significant difference in 1 cells")
    assert verdicts["SGG is more accurate than MAML (second order)"] == "undecided (not computed)"
    assert verdicts["Source/target alignment helps across domains"].startswith("supported in 1 of 1 cells")
    assert verdicts["Source/target alignment helps in-domain"] == "undecided (not computed)"
    assert verdicts["SGG is more stable over training seeds than full fine-tuning and LoRA"].startswith("undecided")


def test_one_worse_cell_is_not_supported_and_holm_counts_the_claims_cells(claims):
    rng = np.random.default_rng(1)
    entries = []
    for cell in range(3):
        base = rng.uniform(0.4, 0.8, 12)
        entries += [_entry("sgg", f"c{cell}/fold1/5way1shot15q", base - (0.05 if cell == 0 else 0.0)),
                    _entry("lora", f"c{cell}/fold1/5way1shot15q", base)]
    row = next(r for r in claims.claim_rows(entries) if r["comparison"] == "sgg - lora")
    # 12 equal-sign episodes: exact p = 2/2^12 per cell, Holm over the claim's 3 cells: 3 x 2/4096
    assert row["verdict"] == "not supported (worse in 1 of 3 cells, better in none)"
    assert "p_Holm 0.0015" in row["cells"] and row["cells"].count("n=12") == 3


def test_the_readme_claims_table_is_the_scripts_output(claims, capsys):
    stated = CLAIMS_TABLE.search((REPO / "leaderboard" / "README.md").read_text(encoding="utf-8"))
    assert stated, "leaderboard/README.md has no claims table"
    assert claims.main(["--store", str(REPO / "leaderboard" / "results.sqlite")]) == 0  # the README's command
    assert stated.group(1) == capsys.readouterr().out
