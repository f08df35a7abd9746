"""leaderboard/claims.py: each claim one Holm family over the cells both rows complete; verdicts follow the signs of
the significant cells; the README's claims table is the script's output on the committed store; the stress,
gradient-stability and ablation claims; docs/sgg.md's term table is the script's --terms output."""
import importlib.util
import re

import numpy as np
import pytest

from fewshot_bench.analysis.compare import Entry
from fewshot_bench.report.leaderboard import load_entries
from fewshot_bench.store.results import ResultsStore

from helpers import REPO, record

CLAIMS_TABLE = re.compile(r"<!-- claims -->\n(.*?)<!-- /claims -->", re.S)
TERMS_TABLE = re.compile(r"<!-- terms -->\n(.*?)<!-- /terms -->", re.S)


@pytest.fixture(scope="module")
def claims():
    spec = importlib.util.spec_from_file_location("claims_script", REPO / "leaderboard" / "claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entry(method, setting, accuracy, planned=None, same_class_source=False, failed=()):
    """A row of ``len(accuracy)`` episodes; those at the indices ``failed`` failed (no accuracy)."""
    fingerprints = [f"{setting}#{i}" for i in range(len(accuracy))]  # distinct episodes per cell
    row = dict(method=method, episodes=len(accuracy), failed_episodes=len(failed),
               episodes_planned=len(accuracy) if planned is None else planned, restarts=1)
    ok = {f: a for i, (f, a) in enumerate(zip(fingerprints, accuracy)) if i not in failed}
    return Entry(cell=("t", setting, "b"), row=row, accuracy=ok, predictions={f: [0] for f in ok},
                 fingerprints=frozenset(fingerprints), same_class_source=same_class_source)


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
    assert verdicts["SGG is more accurate than full fine-tuning"] == "mixed (better in 1, worse in 1 of 2 cells)"
    assert verdicts["SGG is more accurate than LoRA"] == "undecided (no significant difference in 1 cell)"
    assert verdicts["SGG is more accurate than MAML (second order)"] == "undecided (not computed)"
    assert verdicts["Source/target alignment helps across domains"] == "supported in 1 of 1 cell (worse in none)"
    assert verdicts["Source/target alignment helps in-domain"] == "undecided (not computed)"
    stability = next(v for c, v in verdicts.items() if c.startswith("SGG is more stable over training seeds"))
    assert stability.startswith("undecided (not computed: no cell holds sgg and full_ft or lora run with --restarts")


def test_planted_seed_sds_decide_the_restarts_claim_one_family_over_both_comparisons(claims):
    """Per episode the SD over restarts: full_ft's 0.01 above sgg's on all 12 episodes of cell a (exact p 2/4096,
    Holm over the claim's 2 comparisons), lora's equal to sgg's; cell b's rows have no restarts: not compared."""
    rng = np.random.default_rng(2)
    sds, entries = rng.uniform(0.02, 0.03, 12), []
    for method, shift in (("sgg", 0.0), ("full_ft", 0.01), ("lora", 0.0)):
        entry = _entry(method, "a/fold1/5way1shot15q", rng.uniform(0.4, 0.8, 12))
        entry.seed_sd.update({f: sd + shift for f, sd in zip(entry.accuracy, sds)})
        entry.row["restarts"] = 3
        entries += [entry, _entry(method, "b/fold1/5way1shot15q", rng.uniform(0.4, 0.8, 12))]
    row = _row(claims, claims.claim_rows(entries), "SGG is more stable over training seeds")
    assert row["comparison"] == "seed SD: full_ft - sgg, lora - sgg"
    assert row["verdict"] == "supported in 1 of 2 comparisons (worse in none)"
    assert row["cells"].split("<br>") == [
        "a/fold1/5way1shot15q full_ft - sgg: +0.010 [+0.010, +0.010], d_z -, p_Holm 0.00098, n=12",
        "a/fold1/5way1shot15q lora - sgg: +0.000 [+0.000, +0.000], d_z -, p_Holm 1, n=12"]


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


def _row(claims, rows, prefix):
    return next(r for r in rows if r["claim"].startswith(prefix))


def test_planted_gradient_figures_decide_the_stability_claims(claims, tmp_path):
    """A store (per-episode figures read back from its episodes table): sgg's grad_norm_cv planted lower in both
    cells (supported), its path_efficiency lower (not supported), grad_dir_consistency equal (undecided); a third
    cell where the two train different parameter sets is not compared."""
    path, rng = tmp_path / "store.sqlite", np.random.default_rng(2)
    with ResultsStore(path) as store:
        run = store.start_run({"episodes": 12}, "cpu", 0)
        for task, trainable in (("a", 1000), ("b", 1000), ("c", 2000)):
            for i in range(12):
                cv, path_eff = rng.uniform(0.8, 1.2), rng.uniform(0.9, 0.95)
                for method, protocol, shift, params in (("sgg", "source-guided", -0.05, trainable),
                                                        ("full_ft", "target-only", 0.0, 1000)):
                    store.write_episode(record(
                        run_id=run, method=method, protocol=protocol, task=task, setting=f"{task}/fold1/5way1shot15q",
                        episode_index=i, accuracy=0.6, grad_norm_cv=cv + shift, grad_dir_consistency=0.5,
                        path_efficiency=path_eff + shift, trainable_params=params))
    rows = claims.claim_rows(load_entries(path, bootstrap=1), claims.episode_metrics(path))
    norms = _row(claims, rows, "SGG's gradient norms vary less")
    assert norms["comparison"] == "full_ft - sgg" and "1.0k in both" in norms["claim"]
    assert norms["verdict"] == "supported in 2 of 2 cells (worse in none)"
    assert norms["cells"].count("+0.050 [+0.050, +0.050]") == 2 and "n=12" in norms["cells"]
    assert "not compared: c/fold1/5way1shot15q (trainable 2.0k vs 1.0k)" in norms["cells"]
    path_row = _row(claims, rows, "SGG's parameter path is straighter")
    assert path_row["verdict"] == "not supported (worse in 2 of 2 cells, better in none)"
    assert "partly by construction" in path_row["claim"]
    consistency = _row(claims, rows, "SGG's gradient directions are more consistent")
    assert consistency["verdict"] == "undecided (no significant difference in 2 cells)"
    # without the per-episode figures the gradient claims are not computed
    rows = claims.claim_rows(load_entries(path, bootstrap=1))
    assert _row(claims, rows, "SGG's gradient norms")["verdict"] == "undecided (not computed)"


def test_stress_claims_count_failed_episodes(claims):
    """At 10x full_ft fails on 10 of 20 episodes and sgg on none: SGG fails less (10 discordant episodes, exact
    p = 2/2^10); the accuracy claim pairs the 10 episodes both finished ok. At 3x neither fails."""
    (_, _, sgg3, ft3), (_, lr10, sgg10, ft10), (factor30, _, sgg30, _) = claims.stress_pairs()
    assert lr10 == "0.0005" and sgg10 == "sgg(lr=0.0005)" and ft10 == "full_ft(lr=0.0005)"
    assert (factor30, sgg30) == ("30x", "sgg(lr=0.0015)")
    base = np.random.default_rng(3).uniform(0.4, 0.8, 20)
    setting = "banking77/fold1/5way1shot15q"
    entries = [_entry(sgg10, setting, base), _entry(ft10, setting, base - 0.1, failed=range(10)),
               _entry(sgg3, setting, base), _entry(ft3, setting, base)]
    rows = claims.claim_rows(entries)
    fails10 = _row(claims, rows, "SGG diverges or fails less than full fine-tuning at 10x")
    assert fails10["comparison"] == f"failed: {ft10} - {sgg10}"
    assert fails10["verdict"] == "supported in 1 of 1 cell (worse in none)"
    assert f"failed {sgg10} 0.000 vs {ft10} 0.500" in fails10["cells"] and "10 discordant" in fails10["cells"]
    assert "p_Holm 0.002" in fails10["cells"] and "n=20" in fails10["cells"]
    accuracy10 = _row(claims, rows, "SGG is more accurate than full fine-tuning at 10x")
    assert accuracy10["verdict"].startswith("supported in 1 of 1") and "n=10" in accuracy10["cells"]
    fails3 = _row(claims, rows, "SGG diverges or fails less than full fine-tuning at 3x")
    assert fails3["verdict"] == "undecided (no significant difference in 1 cell)" and "0 discordant" in fails3["cells"]
    assert _row(claims, rows, "SGG diverges or fails less than full fine-tuning at 30x")["verdict"] == \
        "undecided (not computed)"


def test_ablation_rows_say_which_comparison_and_not_computed_without_rows(claims):
    rng = np.random.default_rng(4)
    base = rng.uniform(0.4, 0.8, 12)
    setting = "hwu64/fold1/5way1shot15q"
    entries = [_entry("sgg", setting, base), _entry("full_ft", setting, base),
               _entry("sgg-no-dir", setting, base - 0.05), _entry("sgg[tuned]", setting, base + 0.05),
               _entry("full_ft[tuned]", setting, base), _entry("sgg-no-dir[tuned]", setting, base + 0.05)]
    rows = claims.claim_rows(entries)
    assert _row(claims, rows, "The direction term helps:")["verdict"].startswith("supported in 1 of 1")
    tuned_dir = _row(claims, rows, "The direction term helps at tuned configs")
    assert tuned_dir["comparison"] == "sgg[tuned] - sgg-no-dir[tuned]"
    assert tuned_dir["verdict"] == "undecided (no significant difference in 1 cell)"
    assert _row(claims, rows, "The magnitude term helps at tuned configs")["verdict"] == "undecided (not computed)"
    magnitude = _row(claims, rows, "The magnitude term helps")
    assert magnitude["verdict"] == "undecided (not computed)" and magnitude["cells"] == "-"
    assert _row(claims, rows, "The alignment term helps")["verdict"] == "undecided (not computed)"
    defaults = _row(claims, rows, "SGG is more accurate than full fine-tuning at equal budget, both at defaults")
    tuned = _row(claims, rows, "SGG is more accurate than full fine-tuning at equal budget, both tuned")
    assert defaults["verdict"].startswith("undecided (no significant") and "validation classes" in tuned["claim"]
    assert tuned["comparison"] == "sgg[tuned] - full_ft[tuned]" and tuned["verdict"].startswith("supported in 1")


def test_the_docs_term_table_is_the_scripts_output(claims, capsys):
    stated = TERMS_TABLE.search((REPO / "docs" / "sgg.md").read_text(encoding="utf-8"))
    assert stated, "docs/sgg.md has no terms table"
    assert claims.main(["--store", str(REPO / "leaderboard" / "results.sqlite"), "--terms"]) == 0
    assert stated.group(1) == capsys.readouterr().out
