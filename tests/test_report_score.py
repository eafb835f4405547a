"""The report reaches the score (report.json ``logit_trace`` and ``neuron.effect``) and its flagged sentences are
true: each sentence is checked against numbers computed here (Ultralytics' predict with a plain hook, scipy's
quadrature, the report's own figures' geometry), and each test fails on the text the page had before.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from checkpoints import save_checkpoint
from test_score import fresh_model, predict_with_hooks

from pipeline.report.page import FILES, write_report
from pipeline.report.render import counted

IMGSZ = 320
FAST = dict(imgsz=IMGSZ, grad_imgsz=160, grad_batch=2, layercam=False)


def text_of(html: str) -> str:
    """The page's words: tags dropped, figures' data URIs dropped, entities as characters."""
    import html as h

    return h.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r'src="data:[^"]+"', "", html))))


def section(html: str, sid: str) -> str:
    start = html.index(f'<section id="{sid}">')
    return html[start:html.index("</section>", start)]


@pytest.fixture(scope="module")
def reports(tmp_path_factory, sample_images):
    root = tmp_path_factory.mktemp("report_score")
    ckpt = save_checkpoint(root / "best.pt", seed=1, imgsz=IMGSZ)
    out = {}
    for kind, conf in (("box", 0.25), ("nobox", 0.99)):
        page = write_report(str(ckpt), sample_images[0], root / kind, conf=conf, **FAST)
        html = page.read_text(encoding="utf-8")
        out[kind] = {"html": html, "text": text_of(html),
                     "numbers": json.loads((root / kind / FILES / "report.json").read_text())}
    out["ckpt"], out["photo"] = ckpt, sample_images[0]
    return out


def test_logit_trace_is_ultralytics_raw_logit_and_predicts_conf(reports):
    n = reports["box"]["numbers"]
    lt = n["logit_trace"]
    assert set(lt) >= {"layer", "class_id", "y", "x", "bias", "dot", "logit", "sigmoid", "top_terms"}
    assert all(set(t) == {"channel", "w", "x", "product"} for t in lt["top_terms"])
    result, seen = predict_with_hooks(reports["ckpt"], reports["photo"], [lt["layer"]], imgsz=IMGSZ)
    assert abs(lt["logit"] - float(seen[lt["layer"]][0, lt["class_id"], lt["y"], lt["x"]])) <= 1e-5
    assert lt["sigmoid"] == pytest.approx(float(result.boxes.conf[0]), abs=1e-6)
    assert lt["class_id"] == int(result.boxes.cls[0])
    assert lt["dot"] + lt["bias"] == pytest.approx(lt["logit"], abs=1e-12)
    page = reports["box"]["text"]
    assert f"{lt['logit']:.6f}" in page and "no BatchNorm and no SiLU" in page and lt["layer"] in page


def test_the_page_says_other_float32_passes_differ_by_rounding(reports):
    """The explorer computes the same logit in passes of its own: the page says by how much they may differ,
    float32 rounding of this logit (a new user found the 6th digit differing between report and explorer)."""
    import numpy as np

    from pipeline.analysis.effect import NOISE_ULPS

    html, logit = reports["box"]["html"], reports["box"]["numbers"]["neuron"]["effect"]["logit"]
    noise = NOISE_ULPS * float(np.finfo(np.float32).eps) * max(1.0, abs(logit))
    assert f"may differ from these by float32 rounding: about {noise:.1g} on this logit" in html


def test_neuron_effect_is_autograd_and_zeroing_on_a_fresh_model(reports):
    n = reports["box"]["numbers"]
    nr, lt = n["neuron"], n["logit_trace"]
    from pipeline.core.io import read_image
    from pipeline.data.preprocess import model_input
    from pipeline.model.load import model_stride

    net = fresh_model(reports["ckpt"])
    x, _ = model_input(read_image(reports["photo"]), imgsz=IMGSZ, stride=model_stride(net), auto=True)
    mods, held = dict(net.named_modules()), {}

    def keep(m, i, o):
        o = o.detach().requires_grad_(True)
        held["a"] = o
        return o

    hooks = [mods[nr["layer"]].register_forward_hook(keep),
             mods[lt["layer"]].register_forward_hook(lambda m, i, o: held.__setitem__("out", o))]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    logit = held["out"][0, lt["class_id"], lt["y"], lt["x"]]
    logit.backward()
    c, y, xx = nr["channel"], nr["y"], nr["x"]
    assert nr["effect"]["grad_x_act"] == pytest.approx(float(held["a"].grad[0, c, y, xx] * held["a"][0, c, y, xx].detach()),
                                                       rel=2e-3, abs=1e-7)

    def zero(m, i, o):
        o = o.clone()
        o[0, c, y, xx] = 0
        return o

    with torch.no_grad():
        hooks = [mods[nr["layer"]].register_forward_hook(zero),
                 mods[lt["layer"]].register_forward_hook(lambda m, i, o: held.__setitem__("z", o))]
        try:
            net(x)
        finally:
            for h in hooks:
                h.remove()
    assert nr["effect"]["zeroed_delta"] == pytest.approx(float(held["z"][0, lt["class_id"], lt["y"], lt["x"]] - logit),
                                                         abs=2e-5)
    page = reports["box"]["text"]
    assert "How much this neuron mattered to the score" in page
    assert f"{nr['effect']['zeroed_delta']:+.6g}" in page
    assert len(nr["top_channels"]) == 8


def test_receptive_field_caption_says_centred_and_checks_the_whole_field(reports):
    n = reports["box"]["numbers"]
    nr, box = n["neuron"], n["output"]["detections"][0]["box_xyxy"]
    x0, y0, x1, y1 = nr["receptive_field_xyxy"]
    inside = box[0] <= x0 and box[1] <= y0 and x1 <= box[2] and y1 <= box[3]
    page = text_of(section(reports["box"]["html"], "neurons"))
    assert "centred in the top box (red outline)" in page
    if inside:
        assert "the whole field lies inside the box" in page
    else:
        assert "it is not wholly inside: it reaches past the box's edges" in page
    assert "inside the top box (red)" not in page


def test_no_box_heading_fits_and_a_checkpoint_is_not_called_early_in_training(reports):
    r = reports["nobox"]
    assert not r["numbers"]["output"]["detections"]
    heading = re.search(r'<section id="map"><h2>(.*?)</h2>', r["html"]).group(1)
    assert "one detection" not in heading and "no box on this photo" in heading
    out = text_of(section(r["html"], "output"))
    assert "early in training" not in out
    assert "These weights come from a checkpoint" in out
    assert "The checkpoint stores no validation metrics" in out  # the test checkpoint carries none


def test_biases_table_names_its_layer(reports):
    n = reports["box"]["numbers"]
    stem = n["forward_map"][1]["path"]
    assert f"{stem} (the stem), its first 8 channels" in text_of(section(reports["box"]["html"], "biases"))


def test_normal_means_are_estimates_with_their_n_and_the_exact_value(reports):
    from scipy import integrate

    def exact(f):
        return integrate.quad(lambda z: f(z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -40, 40, limit=200)[0]

    page = text_of(section(reports["box"]["html"], "activations"))
    assert "mean f on N(0,1): estimate from 200,000 samples (exact value)" in page
    gallery = {g["name"]: g for g in reports["box"]["numbers"]["activations"]["gallery"]}
    want = {"sigmoid": exact(lambda z: 1 / (1 + math.exp(-z))), "tanh": exact(math.tanh),
            "relu": exact(lambda z: max(z, 0.0)), "silu": exact(lambda z: z / (1 + math.exp(-z)))}
    for name, v in want.items():
        key = next(k for k in gallery if k.lower().replace("(", "").startswith(name))
        assert gallery[key]["mean_on_normal_exact"] == pytest.approx(v, abs=1e-8)
        assert f"(exact {round(v, 10) + 0.0:.4f})" in page  # -1e-17 from the quadrature reads 0.0000


def test_sgd_step_says_whether_it_overshoots_its_target(reports):
    s = reports["box"]["numbers"]["training"]["sgd_step"]
    html = section(reports["box"]["html"], "training")
    assert re.search(r"\nreached : [^\n]+\nautograd:", html)  # its own line of the worked step
    page = text_of(html)
    over = (s["a_new"] - s["target"]) * (s["target"] - s["a"]) > 0
    if over:
        assert f"OVERSHOOTS t by {abs(s['a_new'] - s['target']):.6f}" in page
    else:
        share = 100 * (s["a_new"] - s["a"]) / (s["target"] - s["a"])
        assert f"({share:.1f}% of the way to t, without overshooting)" in page


def test_every_outline_on_a_figure_is_in_its_caption(reports):
    html = reports["box"]["html"]
    caps = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    letterbox = next(c for c in caps if c.startswith("the photo and the exact model input"))
    assert "dashed yellow outline" in letterbox
    dets = next(c for c in caps if c.startswith("detections"))
    assert "solid outlines" in dets and "dashed white-on-black outlines" in dets  # the photo has a label file
    neuron = next(c for c in caps if "receptive field (yellow, centre +)" in c)
    assert "red outline" in neuron


def test_counts_take_the_singular():
    assert counted(1, "anchor") == "1 anchor" and counted(2100, "anchor") == "2,100 anchors"
    assert counted(1, "labelled box", "labelled boxes") == "1 labelled box"
    assert counted(0, "photo") == "0 photos"


def test_first_read_path_and_glossary_use_this_runs_numbers(reports):
    html, n = reports["box"]["html"], reports["box"]["numbers"]
    start = html.index('<div id="first-read"')
    first = html[start:html.index("</details>", start)]
    steps = re.findall(r'<li><a href="#([^"]+)">', first)
    assert len(steps) == 5 and all(f'<section id="{s}">' in html or f'id="{s}"' in html for s in steps)
    words = text_of(first)
    lt = n["logit_trace"]
    assert f"= {lt['logit']:.4f}" in words and f"sigmoid({lt['logit']:.4f}) = {lt['sigmoid']:.4f}" in words
    anchors = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))  # a square 320 px input: 40x40 + 20x20 + 10x10
    assert f"{anchors:,} anchors in all" in words
    terms = re.findall(r'<dt id="g-[^"]+">([^<]+)</dt>', first)
    assert terms == ["anchor", "stride", "DFL", "BatchNorm folding", "EigenCAM vs LayerCAM", "logit"]
    nobox = text_of(reports["nobox"]["html"][reports["nobox"]["html"].index('<div id="first-read"'):])
    assert "no anchor's score passes conf, so no box is kept" in nobox


def test_a_phone_keeps_figures_legible_and_tables_in_their_own_box(reports, tmp_path):
    from pathlib import Path

    from test_report import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing")
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "report.html"
    page_file.write_text(reports["box"]["html"], encoding="utf-8")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.goto(page_file.resolve().as_uri())
            page.wait_for_load_state("load")
            assert page.evaluate("document.scrollingElement.scrollWidth") <= 390
            figs = page.evaluate("Array.from(document.querySelectorAll('figure')).map(f => { const i = f.querySelector('img');"
                                 " return [i.getBoundingClientRect().width, getComputedStyle(f).overflowX, !!f.querySelector('picture'),"
                                 " i.currentSrc === i.src, i.naturalWidth]; })")
            stacked = [f for f in figs if f[2]]
            # a figure of several panel columns shows its panels stacked, whole, at nearly their own width
            assert len(stacked) >= 4 and all(w <= 390 and not same and w >= 0.55 * nat for w, _, _, same, nat in stacked), stacked
            # any other figure keeps its width and scrolls in place
            assert all(w >= 600 and ov == "auto" for w, ov, pic, _, _ in figs if not pic), figs
            tables = page.evaluate("Array.from(document.querySelectorAll('table')).map(t => [getComputedStyle(t)"
                                   ".overflowX, t.getBoundingClientRect().right])")
            assert all(ov == "auto" and right <= 390 for ov, right in tables), tables  # every column by scrolling
        finally:
            browser.close()


def test_a_figure_of_several_panel_columns_is_also_written_stacked(tmp_path):
    """save_png writes NAME.narrow.png for a figure of several panel columns: each panel cut whole from the one
    rendering, one under another (so about a panel wide and the panels' heights tall), a twin axes and a
    colourbar with their panel; a one-column figure gets none. Pixel sizes from the files are the oracle."""
    import matplotlib.pyplot as plt
    import numpy as np
    import PIL.Image

    from pipeline.report.plots import narrow_path, save_png

    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    for i, ax in enumerate(axes):
        ax.plot(np.arange(10) * i)
        ax.set_title(f"panel {i}")
    axes[0].twinx().plot(np.arange(10)[::-1])
    fig.colorbar(axes[2].imshow(np.eye(4)), ax=axes[2])
    fig.suptitle("a title that is as wide as three panels side by side, which a phone would shrink to nothing " * 2)
    wide = save_png(fig, tmp_path / "three.png")
    W, H = PIL.Image.open(wide).size
    w, h = PIL.Image.open(narrow_path(wide)).size
    assert w < W / 2 and h > 3 * 0.8 * H, ((W, H), (w, h))
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([0, 1])
    one = save_png(fig, tmp_path / "one.png")
    assert not narrow_path(one).exists()
    # redrawn with one column into the same name: the old stacked file goes
    fig, ax = plt.subplots(figsize=(6, 3))
    save_png(fig, tmp_path / "three.png")
    assert not narrow_path(tmp_path / "three.png").exists()
