"""The film page (pipeline/report/film.py) on planted watch.jsonl files: numbers as written, sentences that flip.

The planted records are written here by hand, so the expected numbers and sentences come from the test, not
from the code under test; the page is parsed with Python's own HTML parser.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.probe.watch import append_line
from pipeline.report.film import STILL_RATIO, VANISH_RATIO, lesson, write_film

BLOCKS = ("model.0", "model.1", "model.22.cv3.2.1")


def planted(path, first_grad: float, last_grad: float, update: float = 0.05, off: float = 0.0, gamma_small=0.0,
            n: int = 3):
    """Write ``n`` records: grad norms of the first and last block given, the middle one in between."""
    for k in range(n):
        blocks = {}
        for i, b in enumerate(BLOCKS):
            grad = (first_grad, (first_grad + last_grad) / 2, last_grad)[i] * (1 + k)
            blocks[b] = {"grad_norm": grad, "grad_batches": 2, "weight_norm": 3.0 + k, "update_ratio": update * (i + 1),
                         "gamma_mean": 1.0 - 0.1 * k - 0.01 * i, "gamma_min": 0.5, "gamma_small": gamma_small,
                         "z_mean": 0.1, "z_std": 1.0, "frac_off": off * i, "frac_bend": 0.8, "post_mean": 0.3}
        rec = {"epoch": k, "batch": 4 * (k + 1), "step": 4 * (k + 1), "kind": "epoch", "epoch_progress": k + 1.0,
               "batches_per_epoch": 4, "lr": 0.01, "loss": {"box_loss": 1.0}, "first_block": BLOCKS[0],
               "last_block": BLOCKS[-1], "grad_first_last": first_grad / last_grad, "blocks": blocks,
               "probe": {"image": "p.jpg", "path": "/nonexistent/p.jpg", "imgsz": [64, 64], "class_id": 0,
                         "class_name": "crack", "anchor": 3, "logit": -2.0 + k, "sigmoid": 1 / (1 + 2.718281828 ** (2.0 - k)),
                         "box": [1, 2, 30, 40], "neuron": {"block": "model.1", "channel": 0, "y": 1, "x": 1, "z": 0.5 * k}},
               "ap50": {"crack": 0.1 * k, "dent": 0.2 * k}, "mAP50": 0.15 * k}
        append_line(path, rec)
    return [json.loads(line) for line in path.read_text().splitlines()]


class Cells(HTMLParser):
    """Every element carrying ``data-v``, with its SVG's ``data-q``; and every ``li.lesson`` text."""

    def __init__(self):
        super().__init__()
        self.cells, self.q, self.lesson, self._li, self.urls = [], None, [], False, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg":
            self.q = a.get("data-q")
        if "data-v" in a:
            self.cells.append((self.q, a.get("data-block") or a.get("data-series"), a.get("data-rec"), a["data-v"]))
        if tag == "li" and a.get("class") == "lesson":
            self._li = True
            self.lesson.append("")
        for k in ("src", "href"):
            if k in a:
                self.urls.append(a[k])

    def handle_endtag(self, tag):
        if tag == "li":
            self._li = False

    def handle_data(self, data):
        if self._li:
            self.lesson[-1] += data


def parse(path) -> Cells:
    p = Cells()
    p.feed(path.read_text())
    return p


def test_page_numbers_are_the_jsonl_numbers(tmp_path):
    records = planted(tmp_path / "watch.jsonl", first_grad=0.5, last_grad=1.0)
    page = parse(write_film(tmp_path))
    for q in ("grad_norm", "update_ratio", "frac_off", "gamma_mean"):
        cells = [c for c in page.cells if c[0] == q]
        assert len(cells) == len(BLOCKS) * len(records)
        for _, block, rec, v in cells:
            assert float(v) == records[int(rec)]["blocks"][block][q]  # exact: repr() of the float written
    sig = [float(v) for q, _, _, v in page.cells if q == "sigmoid"]
    assert sig == [r["probe"]["sigmoid"] for r in records]
    crack = [float(v) for q, s, _, v in page.cells if q == "ap50" and s == "crack"]
    assert crack == [r["ap50"]["crack"] for r in records]
    # offline: nothing to fetch (the probe photo is missing here, so no image either)
    assert not [u for u in page.urls if not u.startswith(("#", "data:"))]
    assert "<script" not in (tmp_path / "film.html").read_text()


