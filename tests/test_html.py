"""leaderboard.html in a real headless Chromium: one row per method, sorting and filtering change the rows,
a cell's details open, nothing is fetched from the network; a screenshot is saved; the reference chosen on the
page (a select) recomputes every Δ and Holm p from the embedded pairs, as the Python comparison computes them, and
the mean Δ sort puts rows covering fewer of the reference's cells last."""
import csv
import json
import os
import re
import shutil
import subprocess
from html import unescape

import pytest

from fewshot_bench.cli import main
from fewshot_bench.store.results import ResultsStore

from helpers import REPO, build_store, record

SCRIPT_NAME = "</script><b id=injected>x</b>"  # a method name that must stay text


def chromium() -> str:
    """The Chromium binary; CI installs it (.ci/run), elsewhere the test skips when it is absent."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI"):
        pytest.fail("CI must provide Chromium (.ci/run installs the OS package 'chromium')")
    pytest.skip("Chromium is not installed (apt-get install chromium); the HTML page is tested in a real browser")


def browse(page, fragment: str = "", *flags: str) -> str:
    """Chromium headless on ``page#fragment``; returns the DOM after the page's scripts ran (or '' for a
    screenshot)."""
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--user-data-dir=" + str(page.parent / "profile"), *flags,
                           *(() if flags else ("--dump-dom",)), f"file://{page}#{fragment}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def methods_shown(dom: str) -> list:
    return [unescape(m) for m in re.findall(r'<tr data-method="([^"]*)"', dom)]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    folder = tmp_path_factory.mktemp("board")
    store = folder / "s.sqlite"
    build_store(store)
    with ResultsStore(store) as opened:
        for i in range(10):
            opened.write_episode(record(method=SCRIPT_NAME, episode_index=i, accuracy=0.45))
    assert main(["leaderboard", "--store", str(store), "--out", str(folder / "leaderboard.csv"),
                 "--bootstrap", "200"]) == 0
    with open(folder / "leaderboard.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return folder / "leaderboard.html", rows


def _mean_accuracy(rows, method):
    values = [float(r["acc_mean"]) for r in rows if r["method"].lstrip("'") == method and r["acc_mean"]]
    return sum(values) / len(values)


def test_page_is_self_contained(board):
    page, _ = board
    text = page.read_text()
    assert not re.search(r'<(script|img|link)[^>]+(src|href)="(?!data:)', text)  # no file or network fetch
    assert SCRIPT_NAME not in text and "<\\/script><b id=injected>" in text  # JSON cannot close its script


def test_one_row_per_method_and_sorting_changes_the_order(board):
    page, rows = board
    methods = {r["method"].lstrip("'") for r in rows}
    shown = methods_shown(browse(page))
    assert sorted(shown) == sorted(methods) and len(shown) == len(methods)
    by_accuracy = sorted(methods, key=lambda m: -_mean_accuracy(rows, m))
    descending = methods_shown(browse(page, "sort=acc&dir=desc"))
    assert descending == by_accuracy and methods_shown(browse(page, "sort=acc&dir=asc")) == by_accuracy[::-1]
    assert methods_shown(browse(page, "sort=method&dir=asc")) == sorted(methods)
    assert descending != shown or methods_shown(browse(page, "sort=acc&dir=asc")) != shown


def test_filters_change_the_rows_and_cells(board):
    page, rows = board
    meta = methods_shown(browse(page, "protocol=meta-trained"))
    assert sorted(meta) == sorted({r["method"] for r in rows if r["protocol"] == "meta-trained"}) == ["anil", "maml"]
    dom = browse(page, "backbone=%2Bbert")
    assert methods_shown(dom) == ["-x"] and "1 methods × 1 cells shown" in dom
    assert "injected" not in re.sub(r"<script.*?</script>", "", dom, flags=re.S).replace("&lt;b id=injected&gt;", "")


def _detail(dom: str) -> str:
    detail = dom[dom.index('<section id="detail"'):]
    return detail[:detail.index("</section>")]


def test_a_cell_opens_its_forest_plot_rank_groups_and_power(board):
    page, _ = board
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page.read_text(), re.S)[1])
    cells = {(c["task"], c["backbone"]): c for c in data["cells"]}
    demo = cells["demo", "minilm"]["id"]
    compared = [r for r in data["rows"] if r["cell"] == demo and r["delta_vs_ref"] is not None]
    dom = browse(page, f"detail={demo}")
    detail = _detail(dom)
    assert "hidden" not in detail.split(">", 1)[0] and "Rank groups" in detail
    assert "<svg" in detail and detail.count("<circle") == len(compared) >= 3 and "detectable difference" in detail
    assert "did not run in this cell" in _detail(browse(page, f"detail={cells['demo', '+bert']['id']}"))
    assert "Provenance" in dom and "environment 1" in dom and "threads" in dom


def test_screenshot(board):
    page, _ = board
    shot = page.parent / "leaderboard_html.png"
    browse(page, "", f"--screenshot={shot}", "--window-size=1400,1000", "--hide-scrollbars")
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1400, 1000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # a rendered page, not a blank one


def test_the_committed_page_shows_every_committed_method(tmp_path):
    committed = REPO / "leaderboard"
    page = tmp_path / "leaderboard.html"  # a copy: Chromium's profile folder goes beside it, not into the repo
    page.write_bytes((committed / "leaderboard.html").read_bytes())
    with open(committed / "leaderboard.csv", newline="") as handle:
        methods = {r["method"] for r in csv.DictReader(handle)}
    assert sorted(methods_shown(browse(page))) == sorted(methods)
    from PIL import Image

    for picture in ("leaderboard.png", "leaderboard_page.png"):  # the summary figure and the page's screenshot
        with Image.open(committed / picture) as image:
            assert image.size[1] < 2000


def _interact(page, script: str, fragment: str = "") -> str:
    """The DOM after ``script`` ran once the page's own script did (a copy of the page with it appended)."""
    driven = page.with_name("driven.html")
    driven.write_text(page.read_text().replace("</body>", f"<script>{script}</script></body>"))
    return browse(driven, fragment)


