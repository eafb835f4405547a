"""Benchmark `cardamage check`: images/s of the per-image scan, and the duplicate search at CarDD scale.

Prints, from one run: scan throughput on a dataset (default: the 100-photo CarDD sample), and the time
of the blockwise numpy popcount search over 4,000 random 64-bit hashes split 3,200/800 against a plain
Python double loop over a 200 x 800 slice, scaled to the full pair count (the ratio is the point).

Run:
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_check.py
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_check.py datasets/cardd-roboflow-check/data.yaml
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import pipeline  # noqa: F401  (offline environment before ultralytics)
from pipeline.data.check import check_dataset
from pipeline.data.duplicates import find_duplicates, hamming

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "cardd-sample" / "data.yaml"
    check_dataset(data)  # warm: imports, file cache
    t = time.perf_counter()
    report = check_dataset(data)
    dt = time.perf_counter() - t
    n = report["total"]["images"]
    print(f"check {data}: {n} images in {dt:.2f} s = {n / dt:.0f} images/s (decode + sha1 + phash + labels)")

    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**64, size=4000, dtype=np.uint64)
    paths = [Path(f"/bench/{i}.jpg") for i in range(4000)]
    given = {p: (str(i), int(h)) for i, (p, h) in enumerate(zip(paths, hashes))}
    splits = {"train": paths[:3200], "val": paths[3200:]}
    t = time.perf_counter()
    find_duplicates(splits, near_threshold=4, hashes=given)
    fast = time.perf_counter() - t

    ha, hb = [int(h) for h in hashes[:200]], [int(h) for h in hashes[3200:]]
    t = time.perf_counter()
    _ = [(i, j) for i, a in enumerate(ha) for j, b in enumerate(hb) if hamming(a, b) <= 4]
    slow = (time.perf_counter() - t) * 3200 / 200
    print(f"duplicate search 3200 x 800 pairs: numpy blockwise {fast * 1000:.0f} ms, "
          f"python loop (scaled) {slow * 1000:.0f} ms, ratio {slow / fast:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
