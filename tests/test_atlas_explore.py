"""The atlas linked to detections: a box's driving channels against autograd, and the explorer page in Chromium.

The attribution oracle is a plain ``YOLO.predict`` with forward hooks (no project code): the class logit of the
box's anchor differentiated by ``torch.autograd.grad`` with respect to the head's input maps, times the maps.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch
from checkpoints import save_checkpoint

from pipeline.analysis.atlas_format import AtlasIndex
from pipeline.analysis.drivers import box_drivers
from pipeline.analysis.run import PhotoRun
from pipeline.atlas.build import build_atlas
from pipeline.explore.app import running
from pipeline.explore.session import Explorer
from pipeline.model.load import load_model

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
IMGSZ = 320
HEAD_INPUTS = ["model.15.cv2", "model.18.cv2", "model.21.cv2"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("atlas_explore") / "best.pt", seed=2, imgsz=IMGSZ)


def test_drivers_equal_autograd_on_a_plain_predict(ckpt, sample_images):
    import cv2
    from ultralytics import YOLO

    photo = sample_images[1]
    run = PhotoRun(load_model(str(ckpt)), photo, imgsz=IMGSZ)
    firsts = {}  # the first box of each scale: a stride-8 box reads model.15 only, a stride-32 one all three
    for i, det in enumerate(run.head_trace):
        firsts.setdefault(det["scale"], i)
    assert len(firsts) >= 2, "the checkpoint reports boxes at two scales or more on the CarDD photo"

    yolo = YOLO(str(ckpt))
    yolo.predict(str(photo), imgsz=IMGSZ, verbose=False)
    net = yolo.predictor.model.model
    net.model[-1].shape = None  # predict cached its anchors in inference mode: make them again with autograd on
    for scale, index in sorted(firsts.items()):
        d = box_drivers(run, index, top=5)
        assert d["layers"] == HEAD_INPUTS
        det = run.head_trace[index]
        assert d["logit"] == pytest.approx(det["logit"], abs=1e-4)  # the recomputed logit is the recorded one
        maps, out = {}, {}
        hooks = [net.get_submodule(p).register_forward_hook(lambda m, i, o, p=p: maps.__setitem__(p, o))
                 for p in HEAD_INPUTS]
        hooks.append(net.model[-1].cv3[scale][-1].register_forward_hook(lambda m, i, o: out.__setitem__("c", o)))
        with torch.enable_grad():
            x = yolo.predictor.preprocess([cv2.imread(str(photo))]).requires_grad_(True)
            net(x)
            logit = out["c"][0, det["class_id"], det["grid_y"], det["grid_x"]]
            grads = torch.autograd.grad(logit, [maps[p] for p in HEAD_INPUTS], allow_unused=True)
        for h in hooks:
            h.remove()
        for p, g in zip(HEAD_INPUTS, grads):
            got = torch.tensor(d["per_layer"][p], dtype=torch.float64)
            if g is None:  # the logit does not read this map at all
                assert scale < HEAD_INPUTS.index(p) and not got.any()
                continue
            torch.testing.assert_close(got, (maps[p].detach() * g).sum((0, 2, 3)).double(), rtol=1e-4, atol=1e-6)
        best = max(((p, c, v) for p in HEAD_INPUTS for c, v in enumerate(d["per_layer"][p])), key=lambda r: r[2])
        assert (d["drivers"][0]["layer"], d["drivers"][0]["channel"]) == best[:2]


@pytest.mark.browser
@pytest.mark.slow
def test_click_a_box_see_its_drivers_open_their_atlas_entry(ckpt, sample_images, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    yolo = load_model(str(ckpt))
    # a small atlas of the head's input blocks (128 px keeps every receptive field a whole-input one: fast)
    build_atlas(yolo, [str(p) for p in sample_images[:3]], tmp_path / "atlas", imgsz=128, k=2, layers=HEAD_INPUTS,
                progress=False)
    doc = json.loads((tmp_path / "atlas" / "atlas.json").read_text())
    errors, remote = [], []
    with running(Explorer(yolo, [sample_images[1]], imgsz=IMGSZ), atlas=AtlasIndex(tmp_path / "atlas")) as base:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("request", lambda r: None if r.url.startswith((base + "/", "data:")) else remote.append(r.url))
                page.goto(base + "/")
                page.wait_for_selector('#status[data-state="ready"]', timeout=60_000)
                # a box whose centre no other box covers, clicked there as a user would (boxes overlap)
                box = page.evaluate("""[...document.querySelectorAll('#boxes .box')].map(b => {
                    const r = b.getBoundingClientRect(), x = r.x + r.width / 2, y = r.y + r.height / 2;
                    return document.elementFromPoint(x, y) === b ? [+b.dataset.index, x, y] : null; }).find(v => v)""")
                assert box is not None
                drivers = httpx.get(f"{base}/api/drivers", params={"photo": 0, "box": box[0]}).json()
                page.mouse.click(box[1], box[2])
                assert int(page.get_attribute("#drivers", "data-box")) == box[0]
                page.wait_for_selector('#drivers[data-ready="1"]', timeout=60_000)
                rows = page.eval_on_selector_all("#drivers-table tr[data-layer]",
                                                 "rs => rs.map(r => [r.dataset.layer, +r.dataset.channel, +r.dataset.score])")
                assert [r[:2] for r in rows] == [[d["layer"], d["channel"]] for d in drivers["drivers"]]
                assert [r[2] for r in rows] == pytest.approx([d["score"] for d in drivers["drivers"]], rel=1e-12)
                page.click("#drivers-table tr[data-layer] .atlas-link")  # the strongest driver's entry
                page.wait_for_selector('#atlas-entry[data-ready="1"]')
                layer, ch = rows[0][0], rows[0][1]
                assert page.get_attribute("#atlas-entry", "data-layer") == layer
                assert int(page.get_attribute("#atlas-entry", "data-channel")) == ch
                entry = doc["layers"][layer]["channels"][ch]
                shown = page.eval_on_selector_all("#atlas-top li", "ls => ls.map(l => +l.dataset.value)")
                assert shown == [t["value"] for t in entry["top"]]
                page.wait_for_function("document.getElementById('atlas-crops').naturalWidth > 0")
                href = page.get_attribute("#atlas-page", "href")
                assert href == f"/atlas/layer-{layer}.html#c{ch}"
                atlas_page = browser.new_page()
                atlas_page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                atlas_page.on("request", lambda r: None if r.url.startswith((base + "/", "data:")) else remote.append(r.url))
                atlas_page.goto(base + href)
                assert atlas_page.is_visible(f"#c{ch}")
                atlas_page.wait_for_function(f"document.querySelector('#c{ch} img.strip').naturalWidth > 0")
                # a channel thumbnail of a layer in the atlas shows its entry too
                page.click(f'#stages button[data-layer="{HEAD_INPUTS[0]}"]')
                page.click('#channels figure[data-channel="3"]')
                page.wait_for_function("document.getElementById('atlas-entry').dataset.channel === '3'")
                page.wait_for_selector('#atlas-entry[data-ready="1"]')
                # a head's final conv is no Conv block, so not in any atlas: its thumbnail asks nothing of the atlas
                # and the entry panel goes (a new user met a 400 in the console and an internal message)
                asked = []
                page.on("request", lambda r: asked.append(r.url) if "/api/atlas/" in r.url else None)
                page.click('#stages button[data-layer="model.22.cv3.0.2"]')
                page.click('#channels figure[data-channel="2"]')
                page.wait_for_selector('#map-post[data-ready="1"]')
                assert asked == [] and not page.is_visible("#atlas-entry")
            finally:
                browser.close()
    assert errors == [] and remote == []


def test_report_neuron_section_shows_its_channels_top_crops(ckpt, sample_images, tmp_path):
    import base64

    from pipeline.report.render import _env
    from pipeline.report.sections import BUILDERS, Options

    yolo = load_model(str(ckpt))
    run = PhotoRun(yolo, sample_images[1], imgsz=IMGSZ)
    layer, channel = run.traced["layer"], run.traced["channel"]
    build_atlas(yolo, [str(p) for p in sample_images[:3]], tmp_path / "atlas", imgsz=128, k=3, layers=[layer],
                progress=False)
    entry = json.loads((tmp_path / "atlas" / "atlas.json").read_text())["layers"][layer]["channels"][channel]
    files = tmp_path / "report" / "report_files"
    files.mkdir(parents=True)
    section = BUILDERS["neurons"](run, files, Options(atlas=AtlasIndex(tmp_path / "atlas")))
    link = section.context["atlas"]
    assert json.loads(json.dumps(section.numbers["atlas"])) == link  # report.json takes it as it is
    assert [t["value"] for t in link["top"]] == [t["value"] for t in entry["top"]]
    assert link["href"] == f"../atlas/layer-{layer}.html#c{channel}"
    assert (tmp_path / "report" / link["href"].split("#")[0]).is_file()
    html = _env().get_template("sections/neurons.html").render(section=section, **section.context)
    strip = (tmp_path / "atlas" / entry["crops"]).read_bytes()
    assert "data:image/jpeg;base64," + base64.b64encode(strip).decode() in html  # the channel's own crops, embedded
    assert f'href="{link["href"]}"' in html and 'href="../atlas/index.html#lesson"' in html
    # without --atlas the section is as before
    plain = BUILDERS["neurons"](run, files, Options())
    assert plain.context["atlas"] is None and "neuron-atlas" not in _env().get_template(
        "sections/neurons.html").render(section=plain, **plain.context)
