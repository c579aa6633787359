"""``report.html`` of ``dsxai bench``: written with the run and listed in its manifest, every method and
baseline row with its results.json numbers, strings from data escaped, links only to the run's own files,
and (when a Chromium is installed) rendered in a headless browser."""
from __future__ import annotations

import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import pytest

from dsxai import bench
from dsxai.bench.page import report_html, run_timings
from conftest import find_chromium  # noqa: E402

HOSTILE = "<script>alert(1)</script>"
BAD_FILE = "<img src=x onerror=alert(2)>&'.png"  # a file name that is also markup
METHODS = ["layercam", "hirescam"]


class _Page(HTMLParser):
    """The tables (id -> rows of cell texts, each row's class), script bodies and link targets of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[str, list[str]]]] = {}
        self.links: list[str] = []
        self.scripts = 0
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append((a.get("class") or "", []))
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "img":
            self.links.append(a["src"])
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1][1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _ci(summary: dict) -> str:
    """A results-table cell as the page shows it (its markup removed): the mean, then the CI."""
    if summary["mean"] is None:
        return "\u2013"
    lo, hi = summary["ci95"]
    return f"{summary['mean']:.3f}[{lo:.3f}, {hi:.3f}]"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small shapes-world run whose disc category is named like a script and one image file like markup
    (that image is broken, so it fails and its name lands in the failed-images table)."""
    root = tmp_path_factory.mktemp("bench_report")
    ann, images = bench.write_synthetic_coco(root / "data", scenes=4)
    doc = json.loads(ann.read_text())
    for cat in doc["categories"]:
        if cat["name"] == "disc":
            cat["name"] = HOSTILE
    broken = doc["images"][-1]
    (images / broken["file_name"]).unlink()
    (images / BAD_FILE).write_bytes(b"not an image")
    broken["file_name"] = BAD_FILE
    ann.write_text(json.dumps(doc))
    out = root / "out"
    results = bench.run_benchmark("shapes-yolo", ann, images, out, methods=METHODS, faithfulness=False, gallery=1,
                                  progress=False, class_map={"disc": HOSTILE, "square": "square",
                                                             "triangle": "triangle", "ring": "ring"})
    return out, results


def test_report_is_written_listed_and_holds_every_row_of_results_json(run):
    out, results = run
    report = out / bench.REPORT
    assert report.is_file() and bench.REPORT in json.loads((out / bench.MANIFEST).read_text())["files"]
    stored = json.loads((out / bench.RESULTS).read_text())
    page = _parse(report.read_text())
    header, *rows = page.tables["results"]
    shown = [c.replace(" ", "_") for c in header[1][3:]]
    assert "pointing_game_box" in shown and "energy_box" in shown and "deletion_auc" not in shown  # off
    by_name = {cells[0]: (cls, cells) for cls, cells in rows}
    assert set(by_name) == set(METHODS) | set(bench.BASELINES)
    for kind in ("methods", "baselines"):
        for name, entry in stored[kind].items():
            cls, cells = by_name[name]
            assert cls == kind[:-1] and cells[2] == str(entry["n_pairs"]) and entry["n_pairs"] > 0
            assert cells[3:] == [_ci(entry[k]) for k in shown], name
    # per category: one row per (category, method or baseline), its means as in results.json
    _, *cat_rows = page.tables["categories"]
    expected = {(cat, name): f for kind in ("methods", "baselines") for name, e in stored[kind].items()
                for cat, f in e["per_category"].items()}
    assert len(cat_rows) == len(expected) and (HOSTILE, "layercam") in expected
    for _, cells in cat_rows:
        figures = expected[(cells[0], cells[1])]
        assert cells[2] == str(figures["n_pairs"])
        assert cells[3:] == ["\u2013" if figures[k] is None else f"{figures[k]:.3f}" for k in shown]
    timed = {cells[0]: cells for _, cells in page.tables["timings"][1:]}
    assert set(timed) == set(METHODS) and all(int(c[1]) == results["counts"]["images_ok"] for c in timed.values())
    config = {cells[0]: cells[1] for _, cells in page.tables["config"]}
    assert config["methods"] == json.dumps(METHODS) and config["annotations"] == stored["config"]["annotations"]


