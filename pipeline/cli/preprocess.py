"""Show the exact model input of one photo, its three pixel scalings and its |z| > 3 pixels.

Writes, into --out:
  input.safetensors   key "input": the 1x3xHxW float32 tensor YOLOv8's predictor feeds the network
                      (letterbox + BGR->RGB + HWC->CHW + x/255, equal to Ultralytics' own bit for bit);
                      the letterbox meta (ratio, pad, shapes) is stored as safetensors metadata
  stats.json          "divide255", "minmax", "zscore" (and "zscore_dataset" with --data): per channel
                      min, max, mean, std, histogram and share of |z|>3; "outliers": count, fraction,
                      threshold and where they sit; "input": the letterbox meta
  letterbox.png       photo vs model input (padding marked)
  histograms.png      the three scalings' R, G, B histograms side by side
  outliers.png        the |z|>3 pixel mask over the model input (red bright, blue dark)

Statistics cover every pixel the model sees, grey letterbox padding included.

Examples:
  cardamage preprocess photo.jpg --out runs/preprocess
  cardamage preprocess photo.jpg --out runs/preprocess --imgsz 320 --square
  cardamage preprocess photo.jpg --out runs/preprocess --data datasets/cardd/data.yaml --max-images 200
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.cli.options import add_overwrite, image_size, positive_float, positive_int
from pipeline.core.facts import Z_THRESHOLD
from pipeline.core.io import InputError, atomic_save_safetensors, atomic_write_json, one_line, output_folder
from pipeline.data.labels import dataset_splits
from pipeline.data.preprocess import load_bgr, model_input
from pipeline.lesson.input_scaling import dataset_channel_stats, outlier_summary, pixel_outliers, scalings
from pipeline.report.plots.input import plot_letterbox, plot_outlier_mask, plot_scaling_histograms


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="photo to preprocess (any size; grayscale, RGBA, 16-bit handled as Ultralytics does)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--imgsz", type=image_size, default=640, help="inference size, rounded up to a stride multiple (default 640)")
    parser.add_argument("--stride", type=positive_int, default=32, help="model stride (default 32, YOLOv8)")
    parser.add_argument("--square", action="store_true", help="pad to a full imgsz x imgsz square (predict rect=False) instead of the stride-multiple rectangle")
    parser.add_argument("--threshold", type=positive_float, default=Z_THRESHOLD, help=f"|z| cut-off for pixel outliers (default {Z_THRESHOLD:g})")
    parser.add_argument("--data", metavar="DATA_YAML", help="also z-score with this dataset's per-channel statistics (train split)")
    parser.add_argument("--max-images", type=positive_int, default=500, help="with --data: use at most this many train images (evenly spaced; default 500)")
    parser.add_argument("--no-plots", action="store_true", help="write the tensor and stats.json only")
    add_overwrite(parser)


def _dataset_stats(data_yaml: str, args) -> dict:
    splits = dataset_splits(data_yaml)
    images = list(splits.get("train") or next(iter(splits.values()), []))
    if not images:
        raise InputError(data_yaml, "no train images to compute dataset statistics from")
    step = max(1, -(-len(images) // args.max_images))
    chosen = images[::step][: args.max_images]
    stats = dataset_channel_stats(chosen, args.imgsz, args.stride, auto=not args.square)
    for e in stats.pop("errors"):
        print(f"error: {e}", file=sys.stderr)
    stats["data"] = str(data_yaml)
    return stats


def run(args) -> int:
    with output_folder(args.out, inputs=[args.image, *([args.data] if args.data else [])], overwrite=args.overwrite) as out:
        return _run(args, out)


def _run(args, out: Path) -> int:
    image, _ = load_bgr(args.image)  # one read: bad files fail here with one line
    x, meta = model_input(image, args.imgsz, args.stride, auto=not args.square)
    meta["source"] = str(args.image)

    dataset = _dataset_stats(args.data, args) if args.data else None
    stats = scalings(x, dataset and dataset["mean"], dataset and dataset["std"])
    outliers = pixel_outliers(x, args.threshold, meta=meta)
    stats["outliers"] = outlier_summary(outliers)
    stats["input"] = meta
    if dataset:
        stats["dataset"] = dataset

    atomic_save_safetensors(out / "input.safetensors", {"input": x}, metadata={"meta": json.dumps(meta)})
    atomic_write_json(out / "stats.json", stats)
    written = ["input.safetensors", "stats.json"]
    if not args.no_plots:

        name = Path(args.image).name
        plot_letterbox(image, x, meta, out / "letterbox.png", title=name)
        plot_scaling_histograms(stats, out / "histograms.png")
        plot_outlier_mask(x, outliers, out / "outliers.png", title=name)
        written += ["letterbox.png", "histograms.png", "outliers.png"]

    h, w = meta["input_shape"]
    o = stats["outliers"]
    print(f"{one_line(args.image)}: {meta['orig_shape'][0]}x{meta['orig_shape'][1]} -> input 1x3x{h}x{w} "
          f"(ratio {meta['ratio']:.4g}, pad {meta['pad']}); |z|>{o['threshold']:g}: {o['count']} px "
          f"({100 * o['fraction']:.2f}%)")
    print(f"wrote {', '.join(written)} to {one_line(out)}")
    return 0
