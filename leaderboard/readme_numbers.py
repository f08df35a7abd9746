"""Every number of leaderboard/README.md and docs/sgg.md (and the README's method timing table), generated from
the results store:
`python leaderboard/readme_numbers.py --store leaderboard/results.sqlite [--check]`.

The two files carry their numbers between HTML comment markers, ``<!-- NAME -->`` ... ``<!-- /NAME -->``; this
script rewrites the text between every such pair from the store (and the suites, the campaign file and the tuned
configs the README cites), leaving everything outside them as it is. ``--check`` writes nothing: it prints a
unified diff of each file that differs from what the store gives and exits 1 (0 when both are up to date); a test
runs it on the committed store (tests/test_readme_numbers.py). Run it without ``--check`` after every merge into
the store; ``--leaderboard`` then rewrites the leaderboard files too (``fewshot-bench leaderboard``, minutes), after
the README, whose claims table the page shows.

Contract. Each marker name in a file must be one this script generates for that file, and every block it
generates must be in the file: an unknown or missing block is an error, never silently skipped. The blocks:
  * ``core-coverage`` (ok episodes per core cell and method, :func:`coverage_table`), ``claims`` and docs/sgg.md's
    ``terms`` (leaderboard/claims.py's tables, its own functions) and one block per passage with digits
    (:data:`README_BLOCKS`, :data:`DOCS_BLOCKS`; the project README's :data:`GUIDE_BLOCKS`, ``--guide``).
  * Figures are the leaderboard's (``analysis.entries.load_entries``, ``compare.annotate`` against
    :data:`REFERENCE` with the leaderboard's 10,000 bootstrap resamples and seed 0, ``across``, ``folds``,
    ``pairs.pair_table``) on the store's rows, except the class-level CIs: those need every episode's classes,
    which rows written before the store kept them must regenerate from the task data (minutes). They are read
    from the committed leaderboard CSVs (``--class-cache``) for every row whose episodes are unchanged there (same
    episode-set hash, episode and failure counts and mean accuracy, and the same for its reference row), and
    computed from the store (``hierarchical.class_ci``, the leaderboard's function) for the others.
  * Counts and hours come from the episodes table directly: every stored row (ok, failed, diverged), CPU time as
    the sum of ``wall_seconds``, plus ``meta_train_seconds`` once per method, cell and value (every episode of a
    meta-trained row repeats its meta-training time), plus ``embedding_cache_seconds`` (the frozen-embedding cache).
  * docs/sgg.md's suite-v1 results come from the v1 store (``--v1-store``, leaderboard/v1/results.sqlite).

Layout, one job per module beside this one (imported by name: this file puts its folder on ``sys.path``, so it
works both as a script and when loaded from its path): ``readme_format`` (the text and number formats),
``readme_facts`` (the inputs, :class:`readme_facts.Facts`: everything the blocks print, computed once) and the block
functions by subject, ``readme_blocks_suite`` (suites, campaign, coverage, compute, method timing),
``readme_blocks_results`` (MAML, ablations, class-level CIs, folds, families, "What this shows") and
``readme_blocks_sgg`` (docs/sgg.md and suite v1). This module maps marker names to blocks, rewrites or checks the
files and parses the command line.
"""
from __future__ import annotations

import argparse
import difflib
import functools
import re
import sys
from pathlib import Path
from typing import Dict

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # the sibling modules below, also when a test loads this file from its path
    sys.path.insert(0, str(HERE))

from readme_blocks_results import (ablation_block, class_block, families_block, folds_block, maml_block,
                                   maml_defaults_block, shows_block)
from readme_blocks_sgg import (terms_summary_block, v1_header_block, v1_paired_sd_block, v1_reading_block,
                               v1_summary, v1_table_block)
from readme_blocks_suite import (campaign_block, compute_block, computed_block, core_suite_block, coverage_block,
                                 coverage_table, drop_rule_block, missing_block, not_computed_block, overall_block,
                                 power_block, suite_v2_block, timing_block, tuning_block)
from readme_facts import BOOTSTRAP, REFERENCE, Facts, Paths, store_rows, suite_config

# the public surface; coverage_table, store_rows and suite_config are here for tests/test_core_suite.py
__all__ = ["BlockError", "DOCS_BLOCKS", "GUIDE_BLOCKS", "README_BLOCKS", "coverage_table", "facts_for", "main",
           "render", "store_rows", "suite_config"]

BLOCK = re.compile(r"<!-- ([a-z0-9-]+) -->\n(.*?)<!-- /\1 -->", re.S)


README_BLOCKS = {
    "v1-summary": v1_summary, "core-suite": core_suite_block, "core-coverage": coverage_block,
    "campaign-status": campaign_block, "computed-by-day": computed_block, "not-computed": not_computed_block,
    "maml-adaptation": maml_block, "maml-defaults": maml_defaults_block, "ablations": ablation_block,
    "claims": lambda f: f.claims_md, "suite-v2": suite_v2_block, "power": power_block,
    "drop-rule-folds": drop_rule_block,
    "compute": compute_block, "missing": missing_block, "tuning-budget": tuning_block, "overall": overall_block,
    "class-level": class_block, "fold-class-level": folds_block, "compare-families": families_block,
    "what-this-shows": shows_block, "v1-paired-sd": v1_paired_sd_block,
}
GUIDE_BLOCKS = {"method-timing": timing_block}
DOCS_BLOCKS = {
    "terms": lambda f: f.terms_md, "terms-summary": terms_summary_block, "v1-header": v1_header_block,
    "v1-results": v1_table_block, "v1-reading": v1_reading_block,
}