def test_strings_from_data_are_escaped(run):
    out, results = run
    text = (out / bench.REPORT).read_text()
    assert results["counts"]["images_failed"] == 1 and results["errors"][0]["file_name"] == BAD_FILE
    assert HOSTILE not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = _parse(text)
    assert page.scripts == 1  # the page's own sorting script, nothing from data
    failed = page.tables["errors"][1:]
    assert [cells[0] for _, cells in failed] == [BAD_FILE]  # shown as text, read back intact


def test_links_point_only_to_files_of_the_output_folder(run):
    out, _ = run
    links = _parse((out / bench.REPORT).read_text()).links
    assert "metrics.png" in links and {f"gallery/{m}.png" for m in METHODS} <= set(links)
    for m in METHODS:  # each gallery tile is at least 320 px a side (dsxai.render.PANEL_PX), with 4 px padding
        assert min(cv2.imread(str(out / "gallery" / f"{m}.png")).shape[:2]) >= 320 + 2 * 4
    assert {bench.RESULTS, bench.PAIRS, bench.SUMMARY} <= set(links)
    listed = set(json.loads((out / bench.MANIFEST).read_text())["files"])
    for href in links:  # relative, inside the folder, written by this run
        assert not href.startswith(("/", "http", "file:")) and ".." not in Path(href).parts, href
        assert (out / href).is_file() and href in listed, href


def test_a_page_without_pictures_links_nothing_and_escapes_crafted_results():
    summary = {"mean": 0.5, "ci95": [0.25, 0.75], "n": 2}
    entry = {"n_pairs": 2, "energy_box": summary, "per_category": {HOSTILE: {"n_pairs": 2, "energy_box": 0.5}}}
    results = {"config": {"model": HOSTILE, "methods": ["gradcam"], "categories": [HOSTILE], "match_iou": 0.5,
                          "tolerance": 15.0, "threshold": 0.5, "faithfulness": False, "steps": 20, "seed": 0},
               "counts": {k: 2 for k in ("images_ok", "images_failed", "gt", "detections", "matched",
                                         "unmatched_detections", "missed_gt")},
               "methods": {"gradcam": entry}, "baselines": {"uniform": entry},
               "errors": [{"image_id": 3, "file_name": BAD_FILE, "error": f"OSError: {HOSTILE}"}]}
    text = report_html(results, ["energy_box"])
    page = _parse(text)
    assert page.links == [] and page.scripts == 1 and HOSTILE not in text and "<img src=x" not in text
    assert page.tables["results"][1][1][3] == "0.500[0.250, 0.750]"
    assert page.tables["errors"][1][1] == [BAD_FILE, f"OSError: {HOSTILE}"]


def test_run_timings_sum_the_ok_records():
    records = [{"status": "ok", "seconds": {"gradcam": 1.0, "layercam": 0.5}},
               {"status": "ok", "seconds": {"gradcam": 3.0}},
               {"status": "error", "seconds": {"gradcam": 100.0}}]
    t = run_timings(records)
    assert t["gradcam"] == {"images": 2, "total_s": 4.0, "mean_s": 2.0}
    assert t["layercam"] == {"images": 1, "total_s": 0.5, "mean_s": 0.5}


def test_report_renders_in_a_browser(run, tmp_path):
    out, _ = run
    browser = find_chromium()
    if browser is None:
        pytest.skip("no chromium binary (Debian: apt-get install -y chromium); the HTML itself was checked")
    shot = tmp_path / "report.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1280,2400", f"--screenshot={shot}", (out / bench.REPORT).resolve().as_uri()],
                          capture_output=True, text=True, timeout=90)
    assert shot.is_file(), proc.stderr[-2000:]
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.shape[:2] == (2400, 1280) and picture.std() > 20  # not blank
    # the plot's bars and the gallery's heatmaps render: strongly coloured pixels, which text never has
    hsv = cv2.cvtColor(picture, cv2.COLOR_BGR2HSV)
    assert ((hsv[..., 1] > 150) & (hsv[..., 2] > 100)).sum() > 5000
