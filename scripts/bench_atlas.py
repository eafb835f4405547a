"""Benchmark the channel atlas: its time next to a plain predict, and its peak memory at two dataset sizes.

Prints a markdown table (the one docs/atlas.md leaves for measured numbers):

- **time**: ``cardamage atlas`` of every Conv block (one forward pass per photo, the tables, the crops, the
  pages) against stock ``YOLO.predict(stream=True)`` over the same photos at the same size, one photo at a
  time (the atlas's own pace). Each runs in its own child process, in alternating rounds, so that load from
  other processes hits both; the ratio is of the summed wall times. Goal: <= 2x.
- **memory**: the atlas's peak resident memory (``ru_maxrss`` of a child process that builds only the atlas)
  over the first ``--small`` photos and over all of them. Goal: <= 1.5 GB whatever the number of photos, and
  the two peaks about equal (the tables do not grow with photos).

Needs two idle cores; on a shared machine the ratio still holds roughly (alternating rounds), the seconds do not.

Examples:
    .venv/bin/python scripts/bench_atlas.py --weights best.pt --source datasets/cardd-roboflow-check/valid/images
    .venv/bin/python scripts/bench_atlas.py --weights best.pt --source ../shared/data/cardd-sample/data.yaml \\
        --imgsz 320 --small 50 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import pipeline  # noqa: F401  (offline environment before ultralytics)
from pipeline.model.load import load_model
kind, weights, listing, imgsz, out = sys.argv[1:6]
files = Path(listing).read_text().split("\n")
t = time.perf_counter()
if kind == "predict":
    from ultralytics import YOLO
    yolo = YOLO(weights)
    for f in files:
        for _ in yolo.predict(f, imgsz=int(imgsz), stream=True, verbose=False, device="cpu"):
            pass
else:
    from pipeline.atlas.build import build_atlas
    build_atlas(load_model(weights), files, out, imgsz=int(imgsz), progress=False)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(kind: str, weights: str, files: list[str], imgsz: int) -> dict:
    """Run ``kind`` (``predict`` or ``atlas``) over ``files`` in a fresh process; its seconds and peak RSS (MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "files.txt"
        listing.write_text("\n".join(files))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        res = subprocess.run([sys.executable, "-c", CHILD, kind, weights, str(listing), str(imgsz), str(Path(tmp) / "atlas")],
                             capture_output=True, text=True, env=env, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--source", required=True, help="a folder, glob, .txt list or data.yaml (its val split)")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--small", type=int, default=200, help="photos of the smaller memory run (default 200)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating predict/atlas rounds (default 2)")
    args = ap.parse_args()
    from pipeline.analysis.atlas import atlas_sources

    files, errors = atlas_sources([args.source])
    files = [str(f) for f in files]
    if errors or not files:
        raise SystemExit(f"bad source: {errors[:3]}")
    times = {"predict": [], "atlas": []}
    peaks = {}
    for _ in range(args.rounds):
        for kind in ("predict", "atlas"):
            r = child(kind, args.weights, files, args.imgsz)
            times[kind].append(r["seconds"])
            if kind == "atlas":
                peaks[len(files)] = max(peaks.get(len(files), 0), r["peak_mb"])
    small = files[: args.small]
    peaks[len(small)] = child("atlas", args.weights, small, args.imgsz)["peak_mb"]
    p, a = sum(times["predict"]), sum(times["atlas"])
    n = len(files)
    print("| what | photos | imgsz | value | goal |\n|---|---|---|---|---|")
    print(f"| predict, wall s per round | {n} | {args.imgsz} | {p / args.rounds:.1f} | |")
    print(f"| atlas (all Conv blocks, crops, pages), wall s per round | {n} | {args.imgsz} | {a / args.rounds:.1f} | |")
    print(f"| atlas / predict time | {n} | {args.imgsz} | {a / p:.2f}x | <= 2x |")
    for k in sorted(peaks):
        print(f"| atlas peak RSS, MB | {k} | {args.imgsz} | {peaks[k]:.0f} | <= 1536 |")
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
