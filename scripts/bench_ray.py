"""``cardamage predict --ray`` with 1 and 2 workers against the plain command, on the same photos, in one run.

Each of the three commands runs as its own process, exactly as a user types it, timed from start to exit
(so Ray's start, its workers' imports and the model's trip through the object store count against it).
Each ``--ray`` run also prints how long its workers took for the photos alone (``ray: N photos in X s``),
which is what more workers speed up. Every run's detections.json must equal the plain command's.

Without ``--weights`` a seeded "trained-looking" checkpoint (``tests/checkpoints.py``) stands in: its
speed is that of any YOLOv8n, and its class biases let boxes through.

Examples:
    .venv/bin/python scripts/bench_ray.py                     # the 100 CarDD sample photos, 640 px
    .venv/bin/python scripts/bench_ray.py --source photos/ --weights best.pt --workers 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "cardd-sample" / "images"


def run(cmd: list[str], env: dict) -> tuple[float, str, int]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, p.stderr + p.stdout, p.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=str(SAMPLE), help="folder of photos (default: the CarDD sample)")
    ap.add_argument("--weights", default=None, help="weights .pt (default: a seeded stand-in checkpoint)")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts to run")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    weights = args.weights
    if weights is None:
        sys.path.insert(0, str(ROOT / "tests"))
        sys.path.insert(0, str(ROOT))
        from checkpoints import save_checkpoint

        weights = str(save_checkpoint(tmp / "standin.pt", imgsz=args.imgsz))
    base = [sys.executable, "-m", "pipeline", "predict", args.source, "--weights", weights, "--imgsz", str(args.imgsz),
            "--conf", str(args.conf), "--no-overlays"]
    n = len([p for p in Path(args.source).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")])
    print(f"{n} photos from {args.source}, imgsz {args.imgsz}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")

    rows = []
    secs, log, rc = run([*base, "--out", str(tmp / "plain")], env)
    assert rc in (0, 1), log
    plain = json.loads((tmp / "plain" / "detections.json").read_text())
    rows.append({"run": "cardamage predict (one process)", "wall_s": secs, "photos_s": None, "workers_ready_s": None,
                 "equal": True})
    for w in args.workers:
        out = tmp / f"ray{w}"
        secs, log, rc = run([*base, "--out", str(out), "--ray", "--workers", str(w)], env)
        assert rc in (0, 1), log
        m = re.search(r"ray: (\d+) photos in ([\d.]+) s on (\d+) workers", log)
        ready = re.search(r"ready in ([\d.]+) s", log)
        equal = json.loads((out / "detections.json").read_text()) == plain
        rows.append({"run": f"--ray --workers {w}", "wall_s": secs, "photos_s": float(m.group(2)) if m else None,
                     "workers_ready_s": float(ready.group(1)) if ready else None,
                     "equal": equal})
    print(f"{'run':34} {'wall s':>8} {'img/s':>7} {'workers only s':>15} {'img/s':>7}  same detections")
    for r in rows:
        ps = r["photos_s"]
        print(f"{r['run']:34} {r['wall_s']:8.2f} {n / r['wall_s']:7.2f} {ps if ps else float('nan'):15.2f} "
              f"{n / ps if ps else float('nan'):7.2f}  {r['equal']}")
    ray_rows = [r for r in rows[1:] if r["photos_s"]]
    if len(ray_rows) >= 2:
        a, b = ray_rows[0], ray_rows[-1]
        print(f"speed-up {b['run']} over {a['run']}: {a['photos_s'] / b['photos_s']:.2f}x on the photos, "
              f"{a['wall_s'] / b['wall_s']:.2f}x end to end")
    for r in ray_rows:
        print(f"Ray overhead of {r['run']}: {r['wall_s'] - rows[0]['wall_s']:+.2f} s end to end against the plain "
              f"command ({r['wall_s'] - r['photos_s']:.2f} s of it outside the photos, {r['workers_ready_s'] or 0:.2f} s of "
              "that waiting for the workers to import torch and take the model)")
    print(json.dumps({"photos": n, "rows": rows}))
    return 0 if all(r["equal"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
