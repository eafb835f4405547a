"""Draw a synthetic car-damage dataset: procedural car scenes carrying the six CarDD damage classes.

No real dataset can be downloaded on a fresh offline machine, so the demo trains on pictures this
module draws with OpenCV: a car (body panel of random colour and gloss, windows, lamps, wheels) on a
background, under random lighting, blur, noise and perspective, with damage of six kinds drawn where
it happens in real life: crack, dent and scratch on the paint, glass shatter on a window, lamp broken
on a lamp, tire flat on a wheel. Every instance gets a polygon (and so a box) in YOLO segmentation
format, like a Roboflow export of CarDD. Same seed -> same bytes.

Examples:
    cardamage synth --out datasets/synth --train 400 --val 100 --imgsz 320 --seed 0
    python -m pipeline synth --out /tmp/s --train 8 --val 4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.cli.options import add_overwrite, int_range, non_negative_int
from pipeline.core.facts import MAX_IMGSZ
from pipeline.core.io import one_line, output_folder
from pipeline.data.synth import write_dataset


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (gets train/, val/, data.yaml)")
    p.add_argument("--train", type=non_negative_int, default=400, help="number of training images (default 400)")
    p.add_argument("--val", type=non_negative_int, default=100, help="number of validation images (default 100)")
    p.add_argument("--imgsz", type=int_range(64, MAX_IMGSZ), default=640, help="square image side in pixels (default 640)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed: same seed -> same bytes (default 0)")
    add_overwrite(p)


def run(args) -> int:
    t = time.perf_counter()
    with output_folder(args.out, overwrite=args.overwrite, folders=["train", "val"]):  # checked before any image
        yaml = write_dataset(args.out, args.train, args.val, args.imgsz, args.seed)
    dt = time.perf_counter() - t
    n = args.train + args.val
    print(f"wrote {n} images to {one_line(Path(args.out).resolve())} in {dt:.1f}s ({n / max(dt, 1e-9):.0f} img/s); "
          f"data: {one_line(yaml)}")
    return 0
