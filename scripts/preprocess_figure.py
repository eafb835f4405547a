"""Draw docs/img/preprocess.png: the input layer on a synthetic photo (no CarDD pixels in the repo).

A synthetic car scene (``pipeline.data.synth``), cropped to 3:4 portrait and given a glare spot, goes
through ``model_input`` at 320; the figure shows the model input with its letterbox padding, the
x/255, min-max and z-score histograms of the same pixels, and the |z| > 3 mask.

Run:
    .venv/bin/python scripts/preprocess_figure.py [--out docs/img/preprocess.png]
"""

from __future__ import annotations

import argparse
import io

import cv2
import numpy as np

import pipeline  # noqa: F401  (offline env before ultralytics)
from pipeline.core.io import atomic_write_bytes
from pipeline.data.preprocess import model_input
from pipeline.lesson.input_scaling import pixel_outliers, scalings
from pipeline.data.synth import render_scene


def synthetic_photo(seed: int = 3) -> np.ndarray:
    image, _ = render_scene(seed, 640)
    image = np.ascontiguousarray(image[:, 80:560])  # 640x480 portrait: the letterbox pads left and right
    cv2.ellipse(image, (300, 250), (45, 25), 20, 0, 360, (255, 255, 255), -1)  # a glare spot on the paint
    return cv2.GaussianBlur(image, (5, 5), 0)


def main(out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, meta = model_input(synthetic_photo(), 320, auto=False)
    s = scalings(x, bins=48)
    o = pixel_outliers(x, meta=meta)
    rgb = x[0].permute(1, 2, 0).numpy()
    fig, axes = plt.subplots(1, 5, figsize=(19, 3.8), gridspec_kw={"width_ratios": [1, 1.15, 1.15, 1.15, 1]})
    h, w = meta["input_shape"]
    p = meta["pad"]
    axes[0].imshow(rgb)
    axes[0].add_patch(plt.Rectangle((p["left"] - 0.5, -0.5), w - p["left"] - p["right"], h, fill=False, ec="yellow", ls="--"))
    axes[0].set_title(f"model input 1x3x{h}x{w}\n{meta['orig_shape'][0]}x{meta['orig_shape'][1]} (HxW) photo, ratio {meta['ratio']}, grey pad l{p['left']} r{p['right']}", fontsize=9)
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
    overlay[o["bright"]] = [1, 0, 0]
    overlay[o["dark"]] = [0, 0.4, 1]
    axes[4].imshow(overlay)
    axes[4].set_title(f"|z|>3 pixels: {o['count']} ({100 * o['fraction']:.1f}%)\nred bright {o['bright_count']}, blue dark {o['dark_count']}", fontsize=9)
    for ax in (axes[0], axes[4]):
        ax.set_xticks([])
        ax.set_yticks([])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    atomic_write_bytes(out, buf.getvalue())
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/img/preprocess.png")
    main(parser.parse_args().out)