def _row(dom: str, method: str) -> str:
    return re.search(rf'<tr data-method="{re.escape(method)}"[^>]*>(.*?)</tr>', dom, re.S)[1]


def _shown_deltas(dom: str, method: str) -> dict:
    """{cell id: (Δ, Holm p)} of a method's cells as the DOM shows them ('' where not compared)."""
    return {int(c): (d, p) for c, d, p in re.findall(r'data-cell="(\d+)" data-delta="([^"]*)" data-p-holm="([^"]*)"',
                                                      _row(dom, method))}


@pytest.fixture(scope="module")
def chosen(tmp_path_factory):
    """full_ft and sgg in two cells (folds 1 and 2), lora in the first only and best there; the page generated with
    lora as its reference."""
    folder = tmp_path_factory.mktemp("chosen")
    store = folder / "results.sqlite"
    with ResultsStore(store) as opened:
        for fold in (1, 2):
            setting = f"demo/fold{fold}/5way5shot15q"
            for i in range(10):
                base = 0.6 + 0.02 * i
                cell = dict(setting=setting, fold=fold, episode_index=i)
                opened.write_episode(record(method="full_ft", accuracy=base, **cell))
                opened.write_episode(record(method="sgg", accuracy=base + (0.02 if fold == 1 else 0.004) * (1 + i % 3)
                                            - (0.01 if i == 4 else 0), **cell))
                if fold == 1:
                    opened.write_episode(record(method="lora", accuracy=min(1.0, base + 0.2), **cell))
    assert main(["leaderboard", "--store", str(store), "--out", str(folder / "leaderboard.csv"), "--bootstrap", "200",
                 "--reference", "lora"]) == 0
    return folder / "leaderboard.html", store


