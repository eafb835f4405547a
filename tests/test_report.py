"""The HTML report: untrained YAML model on a real photo, trained-format checkpoint on a synthetic scene.

Numbers on the page are checked against independent recomputation (torch, hashlib, Ultralytics); the
browser test opens the page from file:// in Debian's Chromium through Playwright.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import pytest
from checkpoints import save_checkpoint
import torch

from pipeline.core.io import atomic_write_image
from pipeline.data.preprocess import model_input
from pipeline.model.load import load_model, model_stride
from pipeline.report.page import FILES, SECTIONS, write_report

IMGSZ = 320
FAST = dict(imgsz=IMGSZ, grad_imgsz=160, grad_batch=2)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def save_trained_checkpoint(path: Path, seed: int = 1) -> Path:
    """The shared trained-looking checkpoint (tests/checkpoints.py), saved as the trainer saves best.pt."""
    return save_checkpoint(path, seed=seed, imgsz=IMGSZ)


@pytest.fixture(scope="module")
def reports(tmp_path_factory, sample_images):
    """Two reports: (untrained yaml, real photo) and (trained checkpoint, synthetic scene with an awkward name)."""
    from pipeline.data.synth import render_scene

    root = tmp_path_factory.mktemp("report")
    ckpt = save_trained_checkpoint(root / "best.pt")
    scene, _ = render_scene(7, IMGSZ)
    synth = atomic_write_image(root / 'scene <b>&"x".png', scene)  # the name must come out escaped
    out = {
        "untrained": dict(weights="yolov8n.yaml", image=sample_images[0], out=root / "untrained"),
        "trained": dict(weights=str(ckpt), image=synth, out=root / "trained"),
    }
    for r in out.values():
        r["html_path"] = write_report(r["weights"], r["image"], r["out"], **FAST)
        r["html"] = r["html_path"].read_text(encoding="utf-8")
        r["numbers"] = json.loads((r["out"] / FILES / "report.json").read_text())
    return out


@pytest.mark.parametrize("kind", ["untrained", "trained"])
def test_page_structure_is_offline_and_complete(reports, kind):
    r = reports[kind]
    html = r["html"]
    assert r["html_path"] == r["out"] / "report.html"
    ids = re.findall(r'<section id="([^"]+)"', html)
    assert ids == [sid for sid, _ in SECTIONS]  # every section, in the lesson's order
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) >= 15
    for src in srcs:  # one file: every picture embedded (the page never points into report_files/)
        head, _, data = src.partition(",")
        assert head in ("data:image/png;base64", "data:image/jpeg;base64"), src[:40]
        assert len(base64.b64decode(data)) > 1000
    assert f'"{FILES}/' not in html
    assert r["html_path"].stat().st_size <= 6_000_000
    assert (r["out"] / FILES / "report.json").is_file()
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)  # no CDN, nothing remote
    assert "<script" not in html
    assert not list(r["out"].glob(".report.html*"))  # atomic write left no temp file


@pytest.mark.parametrize("kind", ["untrained", "trained"])
def test_page_names_image_and_weights_with_hashes(reports, kind):
    import html as htmlmod

    r = reports[kind]
    img_sha = hashlib.sha256(Path(r["image"]).read_bytes()).hexdigest()
    assert img_sha[:12] in r["html"]
    assert htmlmod.escape(str(r["image"]), quote=True) in r["html"]
    if kind == "trained":
        assert hashlib.sha256(Path(r["weights"]).read_bytes()).hexdigest()[:12] in r["html"]
        assert "<b>&" not in r["html"] and "&lt;b&gt;&amp;&quot;x&quot;" in r["html"]  # escaped, not markup
    else:
        from ultralytics.utils.checks import check_yaml

        # yolov8n.yaml is Ultralytics' yolov8.yaml at scale n
        assert hashlib.sha256(Path(check_yaml("yolov8.yaml")).read_bytes()).hexdigest()[:12] in r["html"]
        assert "untrained" in r["html"]


def hooked_z(net, x, layer: str) -> torch.Tensor:
    """z (the BatchNorm output, before SiLU) of one Conv block, from a forward hook of our own."""
    got = {}
    bn = dict(net.named_modules())[layer].bn
    handle = bn.register_forward_hook(lambda m, i, o: got.update(z=o.detach().clone()))  # before SiLU (in place)
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    return got["z"][0].double()


def silu_slope_by_autograd(z: float) -> float:
    t = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.silu(t).backward()
    return float(t.grad)


def test_traced_neuron_is_the_model_value(reports):
    """The page's neuron (untrained yaml, rebuilt with the same seed) recomputed here with torch: without a
    detection it is the strongest neuron of model.4.cv1 where SiLU bends (|z| <= 3, SiLU' <= 0.8)."""
    from pipeline.data.preprocess import model_input

    r = reports["untrained"]
    t, nr = r["numbers"]["trace"], r["numbers"]["neuron"]
    torch.manual_seed(0)
    net = load_model("yolov8n.yaml", nc=6).model.eval()
    x, _ = model_input(r["image"], imgsz=IMGSZ)
    zmap = hooked_z(net, x, "model.4.cv1")
    z = zmap[t["channel"], t["y"], t["x"]]
    assert t["layer"] == nr["layer"] == "model.4.cv1" and nr["detection_index"] is None
    assert t["z_by_hand"] == pytest.approx(float(z), rel=1e-5, abs=1e-6)
    assert t["silu_by_hand"] == pytest.approx(float(torch.nn.functional.silu(z)), rel=1e-5, abs=1e-6)
    slope = silu_slope_by_autograd(float(z))
    assert abs(float(z)) <= 3 and slope <= 0.8 + 1e-9 and nr["silu_slope"] == pytest.approx(slope, abs=1e-5)
    zr = zmap.clone().requires_grad_(True)
    torch.nn.functional.silu(zr).sum().backward()  # every SiLU'(z) of the layer, by autograd
    bends = (zmap.abs() <= 3) & (zr.grad <= 0.8)
    a = torch.nn.functional.silu(zmap)
    assert float(a[t["channel"], t["y"], t["x"]]) == pytest.approx(float(a[bends].max()), abs=1e-6)
    assert "no detection on this photo" in r["html"]
    assert f"{t['z_by_hand']:.6f}" in r["html"]


def test_thread_of_the_top_detection(reports):
    """Every claim of the map and the worked neuron on the trained checkpoint, against our own hooks, torch and
    Ultralytics' predict: forward-map shapes, the neuron in the box and bending, sigmoids, softmax, DFL box, score."""
    from ultralytics.nn.modules.head import Detect
    from ultralytics.utils.ops import scale_boxes

    from pipeline.core.io import read_image
    from pipeline.data.preprocess import model_input
    from pipeline.model.predict import predict_images

    r = reports["trained"]
    n = r["numbers"]
    net = load_model(r["weights"]).model.eval()
    x, _ = model_input(read_image(r["image"]), imgsz=IMGSZ)
    shapes, logits, bins = {}, {}, {}

    def shape_of(o):
        return list(o.shape) if isinstance(o, torch.Tensor) else [shape_of(v) for v in o] if isinstance(o, (list, tuple)) \
            else {k: shape_of(v) for k, v in o.items()} if isinstance(o, dict) else None

    handles = [m.register_forward_hook(lambda mod, i, o, k=f"model.{j}": shapes.update({k: shape_of(o)}))
               for j, m in enumerate(net.model)]
    detect = next(m for m in net.modules() if isinstance(m, Detect))
    for s in range(detect.nl):
        handles.append(detect.cv3[s][-1].register_forward_hook(lambda m, i, o, s=s: logits.update({s: o.detach()})))
        handles.append(detect.cv2[s][-1].register_forward_hook(lambda m, i, o, s=s: bins.update({s: o.detach()})))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    fmap = n["forward_map"]
    assert fmap[0] == {"path": "input", "type": "Tensor", "out_shape": list(x.shape)}
    assert [(f["path"], f["out_shape"]) for f in fmap[1:]] == list(shapes.items())
    assert "2,100 anchors" in r["html"]  # 40x40 + 20x20 + 10x10 at 320 px

    top = n["output"]["detections"][0]
    ta = n["top_anchor"]
    mine = logits[ta["scale"]][0, :, ta["grid_y"], ta["grid_x"]].double()
    assert ta["class_logits"] == pytest.approx(mine.tolist(), abs=1e-4) and top["logits"] == pytest.approx(mine.tolist(), abs=1e-4)
    assert ta["class_sigmoid"] == pytest.approx(torch.sigmoid(mine).tolist(), abs=1e-5)
    assert ta["class_softmax"] == pytest.approx(torch.softmax(mine, 0).tolist(), abs=1e-5)
    theirs = predict_images(load_model(r["weights"]), [read_image(r["image"])], conf=0.25, imgsz=IMGSZ)[0][0]
    assert ta["score"] == pytest.approx(theirs["score"], abs=1e-5) and ta["class_id"] == theirs["class_id"]
    dfl = bins[ta["scale"]][0, :, ta["grid_y"], ta["grid_x"]].double().view(4, -1)
    for got, want in zip(ta["dfl_softmax"], torch.softmax(dfl, 1).tolist()):
        assert got == pytest.approx(want, abs=1e-5)
    box = scale_boxes(x.shape[2:], torch.tensor([ta["box_xyxy_input"]]), read_image(r["image"]).shape)[0]
    assert box.tolist() == pytest.approx(theirs["box_xyxy"], abs=0.05)  # DFL by hand = predict's box

    nr = n["neuron"]
    assert nr["detection_index"] == 0 and nr["inside_box"]
    x0, y0, x1, y1 = nr["receptive_field_xyxy"]
    bx0, by0, bx1, by1 = top["box_xyxy"]
    assert bx0 <= (x0 + x1) / 2 <= bx1 and by0 <= (y0 + y1) / 2 <= by1  # it looks inside the box
    z = float(hooked_z(net, x, nr["layer"])[nr["channel"], nr["y"], nr["x"]])
    assert nr["z"] == pytest.approx(z, abs=1e-4) and abs(z) <= 3
    assert abs(silu_slope_by_autograd(z) - 1) >= 0.15  # SiLU visibly bends here
    assert n["training"]["sgd_step"]["z"] == pytest.approx(n["trace"]["z_by_hand"], abs=1e-12)


def test_detections_and_head_numbers_match_ultralytics(reports):
    from pipeline.model.predict import predict_images
    from pipeline.core.io import read_image

    r = reports["trained"]
    out = r["numbers"]["output"]
    yolo = load_model(r["weights"])
    dets = predict_images(yolo, [read_image(r["image"])], conf=0.25, imgsz=IMGSZ)[0]
    assert dets, "the trained-format checkpoint should report boxes on the synthetic scene"
    assert [(d["class_id"], round(d["score"], 5)) for d in out["detections"]] == [
        (d["class_id"], round(d["score"], 5)) for d in dets]
    for d in out["detections"]:
        assert d["score"] == pytest.approx(1 / (1 + math.exp(-d["logit"])), abs=1e-5)
    for d in out["head_trace"]:
        assert d["sigmoid_by_hand"] == pytest.approx(d["ultralytics_conf"], abs=1e-5)
    # LayerCAM's anchor count, from a plain forward of the unfused model (the caption states it)
    x, _ = model_input(read_image(r["image"]), imgsz=IMGSZ, stride=model_stride(yolo.model), auto=True)
    with torch.no_grad():
        passing = int((yolo.model.eval()(x)[0][0, 4:].amax(0) >= 0.25).sum())
    lc = out["layercam"]
    assert passing >= len(dets) and (lc["candidates"], lc["explained"]) == (passing, min(passing, 16))
    if lc["usable"]:
        said = (f"{passing} anchors have a class score of at least conf = 0.25 before NMS; Ultralytics explains the 16 "
                f"strongest" if passing > 16 else f"The map covers all {passing} anchor")
        assert said in r["html"]
    # the untrained head reports nothing at conf 0.25 and the page says so
    assert reports["untrained"]["numbers"]["output"]["detections"] == []
    assert "No box passes conf" in reports["untrained"]["html"]


def silu_minimum_by_autograd() -> tuple[float, float]:
    """Independent oracle: bisect d/dz[z * sigmoid(z)] = 0 on [-2, 0], the derivative taken by torch autograd
    (not the lesson's hand-written SiLU'), then SiLU there from torch's own silu."""

    def slope(z: float) -> float:
        t = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        (t * torch.sigmoid(t)).backward()
        return float(t.grad)

    lo, hi = -2.0, 0.0
    assert slope(lo) < 0 < slope(hi)
    for _ in range(200):  # 2 / 2**200: below float64's spacing long before the end
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    z = 0.5 * (lo + hi)
    return z, float(torch.nn.functional.silu(torch.tensor(z, dtype=torch.float64)))


def test_counts_activation_and_training_numbers(reports):
    r = reports["trained"]
    n = r["numbers"]
    yolo = load_model(r["weights"])
    total = sum(p.numel() for p in yolo.model.parameters())
    assert f"{total:,} parameters" in r["html"]
    dense = torch.linspace(-5, 5, 1_000_001, dtype=torch.float64)
    assert n["activations"]["silu_min"][1] == pytest.approx(float(torch.nn.functional.silu(dense).min()), abs=1e-9)
    z_star, silu_star = silu_minimum_by_autograd()
    assert n["activations"]["silu_min"][0] == pytest.approx(z_star, abs=1e-9)
    assert n["activations"]["silu_min"][1] == pytest.approx(silu_star, abs=1e-12)
    assert f"{silu_star:.6f} at z = {z_star:.6f}" in r["html"]
    tr = n["training"]
    assert set(tr["variants"]) == {"silu", "sigmoid", "tanh", "relu"}
    assert tr["real"]["batch_size"] == 2 and tr["real"]["imgsz"] == 160
    assert tr["variants"]["sigmoid"]["mean_abs_grad"][0] < tr["variants"]["silu"]["mean_abs_grad"][0]
    step = tr["sgd_step"]
    assert step["loss_new"] < step["loss"] and step["max_abs_grad_diff"] < 1e-12
    # the SGD neuron is the traced neuron
    assert step["z"] == pytest.approx(n["trace"]["z_by_hand"], abs=1e-12)


def test_cli_writes_report_and_rejects_bad_images(tmp_path, sample_images, capsys):
    from pipeline.cli import main

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8not really a jpeg")
    assert main(["report", "--weights", "yolov8n.yaml", str(bad), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "broken.jpg" in err[0]
    assert main(["report", "--weights", "yolov8n.yaml", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "r")]) == 1
    assert "missing.jpg" in capsys.readouterr().err
    assert main(["report", "--weights", str(tmp_path / "nope.pt"), str(sample_images[0]), "--out", str(tmp_path / "r")]) == 1
    assert "nope.pt" in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.html").exists()


@pytest.mark.browser
def test_report_in_chromium(reports, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    for kind in ("trained", "untrained"):
        r = reports[kind]
        errors, remote = [], []
        alone = tmp_path / kind
        alone.mkdir()
        html_path = Path(shutil.copy(r["html_path"], alone / "report.html"))  # the page alone, no report_files/
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("request", lambda q: remote.append(q.url) if not q.url.startswith(("file://", "data:")) else None)
                page.goto(html_path.resolve().as_uri())
                page.wait_for_load_state("load")
                images = page.evaluate(
                    "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
                present = page.evaluate(f"{[s for s, _ in SECTIONS]}.filter(id => document.getElementById(id))")
                shot = tmp_path / f"report_{kind}.png"
                page.screenshot(path=str(shot))
                page.set_viewport_size({"width": 390, "height": 844})  # a phone: no sideways scrolling
                narrow = page.evaluate("document.scrollingElement.scrollWidth")
            finally:
                browser.close()
        assert len(images) >= 15
        assert all(done and width > 0 for _, done, width in images), [i for i in images if not i[2]]
        assert present == [s for s, _ in SECTIONS]
        assert narrow <= 390, narrow
        assert errors == [] and remote == []
        assert shot.stat().st_size > 10_000
        shutil.copy(shot, tmp_path / f"last_{kind}.png")


def hooked_statistics(weights, photos, imgsz: int, dead_eps: float) -> dict:
    """Independent oracle for --stats-over: plain forward passes of the unfused model with hooks of our own
    on every Ultralytics Conv block (z = the BatchNorm output, a = the block output), pooled with torch in
    float64 over every value of every photo; no pipeline statistics code involved."""
    from ultralytics.nn.modules.conv import Conv

    from pipeline.data.preprocess import model_input

    net = load_model(weights).model.eval()
    blocks = {name: m for name, m in net.named_modules() if isinstance(m, Conv)}
    values: dict[str, dict[str, list]] = {name: {"z": [], "a": []} for name in blocks}
    handles = []
    for name, m in blocks.items():
        # SiLU runs in place on BN's output: copy z before the activation overwrites it
        handles.append(m.bn.register_forward_hook(lambda mod, i, o, n=name: values[n]["z"].append(o.double().flatten())))
        handles.append(m.register_forward_hook(lambda mod, i, o, n=name: values[n]["a"].append(o.double().flatten())))
    try:
        with torch.no_grad():
            for p in photos:
                net(model_input(p, imgsz=imgsz)[0])
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, v in values.items():
        z, a = torch.cat(v["z"]), torch.cat(v["a"])
        out[name] = {"count": z.numel(), "mean": float(z.mean()), "std": float(z.std(correction=0)),
                     "min": float(z.min()), "max": float(z.max()), "frac_negative": float((z < 0).double().mean()),
                     "frac_dead": float((a.abs() < dead_eps).double().mean()), "post_mean": float(a.mean())}
    return out


@pytest.mark.slow
def test_report_statistics_over_a_folder(tmp_path, sample_images):
    """--stats-over: the per-layer table over many photos equals statistics recomputed from our own hooks."""
    from pipeline.cli import main
    from pipeline.probe.channel_stats import DEAD_EPS

    folder = tmp_path / "set"
    folder.mkdir()
    for p in sample_images[:3]:
        shutil.copy(p, folder / p.name)
    ckpt = save_trained_checkpoint(tmp_path / "best.pt", seed=2)
    out = tmp_path / "report"
    assert main(["report", "--weights", str(ckpt), str(sample_images[0]), "--out", str(out), "--imgsz", str(IMGSZ),
                 "--grad-imgsz", "160", "--no-layercam", "--stats-over", str(folder), "--stats-limit", "2"]) == 0
    numbers = json.loads((out / FILES / "report.json").read_text())
    ds = numbers["activations"]["dataset"]
    assert ds["images"] == 2 and ds["failed"] == []  # the limit: the first two photos in sorted order
    first_two = sorted(folder.iterdir())[:2]
    ref = hooked_statistics(ckpt, first_two, IMGSZ, DEAD_EPS)
    assert list(ds["layer_stats"]) == list(ref) and len(ref) == 57
    for path, want in ref.items():
        got = ds["layer_stats"][path]
        assert got["count"] == want["count"]
        for k in ("mean", "std", "min", "max", "frac_negative", "frac_dead", "post_mean"):
            # float32 sums in another order (thread counts, conv algorithms) against float64 here
            assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), (path, k)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "per-layer statistics over 2 photos" in html
    # a set that names nothing fails at once, with the set's own error line, before any report work
    assert main(["report", "--weights", str(ckpt), str(sample_images[0]), "--out", str(tmp_path / "r2"),
                 "--stats-over", str(tmp_path / "nothing")]) == 1
    assert not (tmp_path / "r2").exists()
    pooled = sum(s["frac_negative"] * s["count"] for s in ds["layer_stats"].values()) / sum(
        s["count"] for s in ds["layer_stats"].values())
    assert f"{100 * pooled:.1f}% of z are negative" in html


def test_detection_tags_on_nearly_equal_boxes_do_not_cover_each_other():
    import matplotlib.pyplot as plt
    import numpy as np

    from pipeline.report.plots.lesson import separate_tags

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(np.zeros((320, 320, 3), np.uint8))
    same = [ax.text(100, 150, f"dent 0.{k}5 (logit -1.20) FP", fontsize=7, va="bottom",
                    bbox=dict(facecolor="red", pad=1, lw=0)) for k in range(3)]
    edge = ax.text(10, 318, "label: scratch", fontsize=7, va="top", bbox=dict(facecolor="white", pad=1, lw=0))
    alone = ax.text(10, 20, "tire flat 0.91", fontsize=7, va="bottom")
    before = alone.get_position()
    separate_tags(ax, [*same, edge, alone])
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in [*same, edge, alone]]  # matplotlib's own extents
    for i in range(len(boxes)):
        for j in range(i):
            assert not boxes[i].overlaps(boxes[j]), (i, j)
    assert same[0].get_position() == (100, 150) and alone.get_position() == before  # room to spare: not moved
    assert all(0 <= t.get_position()[1] <= 320 for t in [*same, edge])  # still on the photo
    plt.close(fig)
