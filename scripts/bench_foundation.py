"""Benchmark the foundation: synthetic-data throughput (one core) and, optionally, the whole demo's time.

Prints numbers measured in this run only; nothing here is asserted in tests (the machine is shared).

Examples:
    .venv/bin/python scripts/bench_foundation.py                 # synth throughput at 640 and 256
    .venv/bin/python scripts/bench_foundation.py --demo runs/bench-demo   # + a full `cardamage demo`
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # synth is single-threaded by design; measure one core

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import pipeline  # noqa: E402,F401
from pipeline.synth import render_scene, write_dataset  # noqa: E402


def synth_rate(imgsz: int, n: int) -> tuple[float, float]:
    """Images per second: drawing only, and drawing + JPEG encode + atomic writes of image and label."""
    cv2.setNumThreads(1)
    t = time.perf_counter()
    for i in range(n):
        render_scene(np.random.default_rng([0, 0, i]), imgsz)
    draw = n / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as d:
        write_dataset(Path(d) / "warm", 1, 0, imgsz=imgsz, seed=0, progress=False)  # imports (Ultralytics' TQDM) out of the timing
        t = time.perf_counter()
        write_dataset(d, n, 0, imgsz=imgsz, seed=0, progress=False)
        full = n / (time.perf_counter() - t)
    return draw, full


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images per synth measurement")
    ap.add_argument("--demo", help="also run `cardamage demo --out DEMO` and time it")
    args = ap.parse_args()
    for s in (640, 256):
        draw, full = synth_rate(s, args.n)
        print(f"synth {s}px, one core: draw {draw:6.1f} img/s, draw+encode+write {full:6.1f} img/s  (goal >= 50 at 640)")
    if args.demo:
        cli = Path(sys.executable).with_name("cardamage")
        t = time.perf_counter()
        rc = subprocess.call([str(cli), "demo", "--out", args.demo])
        dt = time.perf_counter() - t
        print(f"demo: exit {rc}, {dt:.0f} s wall on {os.cpu_count()} cores (budget 600 s); see {args.demo}/summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
