"""Time `cardamage predict FOLDER` against stock PyTorch predict, and the engine's settings in one process.

Two measurements, each variant in a fresh Python process, rounds alternating (the machine is shared and
noisy: ratios are taken within a round):

1. whole process, start to exit: stock ``YOLO(pt).predict(folder, stream=True)`` against
   ``cardamage predict FOLDER --no-overlays`` (the engine, ONNX Runtime, graph cache warm after round 1);
2. in one process, the engine's steady ms per photo (after 5 warm-up photos) for ONNX Runtime streams
   (2 = one single-threaded session per core, 1 = one session on both cores) and glibc's mmap threshold
   (``runtime.return_freed_memory``: unset, 1 MB, 8 MB).

Examples:
    python scripts/bench_engine.py --weights /tmp/onnx-route/bench.pt      # weights as bench_onnx_route.py makes
    python scripts/bench_engine.py --weights best.pt --rounds 3 --conf 0.25
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "cardd-sample" / "images"

STOCK = """
import sys, pipeline
from ultralytics import YOLO
weights, source, conf = sys.argv[1], sys.argv[2], float(sys.argv[3])
n = sum(1 for _ in YOLO(weights, task="detect").predict(source, stream=True, conf=conf, imgsz=640, device="cpu",
                                                        verbose=False))
"""

ENGINE = """
import ctypes, glob, sys, time
import pipeline
from pipeline.model.engine import Engine
from pipeline.model.load import load_model
weights, source, conf, streams, threshold = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if threshold:
    ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD, as runtime.return_freed_memory sets it
files = sorted(glob.glob(source + "/*.jpg"))
engine = Engine(load_model(weights), imgsz=640, conf=conf, streams=streams)
list(engine.run(files[:5]))
t = time.perf_counter()
n = sum(1 for _ in engine.run(files))
print(1000 * (time.perf_counter() - t) / n)
"""


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="a YOLOv8 .pt checkpoint")
    ap.add_argument("--source", default=str(SAMPLE), help="folder of .jpg photos (default: the CarDD sample)")
    ap.add_argument("--conf", type=float, default=0.9)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    py = sys.executable
    env_note = f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start"

    print(f"whole process, {args.source}, conf {args.conf}, {env_note}")
    ratios = []
    out = Path("/tmp/bench_engine_out")
    for r in range(args.rounds):
        stock = wall([py, "-c", STOCK, args.weights, args.source, str(args.conf)])
        ours = wall([py, "-m", "pipeline", "predict", args.source, "--weights", args.weights, "--out", str(out),
                     "--no-overlays", "--conf", str(args.conf)])
        ratios.append(stock / ours)
        print(f"  round {r + 1}: stock {stock:.2f} s, cardamage predict {ours:.2f} s, stock/ours {stock / ours:.2f}x")
    print(f"  median stock/ours {statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x)")

    print("in one process, engine steady ms/photo")
    variants = [(2, 0), (2, 1 << 20), (2, 8 << 20), (1, 8 << 20)]
    times: dict[tuple, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for streams, threshold in variants:
            res = subprocess.run([py, "-c", ENGINE, args.weights, args.source, str(args.conf), str(streams),
                                  str(threshold)], check=True, capture_output=True, text=True)
            times[(streams, threshold)].append(float(res.stdout.strip().splitlines()[-1]))
    for (streams, threshold), ts in times.items():
        label = f"{threshold >> 20} MB" if threshold else "unset"
        print(f"  streams {streams}, mmap threshold {label}: {statistics.median(ts):.1f} ms/photo "
              f"({', '.join(f'{t:.1f}' for t in ts)})")


if __name__ == "__main__":
    main()