# rewrite / check --------------------------------------------------------------------------------------------------
class BlockError(Exception):
    pass


def render(text: str, blocks: Dict[str, object], facts: Facts, where: str) -> str:
    """``text`` with every marked block regenerated; an unknown, missing or repeated block is a BlockError."""
    found = [m.group(1) for m in BLOCK.finditer(text)]
    unknown = sorted(set(found) - set(blocks))
    missing = sorted(set(blocks) - set(found))
    repeated = sorted({name for name in found if found.count(name) > 1})
    if unknown or missing or repeated:
        raise BlockError(f"{where}: " + "; ".join(
            part for part in (f"unknown blocks {', '.join(unknown)}" if unknown else "",
                              f"missing blocks {', '.join(missing)}" if missing else "",
                              f"repeated blocks {', '.join(repeated)}" if repeated else "") if part))
    return BLOCK.sub(lambda m: f"<!-- {m.group(1)} -->\n{blocks[m.group(1)](facts)}<!-- /{m.group(1)} -->", text)


@functools.lru_cache(maxsize=4)
def _facts(paths: Paths, stamp: tuple) -> Facts:
    return Facts(paths)


def facts_for(paths: Paths) -> Facts:
    """Facts of ``paths`` (the files they are read from; not the README and docs they are written into), reused
    while the store file is unchanged (size and mtime): a test checks several copies against one store at once."""
    stat = paths.store.stat()
    return _facts(paths._replace(readme=None, docs=None, guide=None), (stat.st_size, stat.st_mtime_ns))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=str(ROOT / "leaderboard" / "results.sqlite"), help="results store (SQLite)")
    parser.add_argument("--check", action="store_true", help="write nothing; print a diff and exit 1 when a file "
                                                              "differs from what the store gives")
    parser.add_argument("--root", default=str(ROOT), help="repository root the default paths below are under")
    parser.add_argument("--readme", help="the leaderboard README (default ROOT/leaderboard/README.md)")
    parser.add_argument("--docs", help="the SGG page (default ROOT/docs/sgg.md)")
    parser.add_argument("--guide", help="the project README (default ROOT/README.md; 'none': skip it)")
    parser.add_argument("--campaign", help="campaign file (default ROOT/leaderboard/campaign.yaml)")
    parser.add_argument("--v1-store", help="suite-v1 store (default ROOT/leaderboard/v1/results.sqlite)")
    parser.add_argument("--class-cache", help="leaderboard CSV whose class-level CIs are reused for unchanged rows "
                                              "(default ROOT/leaderboard/leaderboard.csv; 'none': compute all)")
    parser.add_argument("--leaderboard", action="store_true", help="then rewrite the leaderboard files beside "
                                                                   "the README with `fewshot-bench leaderboard` "
                                                                   f"(reference {REFERENCE}; minutes)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    cache = args.class_cache or str(root / "leaderboard" / "leaderboard.csv")
    paths = Paths(store=Path(args.store).resolve(),
                  readme=Path(args.readme or root / "leaderboard" / "README.md"),
                  docs=Path(args.docs or root / "docs" / "sgg.md"),
                  guide=None if args.guide == "none" else Path(args.guide or root / "README.md"),
                  campaign=Path(args.campaign or root / "leaderboard" / "campaign.yaml"),
                  v1_store=Path(args.v1_store or root / "leaderboard" / "v1" / "results.sqlite"),
                  class_cache=None if cache == "none" else Path(cache),
                  tuned=tuple(sorted((root / "leaderboard" / "tuning").glob("tuned-*.yaml"))))
    if not paths.store.is_file():
        print(f"error: results store {paths.store} does not exist", file=sys.stderr)
        return 2
    facts = facts_for(paths)
    print(f"class-level CIs: {facts.cached} rows read from {paths.class_cache or 'no cache'} (episodes unchanged), "
          f"{facts.computed} computed from the store", file=sys.stderr)
    status = 0
    targets = [(paths.readme, README_BLOCKS), (paths.docs, DOCS_BLOCKS)]
    for path, blocks in targets + ([(paths.guide, GUIDE_BLOCKS)] if paths.guide is not None else []):
        text = path.read_text(encoding="utf-8")
        try:
            new = render(text, blocks, facts, str(path))
        except BlockError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if new == text:
            continue
        if args.check:
            status = 1
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                       f"{path} (committed)", f"{path} (from {paths.store.name})"))
        else:
            path.write_text(new, encoding="utf-8")
            print(f"wrote {path}")
    if args.check and status == 0:
        print(f"{paths.readme} and {paths.docs} hold the numbers of {paths.store}")
    if args.leaderboard and not args.check:  # after the README: the page shows the claims table written there
        from fewshot_bench.report.leaderboard import write_leaderboard

        write_leaderboard(paths.store, paths.readme.parent / "leaderboard.csv", BOOTSTRAP, REFERENCE)
    return status


if __name__ == "__main__":
    sys.exit(main())
