"""leaderboard/README.md's blocks on the suites, the campaign and the compute (what the store holds and what it
cost), and the project README's method timing table. Each block is a function of :class:`readme_facts.Facts`
returning the Markdown between its markers."""
from __future__ import annotations

from typing import Dict, List, Optional

from readme_facts import CELL_BULLETS, FROZEN, REFERENCE, Facts
from readme_format import base, code, hours, listing, n, paragraph, table

DROP_RULE = 0.89         # the pilot's rule: a cell is dropped when the better frozen method reaches this


def ok_episodes(rows, labels, methods) -> Dict[tuple, int]:
    """{(cell, method): ok episodes} of the leaderboard rows for the suite's cells and methods (0: no row)."""
    found = {(r["setting"], r["method"]): int(r["episodes"]) - int(r["failed_episodes"]) for r in rows}
    return {(cell, method): found.get((cell, method), 0) for cell in labels for method in methods}


def coverage_table(rows, labels, methods) -> str:
    """The Markdown table leaderboard/README.md carries between the core-coverage markers: ok episodes per cell of
    the core suite (``labels``) and method (``methods``) in ``rows`` (leaderboard rows, from the store or a CSV)."""
    counts = ok_episodes(rows, labels, methods)
    lines = ["| cell | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    lines += ["| " + cell + " | " + " | ".join(str(counts[cell, m]) for m in methods) + " |" for cell in labels]
    return "\n".join(lines) + "\n"


def core_suite_block(f: Facts) -> str:
    config = f.core
    return paragraph(
        f"The suite's {len(f.core_labels)} cells: {listing([code(c) for c in f.core_labels])}; {config.episodes} "
        f"episodes of {config.query} queries per class, seed {config.seed}, {config.backbone}; "
        f"{len(f.core_methods)} methods ({', '.join(f.core_methods)}).")


def coverage_block(f: Facts) -> str:
    return coverage_table(f.rows, f.core_labels, f.core_methods)


def _entry_text(raw: dict) -> str:
    """An entry as the campaign file writes it: ``{suite: core, methods: [sgg, full_ft]}``."""
    parts = []
    for key, value in raw.items():
        value = "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else str(value)
        parts.append(f"{key}: {value}")
    return "`{" + ", ".join(parts) + "}`"


def campaign_block(f: Facts) -> str:
    c = f.campaign
    units, done, left = c["plan"].units, c["done"], c["left"]
    rows, totals = [], [0] * 6
    for number, raw in enumerate(c["raw"]):
        mine = [u for u in units if u.entry == number]
        complete = sum(done[u] >= u.episodes for u in mine)
        started = sum(0 < done[u] < u.episodes for u in mine)
        fresh = sum(done[u] == 0 for u in mine)
        todo = sum(u.episodes - min(done[u], u.episodes) for u in mine)
        seconds = sum(left.get(u, 0.0) for u in mine)
        for i, v in enumerate((len(mine), complete, started, fresh, todo, seconds)):
            totals[i] += v
        rows.append((number + 1, _entry_text(raw), len(mine), complete, started, fresh, n(todo),
                     f"{seconds / 3600:.1f}"))
    rows.append(("", "**all**", *totals[:4], n(totals[4]), f"{totals[5] / 3600:.1f}"))
    warning = c["warning"] or ("No unit's method and cell holds rows stored under another config hash (nothing a "
                               "merge would pool).")
    return table(("entry", "run configuration (`leaderboard/campaign.yaml`, queue order)", "units", "complete",
                  "partly done", "not started", "episodes to do", "CPU-hours left (estimate)"), rows) + "\n" + \
        paragraph(f"Estimates as `campaign status` makes them from this store: per episode the method's mean "
                  f"`wall_seconds` in the cell, else scaled from its other cells by their cost ratio (the methods "
                  f"stored in both; else their texts), else the same from the rows of its default config (a unit "
                  f"with config overrides or a tuned config), else "
                  f"{c['default_rate']:g} s (`campaign status` also reads a dry-run calibration of its own "
                  f"machine, when it has one, to scale a method between cells by its own cost and for units nothing "
                  f"measures; this table, being committed, does not); plus meta-training.", warning)


def _day(record) -> str:
    return record["created_at"][:10]


def computed_block(f: Facts) -> str:
    by_day: Dict[str, Dict[str, set]] = {}
    counts: Dict[str, int] = {}
    for r in f.records:
        by_day.setdefault(_day(r), {}).setdefault(r["method"], set()).add(r["setting"])
        counts[_day(r)] = counts.get(_day(r), 0) + 1
    rows = []
    for day in sorted(by_day):
        methods = by_day[day]
        rows.append((day, n(counts[day]), "; ".join(f"{code(m)} ({len(s)} cell{'s' * (len(s) > 1)})"
                                                   for m, s in sorted(methods.items()))))
    return table(("computed on (UTC day of `created_at`)", "episodes", "method (cells)"), rows)


def not_computed_block(f: Facts) -> str:
    pending = f.campaign["pending"]
    if not pending:
        return paragraph("**Not computed yet:** nothing; every unit of `leaderboard/campaign.yaml` is in the store.")
    by_label: Dict[str, Dict[str, List[str]]] = {}
    for u in pending:
        text = f"restart {u.restart}" if u.restart else "plain run"
        if f.campaign["done"][u]:
            text += f" ({f.campaign['done'][u]}/{u.episodes} episodes)"
        by_label.setdefault(u.label, {}).setdefault(u.setting.label, []).append(text)
    rows = []
    for label, cells in by_label.items():
        rows.append((code(label), sum(len(v) for v in cells.values()), "; ".join(
            code(cell) + ("" if runs == ["plain run"] else f" ({', '.join(runs)})") for cell, runs in cells.items())))
    return paragraph(f"**Not computed yet** ({len(pending)} campaign units, in queue order; `fewshot-bench campaign "
                     f"status` lists them with their CPU-hours):") + "\n" + table(("method", "units", "cells"), rows)


def suite_v2_block(f: Facts) -> str:
    config = f.default
    return paragraph(f"`tasks/suites/default.yaml` (v2): {len(f.default_labels)} cells, {config.episodes} episodes "
                     f"each, {config.query} queries per class, seed {config.seed}, {config.backbone}.")


def _detectable(f: Facts) -> Dict[str, float]:
    return {cell[1]: members[0].row["detectable_diff"] for cell, members in f.cells.items()
            if members[0].row["detectable_diff"] is not None}


def power_block(f: Facts) -> str:
    detectable = _detectable(f)
    misses = sorted((c, d) for c, d in detectable.items() if d > 0.02)
    episodes = sorted({min(len(e.accuracy) for e in members if e.accuracy) for members in f.cells.values()})
    hwu = detectable.get(CELL_BULLETS[1])
    return paragraph(
        f"On the stored episodes ({'/'.join(map(str, episodes))} per cell; `detectable_diff`, 80% power at α 0.05 "
        f"from the median SD of adjacent methods) a 2-point difference is detectable in "
        f"{len(detectable) - len(misses)} of {len(detectable)} cells"
        + (f", not in {listing([f'{code(c)} ({d:.4f})' for c, d in misses])}" if misses else "")
        + f"; {sum(d <= 0.01 for d in detectable.values())} cells reach 1 point"
        + (f"; {code(CELL_BULLETS[1])} (the cell the validation pilot below questions) detects "
           f"{100 * hwu:.2f} points" if hwu is not None else "") + ".")


def drop_rule_block(f: Facts) -> str:
    reach = []
    for cell, members in sorted(f.cells.items(), key=lambda kv: kv[0][1]):
        if "/fold1/" in cell[1]:
            continue
        best = max((e.row["acc_mean"] for e in members if e.method in FROZEN and e.row["acc_mean"] is not None),
                   default=None)
        if best is not None and best >= DROP_RULE:
            reach.append(f"{code(cell[1])} {best:.3f}")
    return paragraph(f"In the other folds {len(reach)} kept cells reach the drop rule (best of `protonet` and "
                     f"`linear_probe` ≥ {DROP_RULE}){': ' + listing(reach) if reach else ''}.")


def compute_block(f: Facts) -> str:
    per: Dict[str, dict] = {}
    metas: Dict[tuple, float] = {}
    for r in f.records:
        m = per.setdefault(r["method"], dict(cells=set(), ok=0, failed=0, diverged=0, wall=0.0, cache=0.0, days=set()))
        m["cells"].add(r["setting"])
        m[r["status"] if r["status"] in ("ok", "failed", "diverged") else "failed"] += 1
        m["wall"] += r["wall_seconds"] or 0.0
        m["cache"] += r["embedding_cache_seconds"] or 0.0
        m["days"].add(_day(r))
        if r["meta_train_seconds"] is not None:
            metas[(r["method"], r["backbone"], r["setting"], r["meta_train_seconds"])] = r["meta_train_seconds"]
    meta = {}
    for (method, *_), seconds in metas.items():
        meta[method] = meta.get(method, 0.0) + seconds
    rows, total = [], dict(ok=0, failed=0, diverged=0, wall=0.0, meta=0.0, cache=0.0)
    for method in sorted(per, key=lambda m: (-len(per[m]["cells"]), m)):
        m = per[method]
        rows.append((code(method), len(m["cells"]), n(m["ok"]), m["failed"] + m["diverged"], hours(m["wall"]),
                     hours(meta.get(method, 0.0)), hours(m["cache"]),
                     hours(m["wall"] + meta.get(method, 0.0) + m["cache"]), ", ".join(sorted(m["days"]))))
        for k in ("ok", "failed", "diverged", "wall", "cache"):
            total[k] += m[k]
        total["meta"] += meta.get(method, 0.0)
    cpu = total["wall"] + total["meta"] + total["cache"]
    rows.append(("**all**", len({r["setting"] for r in f.records}), n(total["ok"]), total["failed"] + total["diverged"],
                 hours(total["wall"]), hours(total["meta"]), hours(total["cache"]), hours(cpu), ""))
    torch = sorted({v for r in f.runs for v in [_version(r["versions_json"], "torch")] if v})
    episodes = total["ok"] + total["failed"] + total["diverged"]
    text = table(("method", "cells", "ok episodes", "failed or diverged", "CPU-hours: `wall_seconds`",
                  "meta-training", "frozen-embedding cache", "total", "computed on"), rows)
    return text + "\n" + paragraph(
        f"{n(episodes)} episodes in the store ({n(total['ok'])} ok, {n(total['failed'])} failed, "
        f"{n(total['diverged'])} diverged) in {len(f.rows)} leaderboard rows; {cpu / 3600:.1f} CPU-hours in all "
        f"(torch {listing(torch)}; cores shared, so these are contended wall times).")


def _version(versions_json, name) -> Optional[str]:
    import json

    try:
        return json.loads(versions_json or "{}").get(name)
    except ValueError:
        return None


def missing_block(f: Facts) -> str:
    total = len(f.default_labels)
    cells_of: Dict[str, set] = {}
    for e in f.entries:
        if f.complete(e):
            cells_of.setdefault(e.method, set()).add(e.cell[1])
    everywhere = sorted(m for m, cells in cells_of.items() if len(cells) >= total)
    gradient = {c for m, cells in cells_of.items() if base(m) not in FROZEN for c in cells}
    cross = sorted(c for c in f.default_labels if "->" in c.split("/")[0])
    cross_done = sorted(c for c in cross if c in gradient)
    incomplete = sorted(r["method"] for r in f.overall if r["flags"] == "incomplete")
    return paragraph(
        f"Methods with every planned episode in all {total} suite cells: {listing([code(m) for m in everywhere])}. "
        f"Gradient-based rows (every method but {listing([code(m) for m in FROZEN])}) are complete in {len(gradient)} "
        f"of the {total} cells ({listing([code(c) for c in sorted(gradient)])}); cross-domain cells with one: "
        f"{len(cross_done)} of {len(cross)} ({listing([code(c) for c in cross_done])}). The overall table marks "
        f"{len(incomplete)} methods `incomplete` ({', '.join(incomplete) or 'none'}).")


def tuning_block(f: Facts) -> str:
    from fewshot_bench.core.config import read_yaml

    parts, pinned = [], []
    for path in f.paths.tuned:
        data = read_yaml(path, "tuned configs")
        budget = data.get("budget") or {}
        validated = sorted({chosen["validated_on"] for methods in (data.get("settings") or {}).values()
                            for chosen in methods.values() if chosen.get("validated_on")})
        notes = [f"study {budget.get('study')}"]
        if budget.get("pinned"):
            notes.append(f"pinned: {', '.join(code(item) for item in budget['pinned'])}")
        if validated:
            notes.append(f"validated on {listing([code(v) for v in validated])}, the source task's validation "
                         f"classes, the target task having none")
        parts.append(f"`{path.name}` {budget.get('trials')} trials × {budget.get('episodes')} validation episodes "
                     f"({'; '.join(notes)})")
        for setting, methods in (data.get("settings") or {}).items():
            for method, chosen in methods.items():
                if "meta_steps" in (chosen.get("overrides") or {}) and method == "fomaml":
                    pinned.append(f"{chosen['overrides']['meta_steps']} on {code(setting)}")
    return paragraph(f"Tuning budgets (`leaderboard/tuning/`): {'; '.join(parts)}"
                     + (f"; `fomaml`'s `meta_steps` pinned to {listing(sorted(set(pinned)))}" if pinned else "") + ".")


def overall_block(f: Facts) -> str:
    rows = [(code(r["method"]), f"{r['cells']}/{r['cells_total']}", f"{r['units']}/{r['units_total']}",
             "-" if r["acc_mean"] is None else f"{r['acc_mean']:.4f}",
             "-" if r["wins"] is None else f"{r['wins']}/{r['ties']}/{r['losses']}", f"{r['mean_rank_group']:.3f}",
             r["flags"] or "") for r in f.overall]
    return table(("method", "cells", "units", "accuracy over its units", f"wins/ties/losses vs `{REFERENCE}`",
                  "mean rank group", "flags"), rows)


TIMED_METHODS = ("protonet", "linear_probe", "setfit", "full_ft", "lora", "sgg", "fomaml", "maml")


def timing_block(f: Facts) -> str:
    """README (submitting a method): what each built-in method costs per episode on one core cell, frozen and
    trained, with its one-off costs apart."""
    cell = CELL_BULLETS[0]
    rows = []
    for method in TIMED_METHODS:
        entry = f.entry(cell, method)
        if entry is None or not f.complete(entry):
            rows.append((code(method), "not computed", "-", "-", "-"))
            continue
        row = entry.row
        rows.append((code(method), row["protocol"], n(int(row["trainable_params"] or 0)),
                     f"{row['sec_per_episode']:.3f}",
                     f"{row['meta_train_seconds']:.0f}" if row["meta_train_seconds"] else "-"))
    return paragraph(f"Per built-in method on {code(cell)} (the committed store: one torch thread per process on "
                     f"the shared 2-core CPU VM the campaign ran on; means over the row's ok episodes; `not "
                     f"computed`: the cell's row is not complete yet):") + "\n" + table(
        ("method", "protocol", "trainable parameters", "s/episode", "meta-training, once per cell (s)"), rows)
