"""Measure ``cardamage explore`` on one photo: first view, /api/neuron latency, memory.

Starts the real server (uvicorn on 127.0.0.1, a free port) in this process and asks it over HTTP, as the page
does:

1. first view: from the first request to the last of what the page loads on opening (summary, model, stages,
   detections, the photo), the photo's one ``PhotoRun`` included;
2. /api/neuron: median (and p90, max) over ``--neurons`` random neurons spread over every Conv block, asked one
   after another after the first view (a deep layer's receptive field is measured on its first ask per neuron);
3. memory: the process's resident set after loading the model, and its peak after the photo's run and all the
   neuron asks (``ru_maxrss``), so the photo's own share is the difference.

Examples:
    python scripts/bench_explore.py --weights best.pt ../shared/data/cardd-sample/images/000001_jpg.rf.*.jpg
    python scripts/bench_explore.py          # yolov8n.yaml (untrained, 6 classes) on the first CarDD sample photo
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import time
from pathlib import Path

import httpx

from pipeline.core.facts import CLASS_NAMES
from pipeline.explore.app import running
from pipeline.explore.session import Explorer
from pipeline.model.load import load_model

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cardd-sample" / "images"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("photo", nargs="?", help="a photo (default: the first CarDD sample photo)")
    ap.add_argument("--weights", default="yolov8n.yaml")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--neurons", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    photo = Path(args.photo) if args.photo else min(SAMPLE.glob("*.jpg"))

    yolo = load_model(args.weights, nc=len(CLASS_NAMES))
    explorer = Explorer(yolo, [photo], imgsz=args.imgsz)
    with running(explorer) as url:
        base = f"{url}/api"
        rss_model = rss_mb()

        with httpx.Client(timeout=120) as client:
            t0 = time.perf_counter()
            client.get(f"{base}/summary", params={"photo": 0}).raise_for_status()
            for what in ("model", "stages", "detections", "image"):
                client.get(f"{base}/{what}", params={"photo": 0}).raise_for_status()
            first_view = time.perf_counter() - t0
            rss_view = rss_mb()

            model = client.get(f"{base}/model").json()
            convs = [r for r in model if r["type"] == "Conv"]
            rng = random.Random(args.seed)
            times, first_per_layer = [], {}
            for k in range(args.neurons):
                r = convs[k % len(convs)]
                _, c, h, w = r["out_shape"]
                p = {"photo": 0, "layer": r["path"], "channel": rng.randrange(c), "y": rng.randrange(h), "x": rng.randrange(w)}
                t = time.perf_counter()
                client.get(f"{base}/neuron", params=p).raise_for_status()
                dt = time.perf_counter() - t
                times.append(dt)
                first_per_layer.setdefault(r["path"], dt)
    times_ms = sorted(1000 * t for t in times)
    out = {
        "photo": photo.name, "weights": args.weights, "imgsz": args.imgsz,
        "first_view_s": round(first_view, 3),
        "neuron_ms": {"n": len(times_ms), "median": round(statistics.median(times_ms), 1),
                      "p90": round(times_ms[int(0.9 * (len(times_ms) - 1))], 1), "max": round(times_ms[-1], 1)},
        "slowest_layer_first_ask_ms": dict(sorted(((k, round(1000 * v, 1)) for k, v in first_per_layer.items()),
                                                  key=lambda kv: -kv[1])[:3]),
        "rss_after_model_mb": round(rss_model, 1),
        "rss_after_first_view_mb": round(rss_view, 1),
        "rss_after_neurons_mb": round(rss_mb(), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
