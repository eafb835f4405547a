"""Benchmark ``cardamage report``: the code before the per-photo run (commit 3e16b48) against this tree.

Both run as whole processes (``python -m pipeline report``: imports, model load, every section, the page)
on the same 640 px photo with the same weights, alternately, ``--repeats`` times each; prints the median
wall time of each and their ratio (new / old), measured in this one run. The old code is extracted with
``git archive OLD pipeline`` into a temporary folder and run with ``PYTHONPATH`` pointing there; the
stats C extension built in this tree, when there is one, is copied beside it so both use the same kernel.

The photo: a CarDD sample photo (default the first), letterboxed to 640x640 (grey 114, as the model's own
letterbox) and saved as PNG, so both read identical pixels. The weights: ``load_model("yolov8n.yaml", nc=6)``
with seed 0, saved once with Ultralytics' ``Model.save``.

Run:
    .venv/bin/python scripts/bench_report.py --repeats 5
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_report.py --repeats 5 --photo path/to/photo.jpg
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

START_ENV = dict(os.environ)  # before ``import ultralytics`` sets OMP_NUM_THREADS=1: the children get the caller's

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402

import pipeline  # noqa: F401  (offline environment before ultralytics)
from pipeline.core.io import atomic_write_image, read_image  # noqa: E402
from pipeline.model.load import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT.parent / "shared" / "data" / "cardd-sample" / "images"


def photo_640(src: Path, dst: Path, side: int = 640) -> Path:
    """``src`` resized so its longer side is ``side`` and padded to a square with grey 114."""
    img = read_image(src)
    h, w = img.shape[:2]
    r = side / max(h, w)
    img = cv2.resize(img, (round(w * r), round(h * r)), interpolation=cv2.INTER_LINEAR)
    out = np.full((side, side, 3), 114, np.uint8)
    top, left = (side - img.shape[0]) // 2, (side - img.shape[1]) // 2
    out[top:top + img.shape[0], left:left + img.shape[1]] = img
    return atomic_write_image(dst, out)


def extract(commit: str, dst: Path) -> Path:
    """``git archive COMMIT pipeline`` unpacked into ``dst``; the built stats extension copied in if present."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "pipeline"], check=True,
                             capture_output=True).stdout
    dst.mkdir(parents=True, exist_ok=True)
    tar = dst / "pipeline.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(dst, filter="data")
    for so in (ROOT / "pipeline" / "probe").glob("_channel_stats*.so"):
        shutil.copy2(so, dst / "pipeline" / "probe" / so.name)
    return dst


def report_seconds(code: Path, weights: Path, photo: Path, out: Path, extra: list[str]) -> float:
    """Wall seconds of one ``python -m pipeline report`` process running the tree at ``code``."""
    env = dict(START_ENV, PYTHONPATH=str(code))
    cmd = [sys.executable, "-m", "pipeline", "report", "--weights", str(weights), str(photo), "--out", str(out),
           "--imgsz", "640", *extra]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=code)
    seconds = time.perf_counter() - t
    if done.returncode != 0 or not (out / "report.html").exists():
        raise SystemExit(f"report failed ({code}):\n{done.stderr[-2000:]}")
    return seconds


def png_levels(folder: Path) -> None:
    """Re-encode the report's figures at PIL's default zlib level (6) and at the level ``save_png`` uses (1)."""
    images = [PIL.Image.open(f).convert("RGBA") for f in sorted(folder.rglob("*.png"))]
    for level in (6, 1):
        t, size = time.perf_counter(), 0
        for im in images:
            buf = io.BytesIO()
            im.save(buf, format="png", compress_level=level)
            size += buf.tell()
        print(f"{len(images)} figures at zlib level {level}: {time.perf_counter() - t:.2f} s to encode, {size / 1024:.0f} KiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photo", type=Path, default=None, help="photo to letterbox to 640 (default: first CarDD sample)")
    ap.add_argument("--old", default="3e16b48", help="commit of the old report (default 3e16b48)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each, alternating (default 3)")
    ap.add_argument("--no-layercam", action="store_true", help="pass --no-layercam to both")
    args = ap.parse_args()
    src = args.photo or sorted(SAMPLES.glob("*.jpg"))[0]
    with tempfile.TemporaryDirectory(prefix="bench_report_") as tmp:
        tmp = Path(tmp)
        photo = photo_640(src, tmp / "photo_640.png")
        torch.manual_seed(0)
        weights = tmp / "yolov8n_seed0.pt"
        load_model("yolov8n.yaml", nc=6).save(str(weights))
        old = extract(args.old, (tmp / "old").resolve())
        extra = ["--no-layercam"] if args.no_layercam else []
        times = {"old": [], "new": []}
        for i in range(args.repeats):
            for name, code in (("old", old), ("new", ROOT)):
                times[name].append(report_seconds(code, weights, photo, tmp / f"{name}_{i}", extra))
                print(f"  run {i + 1}/{args.repeats} {name}: {times[name][-1]:.2f} s", flush=True)
        o, n = statistics.median(times["old"]), statistics.median(times["new"])
        print(f"photo {src.name} -> 640x640, weights yolov8n.yaml seed 0 ({weights.stat().st_size:,} bytes), "
              f"OMP_NUM_THREADS={START_ENV.get('OMP_NUM_THREADS', 'unset')}, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
        print(f"old ({args.old}) median {o:.2f} s   new median {n:.2f} s   ratio new/old {n / o:.2f}")
        last = json.loads((tmp / f"new_{args.repeats - 1}" / "report_files" / "report.json").read_text())
        # where the new process spends its time (the side process's sections overlap the main one's)
        print("new, last run, seconds inside the process:", ", ".join(f"{k} {v}" for k, v in last["timings_s"].items()))
        png_levels(tmp / f"new_{args.repeats - 1}" / "report_files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
