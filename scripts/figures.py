"""The documentation's figures, made reproducibly with no CarDD photo: ``scripts/figures.py FIGURE [options]``.

    atlas       docs/img/atlas.jpg: one layer page of the atlas of the given weights over synthetic scenes
                (labelled, so the selectivity columns are filled; Chromium through Playwright)
    explore     docs/img/explore.jpg: the explorer page on a synthetic scene, a detection, a layer, a channel
                and a neuron clicked (the given weights; Chromium through Playwright)
    preprocess  docs/img/preprocess.png: the input layer on a synthetic photo (letterbox, x/255, min-max and
                z-score histograms, the |z| > 3 mask)
    report      docs/img/report.png: the top of the report of a synthetic scene with the tests' seeded
                "trained-looking" checkpoint (Chromium through Playwright)
    scaling     docs/img/scaling.png: the demo trained twice on the same synthetic data, YOLOv8's x/255 against
                z-score inputs, the three training losses per epoch (also OUT/scaling.json)

Examples:
    .venv/bin/python scripts/figures.py preprocess
    .venv/bin/python scripts/figures.py report
    .venv/bin/python scripts/figures.py explore --weights runs/demo/train/weights/best.pt --conf 0.4
    .venv/bin/python scripts/figures.py atlas --weights runs/demo/train/weights/best.pt --val 16 --imgsz 128
    .venv/bin/python scripts/figures.py scaling --work runs/scaling --minutes 2.5
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import pipeline  # noqa: E402,F401  (offline environment before Ultralytics)

CHROMIUM = "/usr/bin/chromium"


def explore(args) -> None:
    from playwright.sync_api import sync_playwright

    from pipeline.core.facts import CLASS_NAMES
    from pipeline.core.io import atomic_write_image
    from pipeline.data.synth import render_scene
    from pipeline.explore.app import running
    from pipeline.explore.session import Explorer
    from pipeline.model.load import load_model

    photo = atomic_write_image(Path(tempfile.mkdtemp()) / "synthetic_scene.png", render_scene(args.seed, 640)[0])
    explorer = Explorer(load_model(args.weights, nc=len(CLASS_NAMES)), [photo], imgsz=args.imgsz, conf=args.conf)
    with running(explorer) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--headless", "--no-sandbox"])
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


def atlas(args) -> None:
    """The atlas of ``--weights`` over ``--val`` synthetic scenes (CarDD photos are not committed), one layer's
    page screenshot from its top."""
    from playwright.sync_api import sync_playwright

    from pipeline.analysis.atlas_format import layer_file
    from pipeline.atlas.build import build_atlas
    from pipeline.core.facts import CLASS_NAMES
    from pipeline.data.synth import write_dataset
    from pipeline.model.load import load_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_dataset(tmp / "synth", n_train=1, n_val=args.val, imgsz=args.imgsz, seed=7, progress=False)
        build_atlas(load_model(args.weights, nc=len(CLASS_NAMES)), [str(data)], tmp / "atlas", imgsz=args.imgsz, k=6,
                    layers=[0, args.layer], progress=False)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--headless", "--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 1100})
                page.goto((tmp / "atlas" / layer_file(args.layer)).as_uri())
                page.wait_for_function("[...document.images].every(i => i.complete)")
                page.screenshot(path=args.out, type="jpeg", quality=70)
            finally:
                browser.close()


def synthetic_photo(seed: int = 3):
    """A synthetic scene cropped to 640x480 portrait (the letterbox pads left and right), a glare spot on it."""
    import cv2
    import numpy as np

    from pipeline.data.synth import render_scene

    image, _ = render_scene(seed, 640)
    image = np.ascontiguousarray(image[:, 80:560])
    cv2.ellipse(image, (300, 250), (45, 25), 20, 0, 360, (255, 255, 255), -1)
    return cv2.GaussianBlur(image, (5, 5), 0)


def preprocess(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from pipeline.core.io import atomic_write_bytes
    from pipeline.data.preprocess import model_input
    from pipeline.lesson.input_scaling import pixel_outliers, scalings

    x, meta = model_input(synthetic_photo(), 320, auto=False)
    s, o = scalings(x, bins=48), pixel_outliers(x, meta=meta)
    rgb = x[0].permute(1, 2, 0).numpy()
    fig, axes = plt.subplots(1, 5, figsize=(19, 3.8), gridspec_kw={"width_ratios": [1, 1.15, 1.15, 1.15, 1]})
    (h, w), p = meta["input_shape"], meta["pad"]
    axes[0].imshow(rgb)
    axes[0].add_patch(plt.Rectangle((p["left"] - 0.5, -0.5), w - p["left"] - p["right"], h, fill=False, ec="yellow", ls="--"))
    axes[0].set_title(f"model input 1x3x{h}x{w}\n{meta['orig_shape'][0]}x{meta['orig_shape'][1]} (HxW) photo, ratio "
                      f"{meta['ratio']}, grey pad l{p['left']} r{p['right']}", fontsize=9)
    titles = {"divide255": "x/255 (what YOLOv8 uses)", "minmax": "min-max per channel", "zscore": "z-score per channel"}
    for ax, (name, title) in zip(axes[1:4], titles.items()):
        edges = np.asarray(s[name]["hist"]["edges"])
        for c, color in enumerate(("tab:red", "tab:green", "tab:blue")):
            ax.stairs(s[name]["hist"]["counts"][c], edges, color=color, label="RGB"[c])
        lo, hi = min(s[name]["min"]), max(s[name]["max"])
        ax.set_title(f"{title}\nrange [{lo:.2f}, {hi:.2f}], mean R {s[name]['mean'][0]:.2f}, std R {s[name]['std'][0]:.2f}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[1].legend(fontsize=7)
    overlay = rgb.copy()
    overlay[o["bright"]], overlay[o["dark"]] = [1, 0, 0], [0, 0.4, 1]
    axes[4].imshow(overlay)
    axes[4].set_title(f"|z|>3 pixels: {o['count']} ({100 * o['fraction']:.1f}%)\nred bright {o['bright_count']}, "
                      f"blue dark {o['dark_count']}", fontsize=9)
    for ax in (axes[0], axes[4]):
        ax.set_xticks([])
        ax.set_yticks([])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    atomic_write_bytes(args.out, buf.getvalue())


def report(args) -> None:
    from playwright.sync_api import sync_playwright

    from pipeline.core.io import atomic_write_image
    from pipeline.data.synth import render_scene
    from pipeline.report.page import write_report

    sys.path.insert(0, str(ROOT / "tests"))
    from checkpoints import save_checkpoint

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


LOSSES = ("train/box_loss", "train/cls_loss", "train/dfl_loss")


def losses(run: Path) -> dict[str, list[float]]:
    with open(run / "results.csv") as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    return {k: [float(r[k]) for r in rows] for k in LOSSES}


def scaling(args) -> None:
    """Same synthetic data, seed, recipe (configs/demo.yaml) and budget; only the input scaling differs."""
    import matplotlib.pyplot as plt

    from pipeline.core.io import atomic_write_json
    from pipeline.data.synth import write_dataset
    from pipeline.lesson.input_scaling import dataset_channel_stats, standardized_trainer
    from pipeline.model.train import train
    from pipeline.report.plots import save_png

    out = Path(args.work).resolve()
    data = write_dataset(out / "data", args.train, args.val, imgsz=256, seed=0, progress=False)
    stats = dataset_channel_stats(sorted((out / "data" / "train" / "images").glob("*.jpg")), imgsz=args.imgsz, auto=False)
    mean, std = stats["mean"], stats["std"]
    common = dict(config=ROOT / "configs" / "demo.yaml", time=args.minutes / 60, imgsz=args.imgsz, val=True)
    runs = {"x/255 (YOLOv8)": (out / "x255", {}), "z-score (dataset mean/std)": (out / "zscore", {"trainer": standardized_trainer(mean, std)})}
    summary = {"mean": mean, "std": std, "minutes_each": args.minutes, "runs": {}}
    for name, (run, extra) in runs.items():
        m = train(data, run, **common, **extra, overwrite=True)
        summary["runs"][name] = {"metrics": m, "losses": losses(run)}
        print(f"{name}: {m['epochs']} epochs, mAP50 {m['mAP50']:.3f}, mAP50-95 {m['mAP50-95']:.3f}")
    atomic_write_json(out / "scaling.json", summary)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for (name, r), color in zip(summary["runs"].items(), ("tab:blue", "tab:orange")):
        for ax, key in zip(axes, LOSSES):
            ys = r["losses"][key]
            ax.plot(range(1, len(ys) + 1), ys, "o-", color=color, label=f"{name}: mAP50 {r['metrics']['mAP50']:.3f}")
            ax.set_title(key.split("/")[1])
            ax.set_xlabel("epoch")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"YOLOv8n from scratch on synthetic damage, {args.minutes:g} CPU-minutes each: only the input scaling differs")
    fig.tight_layout()
    save_png(fig, out / "scaling.png", tight=False)
    shutil.copyfile(out / "scaling.png", args.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    img = ROOT / "docs" / "img"

    t = sub.add_parser("atlas", help="docs/img/atlas.jpg")
    t.add_argument("--weights", required=True)
    t.add_argument("--val", type=int, default=24, help="synthetic val scenes (default 24)")
    t.add_argument("--imgsz", type=int, default=224)
    t.add_argument("--layer", default="model.2.cv2", help="the layer page to show (default model.2.cv2)")
    t.add_argument("--chromium", default=CHROMIUM)
    t.set_defaults(func=atlas, out=str(img / "atlas.jpg"))

    t = sub.add_parser("explore", help="docs/img/explore.jpg")
    t.add_argument("--weights", required=True)
    t.add_argument("--imgsz", type=int, default=640)
    t.add_argument("--conf", type=float, default=0.25)
    t.add_argument("--seed", type=int, default=7)
    t.add_argument("--chromium", default=CHROMIUM)
    t.set_defaults(func=explore, out=str(img / "explore.jpg"))

    t = sub.add_parser("preprocess", help="docs/img/preprocess.png")
    t.set_defaults(func=preprocess, out=str(img / "preprocess.png"))

    t = sub.add_parser("report", help="docs/img/report.png")
    t.add_argument("--width", type=int, default=1280)
    t.add_argument("--height", type=int, default=1900)
    t.add_argument("--chromium", default=CHROMIUM)
    t.set_defaults(func=report, out=str(img / "report.png"))

    t = sub.add_parser("scaling", help="docs/img/scaling.png (trains the demo twice)")
    t.add_argument("--work", default="runs/scaling", help="the two runs, scaling.json and scaling.png (default runs/scaling)")
    t.add_argument("--minutes", type=float, default=2.5, help="training budget of each run")
    t.add_argument("--train", type=int, default=800)
    t.add_argument("--val", type=int, default=100)
    t.add_argument("--imgsz", type=int, default=224)
    t.set_defaults(func=scaling, out=str(img / "scaling.png"))
    for t in sub.choices.values():
        t.add_argument("--out", default=t.get_default("out"), help="where the figure goes (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
