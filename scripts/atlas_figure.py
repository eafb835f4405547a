"""Make docs/img/atlas.jpg: an atlas layer page over synthetic scenes (CarDD photos are not committed).

Draws a small synthetic dataset (``pipeline.data.synth.write_dataset``, labelled), builds the atlas of the given
weights over its val split, opens one layer's page in Debian's Chromium and screenshots its top.

Examples:
    python scripts/atlas_figure.py --weights runs/demo/train/weights/best.pt --out docs/img/atlas.jpg
    python scripts/atlas_figure.py --weights best.pt --val 16 --imgsz 128 --layer model.2.cv2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from pipeline.analysis.atlas_format import layer_file
from pipeline.atlas.build import build_atlas
from pipeline.core.facts import CLASS_NAMES
from pipeline.data.synth import write_dataset
from pipeline.model.load import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", default="docs/img/atlas.jpg")
    ap.add_argument("--val", type=int, default=24, help="synthetic val scenes (default 24)")
    ap.add_argument("--imgsz", type=int, default=224)
    ap.add_argument("--layer", default="model.2.cv2", help="the layer page to show (default model.2.cv2)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    data = write_dataset(tmp / "synth", n_train=1, n_val=args.val, imgsz=args.imgsz, seed=7, progress=False)
    build_atlas(load_model(args.weights, nc=len(CLASS_NAMES)), [str(data)], tmp / "atlas", imgsz=args.imgsz, k=6,
                layers=[0, args.layer], progress=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 1100})
        page.goto((tmp / "atlas" / layer_file(args.layer)).as_uri())
        page.wait_for_function("[...document.images].every(i => i.complete)")
        page.screenshot(path=args.out, type="jpeg", quality=70)
        browser.close()
    print(args.out)


if __name__ == "__main__":
    main()
