"""Make docs/img/explore.jpg: the explorer page on a synthetic scene (CarDD photos are not committed).

Serves a synthetic scene (``pipeline.data.synth.render_scene``) with the given weights on 127.0.0.1, opens it in
Debian's Chromium, clicks the best detection, a layer, a channel and a pixel, and screenshots the page.

Examples:
    python scripts/explore_figure.py --weights runs/demo/train/weights/best.pt --out docs/img/explore.jpg
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from pipeline.core.facts import CLASS_NAMES
from pipeline.core.io import atomic_write_image
from pipeline.data.synth import render_scene
from pipeline.explore.app import running
from pipeline.explore.session import Explorer
from pipeline.model.load import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", default="docs/img/explore.jpg")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    scene, _ = render_scene(args.seed, 640)
    photo = atomic_write_image(tmp / "synthetic_scene.png", scene)
    explorer = Explorer(load_model(args.weights, nc=len(CLASS_NAMES)), [photo], imgsz=args.imgsz, conf=args.conf)
    with running(explorer) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/")
        page.wait_for_selector('#status[data-state="ready"]', timeout=60_000)
        if page.locator('#detections tr[data-index="0"]').count():
            page.click('#detections tr[data-index="0"]')
            page.wait_for_function("document.getElementById('cam-img').naturalWidth > 0")
        page.click('#stages button[data-layer="model.4.m.0.cv2"]')
        page.click('#channels figure[data-channel="5"]')
        page.wait_for_selector('#map-post[data-ready="1"]')
        box = page.locator("#map-post").bounding_box()
        page.mouse.click(box["x"] + 0.45 * box["width"], box["y"] + 0.55 * box["height"])
        page.wait_for_selector('#neuron[data-ready="1"]')
        page.screenshot(path=args.out, full_page=True, type="jpeg", quality=75)
        browser.close()
    print(args.out)


if __name__ == "__main__":
    main()
