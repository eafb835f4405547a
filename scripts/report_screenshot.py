"""The picture of the report in docs/report.md, made reproducibly with no CarDD photo and no trained model.

A synthetic scene (``pipeline.data.synth.render_scene``, seed 7), the tests' trained-looking checkpoint
(``tests/checkpoints.py``: yolov8n with seeded BatchNorm, so boxes pass conf 0.25), ``write_report`` at
320 px, then Debian's Chromium through Playwright screenshots the top of the page (the forward map).

    PYTHONPATH=$PWD .venv/bin/python scripts/report_screenshot.py --out docs/img/report.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pipeline.core.io import atomic_write_image
from pipeline.data.synth import render_scene
from pipeline.report.page import write_report

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "report.png"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1900)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from checkpoints import save_checkpoint
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = save_checkpoint(tmp / "best.pt", seed=1, imgsz=320)
        scene = atomic_write_image(tmp / "scene.png", render_scene(7, 320)[0])
        html = write_report(str(weights), scene, tmp / "report", imgsz=320, grad_imgsz=160, layercam=False)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": args.width, "height": args.height})
                page.goto(html.resolve().as_uri())
                page.wait_for_load_state("load")
                page.screenshot(path=args.out)
            finally:
                browser.close()
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
