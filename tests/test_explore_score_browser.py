"""The explorer in Debian's Chromium: click a head neuron and read its logit; a clicked neuron's effect on the
top box, its cell marked on the map, every input channel of its patch reachable, the layer list unconfined."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from checkpoints import save_checkpoint
from test_explore_browser import CHROMIUM, CHROMIUM_ARGS, click_neuron, watch

from pipeline.explore.app import running
from pipeline.explore.session import Explorer
from pipeline.model.load import load_model

IMGSZ = 320


@pytest.fixture(scope="module")
def server(tmp_path_factory, sample_images):
    ckpt = save_checkpoint(tmp_path_factory.mktemp("xs_browser") / "best.pt", seed=2, imgsz=IMGSZ)
    with running(Explorer(load_model(str(ckpt)), [sample_images[0]], imgsz=IMGSZ)) as base:
        yield base


@pytest.mark.browser
def test_click_a_head_neuron_and_read_its_logit(server):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    dets = httpx.get(f"{server}/api/detections", params={"photo": 0}, timeout=120).json()
    assert dets, "the checkpoint must report a box on this photo"
    top, a = dets[0], dets[0]["anchor"]
    model = {r["path"]: r for r in httpx.get(f"{server}/api/model", timeout=120).json()}
    layer = f"model.22.cv3.{a['scale']}.2"
    _, _, h, w = model[layer]["out_shape"]
    errors, remote = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            watch(page, server, errors, remote)
            page.goto(server + "/")
            page.wait_for_selector('#status[data-state="ready"]', timeout=60_000)
            # the layer list is the page's own height, not a small scroll box
            assert page.evaluate("getComputedStyle(document.getElementById('stages')).maxHeight") == "none"
            pos = click_neuron(page, layer, top["class_id"], (a["x"] + 0.5) / w, (a["y"] + 0.5) / h)
            assert pos == {"y": a["y"], "x": a["x"]}
            # a logit layer has one map, named for what it is, and no pre/post SiLU choice (it has no SiLU)
            assert not page.is_visible("#map-pre") and page.text_content("#cap-post").startswith("class logit")
            assert not page.is_visible('input[name="stage"][value="pre"]')
            name = httpx.get(f"{server}/api/summary", params={"photo": 0}, timeout=120).json()["names"][str(top["class_id"])]
            assert page.text_content(f'#channels figure[data-channel="{top["class_id"]}"] figcaption') == \
                f"{top['class_id']}: {name}"
            api = httpx.get(f"{server}/api/neuron", params={"photo": 0, "layer": layer, "channel": top["class_id"],
                                                            **pos}, timeout=120).json()
            assert float(page.get_attribute("#neuron-z", "data-value")) == api["logit"]
            assert float(page.text_content("#neuron-sigmoid")) == api["sigmoid_by_hand"]
            assert api["sigmoid_by_hand"] == pytest.approx(top["score"], abs=1e-6)
            assert api["logit"] == pytest.approx(top["logit"], abs=1e-5)
            assert "no BatchNorm" in page.text_content("#neuron-unfolded") and "box #0" in page.text_content("#neuron-unfolded")
            assert not page.is_visible("#neuron-silu")  # a logit has no SiLU: the row is hidden
            assert page.text_content("#lab-z") == "logit = dot + b" and "no BatchNorm" in page.text_content("#lab-bias")
            chans = page.eval_on_selector_all("#neuron-top tbody tr td:first-child", "tds => tds.map(t => t.textContent)")
            assert chans == [str(t["channel"]) for t in api["top_terms"]]  # channel numbers read as integers
            # every term of the sum is on the page, 6 significant digits shown, every digit on hover
            assert page.locator("#neuron-terms tr").count() == api["input_channels"] + 1
            shown = page.eval_on_selector_all("#neuron-top tbody tr td:last-child", "tds => tds.map(t => t.textContent)")
            full = page.eval_on_selector_all("#neuron-top tbody tr td:last-child", "tds => tds.map(t => t.title)")
            assert [float(v) for v in full] == [t["product"] for t in api["top_terms"]]
            assert [float(v) for v in shown] == pytest.approx([t["product"] for t in api["top_terms"]], rel=1e-5)
            assert all(len(v.replace("-", "").replace(".", "").lstrip("0")) <= 6 for v in shown if "e" not in v)
            # the clicked cell is marked on the map
            assert page.is_visible("#mark-post")
            assert (page.get_attribute("#mark-post", "data-y"), page.get_attribute("#mark-post", "data-x")) == \
                (str(a["y"]), str(a["x"]))
            # a Conv block neuron: its effect on box 0's logit, and every input channel of its patch
            pos = click_neuron(page, "model.4.m.0.cv2", 5, 0.5, 0.5)
            assert page.is_visible("#map-pre") and page.text_content("#cap-post") == "SiLU(z) (post)"
            api = httpx.get(f"{server}/api/neuron", params={"photo": 0, "layer": "model.4.m.0.cv2", "channel": 5,
                                                            **pos}, timeout=120).json()
            page.wait_for_selector('#neuron-effect[data-ready="1"]', state="attached", timeout=120_000)  # asked after
            assert page.is_visible("#neuron-effect") and page.text_content("#lab-z") == "z = dot + b"
            assert float(page.get_attribute("#neuron-effect", "data-grad-x-act")) == api["effect"]["grad_x_act"]
            assert float(page.get_attribute("#neuron-effect", "data-zeroed-delta")) == api["effect"]["zeroed_delta"]
            page.click("#neuron-more summary")
            seen = page.eval_on_selector_all("#neuron-patch .pair", "ds => ds.map(d => +d.dataset.inChannel)")
            assert seen == list(range(*api["input_channels"]))
        finally:
            browser.close()
    assert errors == [] and remote == []
