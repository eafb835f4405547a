"""Benchmark the foundation: synthetic-data throughput (one core) and, optionally, the whole demo's time.

Prints numbers measured in this run only; nothing here is asserted in tests (the machine is shared).

Examples:
    .venv/bin/python scripts/bench_foundation.py                 # synth throughput at 640 and 256
    .venv/bin/python scripts/bench_foundation.py --demo runs/bench-demo   # + a full `cardamage demo`
    .venv/bin/python scripts/bench_foundation.py --train-threads          # one epoch: 1 torch thread vs all
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
from pipeline.data.synth import render_scene, write_dataset  # noqa: E402


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


def train_threads(n_images: int = 400) -> None:
    """One epoch on the demo recipe with Ultralytics' 1 torch thread, then with every core (our default)."""
    import torch

    from pipeline.model.train import train

    with tempfile.TemporaryDirectory() as d:
        data = write_dataset(Path(d) / "data", n_images, 20, imgsz=256, seed=0, progress=False)
        for n in (1, os.cpu_count() or 1):
            pin = {"on_train_epoch_start": lambda trainer, n=n: torch.set_num_threads(n)}  # runs after ours
            t = time.perf_counter()
            train(data, Path(d) / f"t{n}", config=Path(__file__).resolve().parent.parent / "configs" / "demo.yaml",
                  epochs=1, time=0, val=False, callbacks=pin)
            print(f"train: one epoch of {n_images} images at 224 px with {n} torch thread(s): {time.perf_counter() - t:.1f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images per synth measurement")
    ap.add_argument("--demo", help="also run `cardamage demo --out DEMO` and time it")
    ap.add_argument("--train-threads", action="store_true", help="also time one training epoch, 1 thread vs all cores")
    args = ap.parse_args()
    for s in (640, 256):
        draw, full = synth_rate(s, args.n)
        print(f"synth {s}px, one core: draw {draw:6.1f} img/s, draw+encode+write {full:6.1f} img/s  (goal >= 50 at 640)")
    if args.train_threads:
        train_threads()
    if args.demo:
        cli = Path(sys.executable).with_name("cardamage")
        t = time.perf_counter()
        rc = subprocess.call([str(cli), "demo", "--out", args.demo])
        dt = time.perf_counter() - t
        print(f"demo: exit {rc}, {dt:.0f} s wall on {os.cpu_count()} cores (budget 600 s); see {args.demo}/summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