def test_the_reference_is_chosen_on_the_page(chosen):
    from fewshot_bench.analysis import compare
    from fewshot_bench.analysis.entries import load_entries

    page, store = chosen
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page.read_text(), re.S)[1])
    fold = {c["id"]: c["fold"] for c in data["cells"]}
    assert data["reference"] == "lora" and data["methods"] == ["full_ft", "lora", "sgg"]
    default = browse(page)
    shown = _shown_deltas(default, "sgg")  # vs lora: compared in fold 1 only
    assert [fold[c] for c, (d, _) in shown.items() if d] == [1] and "1/1 cells" in _row(default, "sgg")
    entries = load_entries(store, 200, class_level=False)
    compare.annotate(entries, "full_ft", 200)
    expected = {e.row["fold"]: e.row for e in entries if e.method == "sgg"}
    dom = _interact(page, 'const ref = document.getElementById("reference"); ref.value = "full_ft";'
                          'ref.dispatchEvent(new Event("change"));')
    shown = _shown_deltas(dom, "sgg")
    assert len(shown) == 2
    for cell, (delta, p_holm) in shown.items():
        row = expected[fold[cell]]
        assert abs(float(delta) - row["delta_vs_ref"]) < 1e-4 and float(p_holm) == row["p_holm"]
        tooltip = re.search(rf'title="([^"]*)" data-cell="{cell}"', _row(dom, "sgg"))[1]
        assert f"[{row['delta_ci95_low']:+.4f}, {row['delta_ci95_high']:+.4f}]" in unescape(tooltip)
    assert expected[1]["p_holm"] < 0.05 and "▲" in _row(dom, "sgg")  # significant in fold 1: marked
    assert "Holm-adjusted p" in dom and "unadjusted" in dom  # the one significance rule, stated
    assert "1/2 cells" in _row(dom, "lora") and 'class="partial"' in dom  # lora lacks fold 2: marked


def test_sorting_by_mean_delta_puts_incomplete_rows_last(chosen):
    page, _ = chosen
    choose = ('const ref = document.getElementById("reference"); ref.value = "full_ft";'
              'ref.dispatchEvent(new Event("change"));')
    # lora's mean Δ (+0.2, over its one shared cell) is the highest, but it covers 1 of 2 cells: after the others
    by_delta = _interact(page, choose + 'document.querySelector(\'th[data-sort="delta"]\').click();')
    assert methods_shown(by_delta) == ["sgg", "full_ft", "lora"]
    by_name = _interact(page, choose + 'const s = document.getElementById("sort-by"); s.value = "method";'
                                       's.dispatchEvent(new Event("change"));')
    assert methods_shown(by_name) == ["full_ft", "lora", "sgg"]
    by_coverage = methods_shown(browse(page, "ref=full_ft&sort=coverage&dir=desc"))
    assert by_coverage[-1] == "lora"


@pytest.fixture(scope="module")
def isolated(tmp_path_factory):
    """One cell: full_ft's episodes ran in a sealed worker ('process'), lora's in-process, protonet's under both."""
    folder = tmp_path_factory.mktemp("isolated")
    store = folder / "results.sqlite"
    with ResultsStore(store) as opened:
        for i in range(6):
            opened.write_episode(record(method="full_ft", episode_index=i, accuracy=0.6, isolation="process"))
            opened.write_episode(record(method="lora", episode_index=i, accuracy=0.7, isolation="in-process"))
            opened.write_episode(record(method="protonet", episode_index=i, accuracy=0.5,
                                        isolation="process" if i % 2 else "in-process"))
    assert main(["leaderboard", "--store", str(store), "--out", str(folder / "leaderboard.csv"),
                 "--bootstrap", "200"]) == 0
    return folder


EXPECTED_ISOLATION = {"full_ft": "process", "lora": "in-process", "protonet": "in-process, process"}


def test_the_markdown_cell_table_shows_the_isolation_reached(isolated):
    lines = (isolated / "leaderboard.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| rank group |"))
    column = [c.strip() for c in header.split("|")].index("isolation")
    for method, expected in EXPECTED_ISOLATION.items():
        row = next(line for line in lines if re.match(rf"\| \d+ \| {method} \|", line))
        assert [c.strip() for c in row.split("|")][column] == expected


def test_the_page_shows_the_isolation_reached(isolated):
    page = isolated / "leaderboard.html"
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page.read_text(), re.S)[1])
    assert {r["method"]: r["isolation"] for r in data["rows"]} == {
        m: v.replace(", ", ";") for m, v in EXPECTED_ISOLATION.items()}
    dom = browse(page, "detail=0")
    for method, expected in EXPECTED_ISOLATION.items():
        assert re.search(r'<td class="isolation">([^<]*)</td>', _row(dom, method))[1] == expected  # the table
        assert f"<td>{method}</td><td>target-only</td><td>{expected}</td>" in _detail(dom)  # the cell's details
        assert f"isolation {expected}" in unescape(re.search(r'title="([^"]*)" data-cell="0"', _row(dom, method))[1])
    assert "<dt>isolation</dt><dd>in-process, process</dd>" in dom  # provenance: the levels reached
