"""Flag outlier images and cross-split duplicates in a dataset: per-image statistics, |z| > 3, leakage.

Every image of every split gets seven numbers, computed on a copy shrunk to at most 256 pixels on its
long side (cheap, and it makes blur comparable between photos of different sizes; size and aspect come
from the full image):

  brightness    mean grey level, 0..255 (OpenCV's luma: 0.299 R + 0.587 G + 0.114 B)
  contrast      standard deviation of the grey levels
  saturation    mean HSV saturation, 0..255 (0 = grey photo)
  black_border  share of the image area in all-dark rows/columns at its edges (mean grey <= 16)
  blur          variance of the Laplacian of the grey image (low = blurry); scored on log10(1 + v)
  megapixels    width * height / 1e6; scored on log10
  aspect        width / height; scored on log10 (so 2:1 and 1:2 are equally far from square)

For each statistic, z = (value - median) / (1.4826 * MAD) over the dataset (a robust z-score: for normal
data it equals the usual (x - mean) / std, but a few extreme images cannot inflate the spread and hide
each other, and a small dataset can still reach |z| > 3, which (x - mean) / std never can with n <= 10 images:
its |z| is at most sqrt(n - 1)).
``--plain-z`` uses mean and std instead. An image with |z| > 3 on any statistic is listed with the reason.
Exact and near-duplicate images across splits (leakage) come from ``pipeline.data.duplicates``.

Writes, into --out: outliers.csv (path, statistic, value, z, split, reason: one row per flag),
duplicates.csv (kind, distance, split_a, path_a, split_b, path_b), image_stats.csv (every image's
statistics), summary.json (per-statistic centre/spread, counts, split overlaps), dataset_stats.png (the
distributions with flagged images marked), flagged.png and duplicates.png (thumbnails).

Examples:
  cardamage outliers ../shared/data/cardd-sample/data.yaml --out runs/outliers
  cardamage outliers datasets/cardd/data.yaml --out runs/outliers --threshold 3.5 --near 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli.options import add_overwrite, int_range, positive_float
from pipeline.core.facts import Z_THRESHOLD
from pipeline.core.io import atomic_write_json, atomic_write_text, one_line, output_folder
from pipeline.data.labels import dataset_folders
from pipeline.data.outliers import STATISTICS, _csv, analyse
from pipeline.report.plots.input import plot_dataset_stats, plot_duplicates, plot_flagged


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA_YAML", help="YOLO dataset yaml (train/val[/test] image folders or lists)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--threshold", type=positive_float, default=Z_THRESHOLD, help="flag |z| above this (default 3)")
    parser.add_argument("--plain-z", action="store_true", help="z = (x - mean) / std instead of the robust median/MAD z")
    parser.add_argument("--near", type=int_range(0, 64), default=4, help="max perceptual-hash distance (bits of 64) for near duplicates (default 4)")
    parser.add_argument("--no-plots", action="store_true", help="write the CSV/JSON files only")
    add_overwrite(parser)


def run(args) -> int:
    folders = dataset_folders(args.data)
    with output_folder(args.out, inputs=folders, not_inside=folders[1:], overwrite=args.overwrite) as out:
        return _run(args, out)


def _run(args, out: Path) -> int:
    result = analyse(args.data, args.threshold, not args.plain_z, args.near)
    rows, flags, dups = result["rows"], result["flags"], result["duplicates"]
    for e in result["errors"]:
        print(f"error: {e}", file=sys.stderr)

    stat_cols = ["path", "split", *STATISTICS, "width", "height"]
    atomic_write_text(out / "image_stats.csv", _csv(rows, stat_cols))
    atomic_write_text(out / "outliers.csv", _csv(flags, ["path", "statistic", "value", "z", "split", "reason"]))
    atomic_write_text(out / "duplicates.csv", _csv(dups, ["kind", "distance", "split_a", "path_a", "split_b", "path_b"]))
    atomic_write_json(
        out / "summary.json",
        {
            "data": str(args.data),
            "images": len(rows),
            "splits": result["splits"],
            "z": "plain (mean, std)" if args.plain_z else "robust (median, 1.4826*MAD)",
            "threshold": args.threshold,
            "statistics": result["summary"],
            "flagged_images": len({f["path"] for f in flags}),
            "flags": len(flags),
            "duplicates": {k: sum(d["kind"] == k for d in dups) for k in ("exact", "near")},
            "split_overlaps": result["overlaps"],
            "unreadable": [str(e) for e in result["errors"]],
        },
    )
    written = ["image_stats.csv", "outliers.csv", "duplicates.csv", "summary.json"]
    if not args.no_plots:

        plot_dataset_stats(rows, flags, STATISTICS, out / "dataset_stats.png", args.threshold)
        plot_flagged(flags, out / "flagged.png")
        plot_duplicates(dups, out / "duplicates.png")
        written += ["dataset_stats.png", "flagged.png", "duplicates.png"]

    flagged = {f["path"] for f in flags}
    print(f"{len(rows)} images: {len(flagged)} flagged (|z|>{args.threshold:g} on {len(flags)} statistics), "
          f"{sum(d['kind'] == 'exact' for d in dups)} exact and {sum(d['kind'] == 'near' for d in dups)} near "
          f"duplicate pairs across splits")
    for f in flags[:10]:
        print(f"  {one_line(f['path'])}: {one_line(f['reason'])}")
    if len(flags) > 10:
        print(f"  ... {len(flags) - 10} more in outliers.csv")
    for o in result["overlaps"]:
        what = "list the same files" if o["same_list"] else f"share {o['shared']} files"
        print(f"  note: splits {o['split_a']} and {o['split_b']} {what} (not counted as duplicates)")
    print(f"wrote {', '.join(written)} to {one_line(out)}")
    return 1 if result["errors"] else 0