def test_vanish_is_said_only_when_the_ratio_says_so(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    small = planted(tmp_path / "a" / "watch.jsonl", first_grad=VANISH_RATIO / 10, last_grad=1.0)
    large = planted(tmp_path / "b" / "watch.jsonl", first_grad=VANISH_RATIO * 10, last_grad=1.0)
    said_small = parse(write_film(tmp_path / "a")).lesson
    said_large = parse(write_film(tmp_path / "b")).lesson
    assert said_small[0].startswith("The gradient vanished") and "0.0010 times" in said_small[0]
    assert said_large[0].startswith("The gradient did not vanish") and "0.1000 times" in said_large[0]
    assert not any("vanished" in s for s in said_large)
    assert f"{VANISH_RATIO:.4f}" in said_small[0] and f"{VANISH_RATIO:.4f}" in said_large[0]  # the threshold, stated
    assert lesson(small) == said_small and lesson(large) == said_large


def test_sentences_flip_with_updates_off_units_and_gamma(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    moving = lesson(planted(tmp_path / "a" / "watch.jsonl", 1.0, 1.0, update=STILL_RATIO * 5, off=0.0))
    still = lesson(planted(tmp_path / "b" / "watch.jsonl", 1.0, 1.0, update=STILL_RATIO / 2, off=0.25,
                           gamma_small=0.5))
    assert any(s.startswith("At the last record every block still moved: the slowest, model.0, by 0.5%") for s in moving)
    # planted update ratios: STILL_RATIO / 2 times 1, 2, 3 -> only the first block is below STILL_RATIO
    assert any(s.startswith("At the last record 1 of 3 blocks had nearly stopped moving") and s.endswith(": model.0.")
               for s in still)
    assert any(s.startswith("No block had a pre-activation below -4") for s in moving)
    # the planted frac_off is 0.25 * block index: the last block has the most, 50 %
    assert any("model.22.cv3.2.1 had the most nearly-off pre-activations: 50% of its z below -4" in s for s in still)
    assert any(s.startswith("No BatchNorm scale collapsed") for s in moving)
    assert any(s.startswith("BatchNorm scaled some channels to nearly nothing: in 3 blocks") for s in still)
    ap = [s for s in still if s.startswith("At the last validation")]
    assert ap == ["At the last validation (e3 b12) AP50 was highest for dent (0.4000) and lowest for crack (0.2000)."]
    # the first record's AP is 0 for both classes: no class is named highest
    assert lesson(planted(tmp_path / "c.jsonl", 1.0, 1.0, n=1))[-1] == (
        "At the last validation (e1 b4) AP50 was 0.0000 for every class.")
    probe = [s for s in still if s.startswith("The probe photo's top box")][0]
    assert "logit -2.000" in probe and "logit 0" in probe and probe.endswith("its score rose.")


def test_film_command(tmp_path, capsys):
    assert main(["film", str(tmp_path)]) == 1  # no watch.jsonl: an error line, not a traceback
    err = capsys.readouterr().err
    assert "no watch.jsonl here: train with --watch" in err
    planted(tmp_path / "watch.jsonl", 1.0, 2.0)
    assert main(["film", str(tmp_path), "--out", str(tmp_path / "f.html")]) == 0
    assert re.search(r"film: .*f\.html", capsys.readouterr().out)


def test_film_out_replaces_only_an_earlier_film(tmp_path, capsys):
    """--out names a file: it must be .html, never the watch.jsonl read, and a page of the user's (or a link)
    is kept unless --overwrite; an earlier film page (its generator meta) is replaced."""
    planted(tmp_path / "watch.jsonl", 1.0, 2.0)
    jsonl = (tmp_path / "watch.jsonl").read_bytes()
    assert main(["film", str(tmp_path), "--out", str(tmp_path / "watch.jsonl")]) == 1
    assert "watch.jsonl: is an input of this command" in capsys.readouterr().err
    assert main(["film", str(tmp_path), "--out", str(tmp_path / "film.txt")]) == 1
    assert "expected a file name ending in .html" in capsys.readouterr().err
    mine = tmp_path / "notes.html"
    mine.write_text("<!DOCTYPE html>\n<html><body>my notes</body></html>\n")
    assert main(["film", str(tmp_path), "--out", str(mine)]) == 1
    assert f"error: {mine}: exists and is not an earlier output of cardamage film" in capsys.readouterr().err
    assert mine.read_text().endswith("my notes</body></html>\n") and (tmp_path / "watch.jsonl").read_bytes() == jsonl
    assert main(["film", str(tmp_path)]) == 0 and main(["film", str(tmp_path)]) == 0  # its own page: replaced
    page = tmp_path / "film.html"
    noted = page.read_text().replace("</body>", "<p>my notes</p></body>")  # its own page, edited since: kept
    page.write_text(noted)
    assert main(["film", str(tmp_path)]) == 1 and page.read_text() == noted
    assert f"error: {page}: exists and is not an earlier output of cardamage film" in capsys.readouterr().err
    assert main(["film", str(tmp_path), "--out", str(mine), "--overwrite"]) == 0
    assert "my notes" not in mine.read_text()
    capsys.readouterr()


@pytest.mark.parametrize("bad", ["", '{"epoch": 0, "st'])
def test_film_of_an_empty_or_torn_only_file_is_an_error(tmp_path, bad, capsys):
    (tmp_path / "watch.jsonl").write_text(bad)
    assert main(["film", str(tmp_path)]) != 0
    assert "holds no record yet" in capsys.readouterr().err


@pytest.mark.browser
def test_film_page_in_chromium_is_offline_and_shows_the_numbers(tmp_path):
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    from pipeline.core.io import atomic_write_image
    from pipeline.data.synth import render_scene

    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail(f"{chromium} missing: apt-get install -y chromium")
    scene, _ = render_scene(3, 64)
    photo = atomic_write_image(tmp_path / "p.jpg", scene)
    records = planted(tmp_path / "watch.jsonl", 0.5, 1.0)
    lines = [json.dumps({**r, "probe": {**r["probe"], "path": str(photo)}}) for r in records]
    (tmp_path / "watch.jsonl").write_text("\n".join(lines) + "\n")
    page_path = write_film(tmp_path)
    url = page_path.resolve().as_uri()
    errors, remote = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith((url, "data:")) else remote.append(r.url))
            page.goto(url)
            assert page.locator('svg.heat[data-q="grad_norm"] rect').count() == len(BLOCKS) * len(records)
            title = page.text_content('svg.heat[data-q="update_ratio"] rect[data-block="model.1"][data-rec="2"] title')
            assert title.endswith(repr(records[2]["blocks"]["model.1"]["update_ratio"]))
            # the photo is drawn (decoded: it has a size) and the boxes lie on it
            size = page.evaluate("(() => { const i = document.querySelector('svg.probe image');"
                                 " return i.getBBox().width; })()")
            assert size > 0
            boxes = page.locator("svg.probe rect")
            assert boxes.count() == len(records)
            lesson_text = page.locator("li.lesson").all_text_contents()
            assert lesson_text == lesson(read_back(tmp_path))
            # every text of a heatmap lies inside its own svg: nothing is clipped (a new user read a colour
            # caption cut off mid-sentence and a last column label cut short)
            outside = page.evaluate("""[...document.querySelectorAll('svg.heat')].flatMap(svg => {
                const b = svg.getBoundingClientRect();
                return [...svg.querySelectorAll('text')].map(t => [t.textContent, t.getBoundingClientRect()])
                  .filter(([, r]) => r.left < b.left - 0.5 || r.right > b.right + 0.5 || r.top < b.top - 0.5
                                     || r.bottom > b.bottom + 0.5).map(([s]) => s); })""")
            assert outside == []
        finally:
            browser.close()
    assert not errors and not remote, (errors, remote)


def read_back(folder):
    return [json.loads(line) for line in (folder / "watch.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("film", [None, "../film.html"])
def test_report_header_links_the_film_only_when_there_is_one(film):
    from pipeline.report.render import render_page

    info = {"image": "p.jpg", "image_sha256": "ab" * 32, "weights": "best.pt", "weights_sha256": None,
            "untrained": False, "seed": 0, "imgsz": 64, "conf": 0.25, "film": film,
            "versions": {"ultralytics": "8", "torch": "2"}}
    html = render_page(info, [], {}, [])
    links = re.findall(r'<a class="film" href="([^"]*)"', html)
    assert links == ([film] if film else [])


def test_compare_sentences_and_numbers_follow_the_runs(tmp_path):
    from pipeline.report.film import compare_lesson, write_compare

    for name in ("silu", "sigmoid"):
        (tmp_path / name).mkdir()
    silu = planted(tmp_path / "silu" / "watch.jsonl", first_grad=0.5, last_grad=1.0)
    sigmoid = planted(tmp_path / "sigmoid" / "watch.jsonl", first_grad=VANISH_RATIO / 4, last_grad=1.0)
    said = compare_lesson({"silu": silu, "sigmoid": sigmoid})
    assert said[0] == ("With silu, at the last record the first block's gradient norm was 0.5000 times the last "
                       "block's: it did not vanish (that takes a ratio below 0.0100).")
    assert said[1] == ("With sigmoid, at the last record the first block's gradient norm was 0.0025 times the last "
                       "block's: it vanished (below 0.0100).")
    # the stem's mean over records: planted grad * (1 + k) for k = 0, 1, 2 -> 2 x the planted value
    assert said[2] == "The stem's mean gradient norm with sigmoid was 0.0050 times SiLU's (0.0050 against 1.0000)."
    assert said[3] == "After 3 epochs the training loss (box + cls + dfl) was 1.0000 with silu, 1.0000 with sigmoid: lowest with silu and sigmoid alike."
    page = parse(write_compare(tmp_path))
    assert page.lesson == compare_lesson({"sigmoid": sigmoid, "silu": silu})  # folders read in name order
    grads = [(s, float(v)) for q, s, _, v in page.cells if q == "grad_depth"]
    assert grads[0] == ("sigmoid", float(np.mean([r["blocks"]["model.0"]["grad_norm"] for r in sigmoid])))
    assert grads[len(BLOCKS)] == ("silu", float(np.mean([r["blocks"]["model.0"]["grad_norm"] for r in silu])))
