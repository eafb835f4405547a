"""The explorer page in Debian's Chromium, on the real server (uvicorn on 127.0.0.1, a free port).

Clicks a detection and a feature-map pixel and reads on the page the numbers /api/neuron and
/api/detections give; two browser contexts at once; no console error; no request leaves loopback.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from checkpoints import save_checkpoint

from pipeline.core.io import atomic_write_image
from pipeline.data.synth import render_scene
from pipeline.explore.app import running
from pipeline.explore.session import Explorer
from pipeline.model.load import load_model

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
IMGSZ = 320


@pytest.fixture(scope="module")
def server(tmp_path_factory, sample_images):
    root = tmp_path_factory.mktemp("explore_browser")
    ckpt = save_checkpoint(root / "best.pt", seed=2, imgsz=IMGSZ)
    scene, _ = render_scene(11, 384)
    photos = [atomic_write_image(root / "scene.png", scene), sample_images[1]]
    with running(Explorer(load_model(str(ckpt)), photos, imgsz=IMGSZ)) as base:
        yield base


def watch(page, base: str, errors: list, remote: list) -> None:
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith((base + "/", "data:")) else remote.append(r.url))


def click_neuron(page, layer: str, channel: int, fx: float, fy: float) -> dict:
    """Click ``layer``'s button, its channel's thumbnail, then the post map at fractions (fx, fy) of its size."""
    page.click(f'#stages button[data-layer="{layer}"]')
    page.click(f'#channels figure[data-channel="{channel}"]')
    page.wait_for_selector('#map-post[data-ready="1"]')
    box = page.locator("#map-post").bounding_box()
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    page.wait_for_selector('#neuron[data-ready="1"]')
    w, h = page.evaluate("[document.getElementById('map-post').width, document.getElementById('map-post').height]")
    pos = {k: int(page.get_attribute("#neuron", f"data-{k}")) for k in ("y", "x")}
    assert abs(pos["x"] - fx * w) <= 1.5 and abs(pos["y"] - fy * h) <= 1.5, (pos, fx * w, fy * h)  # where clicked
    return pos


@pytest.mark.browser
def test_page_shows_the_apis_numbers(server, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    dets = httpx.get(f"{server}/api/detections", params={"photo": 0}).json()
    assert dets, "the checkpoint must report boxes on the scene"
    errors, remote = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages = [browser.new_context(viewport={"width": 1400, "height": 1000}).new_page() for _ in range(2)]
            for page in pages:
                watch(page, server, errors, remote)
            for page in pages:  # both ask for the first view at once: one run is built, both get it
                page.goto(server + "/", wait_until="commit")
            for page in pages:
                page.wait_for_selector('#status[data-state="ready"]', timeout=60_000)
            a, b = pages
            # a detection: its class logits and sigmoids are the API's
            a.click('#detections tr[data-index="0"]')
            shown = a.eval_on_selector_all("#det-logits tbody td.logit", "tds => tds.map(t => t.textContent)")
            sig = a.eval_on_selector_all("#det-logits tbody td.sigmoid", "tds => tds.map(t => t.textContent)")
            assert [float(v) for v in shown] == pytest.approx(dets[0]["logits"], rel=1e-5)
            assert [float(v) for v in sig] == pytest.approx(dets[0]["sigmoids"], rel=1e-5, abs=1e-12)
            assert all(len(v.replace("-", "").replace(".", "").lstrip("0")) <= 6 for v in shown + sig if "e" not in v)
            full = a.eval_on_selector_all("#det-logits tbody td.logit", "tds => tds.map(t => t.title)")
            assert [float(v) for v in full] == dets[0]["logits"]  # hover: the API's value, every digit
            a.wait_for_function("document.getElementById('cam-img').naturalWidth > 0")
            # a feature-map pixel, in both contexts, different layers
            for page, (layer, ch, fx, fy) in ((a, ("model.2.cv1", 3, 0.4, 0.6)), (b, ("model.15.cv2", 5, 0.7, 0.2))):
                pos = click_neuron(page, layer, ch, fx, fy)
                api = httpx.get(f"{server}/api/neuron", params={"photo": 0, "layer": layer, "channel": ch, **pos}).json()
                assert float(page.get_attribute("#neuron-z", "data-value")) == api["z_by_hand"]
                assert float(page.text_content("#neuron-silu")) == api["silu_by_hand"]
                assert float(page.text_content("#neuron-fw")) == api["framework_value"]
                assert page.locator("#rf-box").count() == 1
                top, bottom, view = page.evaluate("(() => { const r = document.getElementById('neuron')"
                                                  ".getBoundingClientRect(); return [r.top, r.bottom, innerHeight]; })()")
                assert top < view and bottom > 0  # the clicked neuron's arithmetic was brought into view
            assert not a.is_visible("#det-none")  # boxes to list: no "no box" hint
            a.screenshot(path=str(tmp_path / "explore.png"), full_page=True)
            # another photo from the selector
            b.select_option("#photo", "1")
            b.wait_for_selector('#status[data-state="ready"]', timeout=60_000)
            dets1 = httpx.get(f"{server}/api/detections", params={"photo": 1}).json()
            assert b.locator("#detections tbody tr").count() == len(dets1)
            # a CarDD photo with its label file: a column says what each box is against the labels
            assert dets1, "the checkpoint reports boxes on the CarDD photo"
            assert b.is_visible("#det-labels") and not a.is_visible("#det-labels")
            shown = b.eval_on_selector_all("#detections tbody tr td:last-child", "tds => tds.map(t => t.textContent)")
            assert shown == [d["label_match"] for d in dets1] and all(shown)
            # ... and the labelled boxes are drawn dashed on the photo and listed, the missed ones in red
            labels = httpx.get(f"{server}/api/labels", params={"photo": 1}).json()["labels"]
            assert labels and b.is_visible("#labels-panel") and not a.is_visible("#labels-panel")
            assert b.locator("#boxes .label").count() == b.locator("#labels tbody tr").count() == len(labels)
            missed = [j for j, g in enumerate(labels) if g["found_by"] is None]
            assert b.eval_on_selector_all("#boxes .label.missed", "ds => ds.map(d => +d.dataset.label)") == missed
            assert b.text_content("#label-missed") == str(len(missed))
            found = b.eval_on_selector_all("#labels tbody tr td:nth-child(4)", "tds => tds.map(t => t.textContent)")
            assert found == ["missed" if g["found_by"] is None else f"#{g['found_by']}" for g in labels]
        finally:
            browser.close()
    assert errors == [] and remote == []
    assert (tmp_path / "explore.png").stat().st_size > 20_000


@pytest.mark.browser
def test_page_fits_a_phone(server):
    """At 390 px the page is one column: nothing scrolls sideways (wide tables scroll inside their panel)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 800})
            page.goto(server + "/")
            page.wait_for_selector('#status[data-state="ready"]', timeout=60_000)
            page.click('#detections tr[data-index="0"]')
            page.click('#stages button[data-layer="model.4.m.0.cv2"]')
            page.click('#channels figure[data-channel="5"]')
            page.wait_for_selector('#map-post[data-ready="1"]')
            page.locator("#map-post").scroll_into_view_if_needed()
            box = page.locator("#map-post").bounding_box()
            page.mouse.click(box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"])
            page.wait_for_selector('#neuron[data-ready="1"]', state="attached", timeout=30_000)
            assert page.evaluate("document.scrollingElement.scrollWidth") <= 390
        finally:
            browser.close()
