"""Benchmark the inspector: what recording costs next to a plain forward pass, and a full dump's time and size.

Prints, from one run on one 640 photo (default: the first CarDD sample photo):

- plain forward vs stats-only recording of all 57 Conv blocks (+ head) as a ratio of CPU times (goal
  <= 1.15x): the median over rounds of each round's ratio, the two run back to back so that machine load
  hits both alike; per image with a fresh recorder and with one recorder kept open (a dataset pass); the
  same with torch reductions instead of the C kernel (``kernel=False``), no-op hooks and tensors mode for
  reference; a breakdown of the extra time (the kernel's reads, the hooks' other Python, a fresh recorder's
  setup); the same ratios of wall times (with several torch threads, idle OpenMP threads spin and
  count as CPU time, so wall is the fairer clock there);
- the same for a model whose SiLU runs in place, as every checkpoint Ultralytics loads does (the
  recorder then takes z's statistics before the SiLU, or copies z in tensors mode);
- the full float32 dump (``inspect_image``: forward + stats + five files) in seconds (goal <= 2 s) and
  the size of each file; the same in float16.

Run:
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_inspect.py
    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_inspect.py path/to/photo.jpg --weights best.pt --repeats 15
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

import pipeline  # noqa: F401  (offline environment before ultralytics)
from pipeline.probe.statistics import FILES, inspect_image
from pipeline.probe.recorder import LayerRecorder
from pipeline.data.preprocess import model_input
from pipeline.probe.layers import conv_blocks
from pipeline.model.load import load_model, model_stride

ROOT = Path(__file__).resolve().parent.parent


def interleaved(fns: dict, repeats: int, base: str = "plain") -> dict:
    """Time each function round-robin; per function: (median wall s, median CPU s, ratio to ``base``).

    The ratio is the median over rounds of (this function's CPU time / ``base``'s CPU time in the same round):
    each pair ran back to back, so a load spike from another process that lasts longer than a round hits
    both alike and cancels, where medians taken separately per function would drift apart on a shared
    machine. CPU time (``time.process_time``) is what this process spent computing; with one torch thread
    it equals wall time on a quiet machine.
    """
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for f in fns.values():  # warm-up (allocator, first-call costs)
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            w, c = time.perf_counter(), time.process_time()
            f()
            cpu[k].append(time.process_time() - c)
            wall[k].append(time.perf_counter() - w)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k]),
                statistics.median(c / b for c, b in zip(cpu[k], cpu[base])),
                statistics.median(c / b for c, b in zip(wall[k], wall[base]))) for k in fns}


def recording_costs(net, x, repeats: int, label: str) -> dict:
    """Print and return {name: ratio to a plain forward} for no-op hooks, stats (fresh/open) and tensors."""
    def plain():
        with torch.no_grad():
            net(x)

    def record(mode):
        def f():
            with LayerRecorder(net, mode=mode) as rec:
                rec(x)

        return f

    # a dataset pass keeps one recorder open over many images: hooks set up once, stats accumulate
    twin = copy.deepcopy(net)  # its own hooks, so `plain` on `net` stays hook-free
    # the hooks' own price: as many hooks as the recorder sets, each doing nothing
    hooked = copy.deepcopy(net)
    for block in conv_blocks(hooked).values():
        for m in (block.bn if hasattr(block, "bn") else block.conv, block):
            m.register_forward_hook(lambda *_: None)

    def noop():
        with torch.no_grad():
            hooked(x)

    with LayerRecorder(twin, mode="stats") as open_rec:
        t = interleaved({"plain": plain, "noop": noop, "stats": record("stats"), "stats_open": lambda: open_rec(x),
                         "tensors": record("tensors")}, repeats)
    with LayerRecorder(twin, mode="stats", kernel=False) as rec:  # the torch-reduction path, for comparison
        t.update(interleaved({"plain": plain, "stats_torch": lambda: rec(x)}, max(3, repeats // 3)))
    for clock, i in (("cpu ", 2), ("wall", 3)):
        r = {k: v[i] for k, v in t.items()}
        print(f"{label} [{clock}]: plain forward {t['plain'][1] * 1e3:.1f} ms CPU, {t['plain'][0] * 1e3:.1f} ms wall | "
              f"no-op hooks {r['noop']:.3f}x | stats-only {r['stats']:.3f}x (goal <= 1.15x), recorder kept open "
              f"{r['stats_open']:.3f}x, torch reductions instead of the C kernel {r['stats_torch']:.3f}x | "
              f"tensors {r['tensors']:.3f}x")
    return {k: v[2] for k, v in t.items()}


def cost_breakdown(net, x, repeats: int, label: str) -> None:
    """Where a stats-only recording's extra time goes, per image: the C kernel's two reads (timed inside
    the forward), the rest of the hooks' Python (``update_pre``/``update_post`` minus the kernel), and a
    fresh recorder's setup and teardown (walking the model, registering and removing its hooks)."""
    from pipeline.probe import layers as inspector

    if inspector._channel_stats is None:
        print(f"{label}: C kernel not built, no breakdown")
        return
    real, spent = inspector._channel_stats, {"pre": 0.0, "post": 0.0, "update": 0.0}

    class Timed:  # the kernel's two entry points, timed
        @staticmethod
        def pre(*a):
            t = time.perf_counter()
            real.pre(*a)
            spent["pre"] += time.perf_counter() - t

        @staticmethod
        def post(*a):
            t = time.perf_counter()
            real.post(*a)
            spent["post"] += time.perf_counter() - t

    cls = inspector.ChannelStats
    orig = cls.update_pre, cls.update_post

    def timed(fn):
        def wrapper(self, *a):
            t = time.perf_counter()
            fn(self, *a)
            spent["update"] += time.perf_counter() - t
        return wrapper

    twin = copy.deepcopy(net)
    inspector._channel_stats, cls.update_pre, cls.update_post = Timed, timed(orig[0]), timed(orig[1])
    try:
        with LayerRecorder(twin, mode="stats") as rec:
            rec(x)  # warm-up
            for k in spent:
                spent[k] = 0.0
            for _ in range(repeats):
                rec(x)
    finally:
        inspector._channel_stats, (cls.update_pre, cls.update_post) = real, orig
    setup = []
    for _ in range(max(repeats, 20)):
        t = time.perf_counter()
        with LayerRecorder(twin, mode="stats"):
            pass
        setup.append(time.perf_counter() - t)
    ms = {k: v / repeats * 1e3 for k, v in spent.items()}
    print(f"{label}: per image, kernel reads z {ms['pre']:.1f} ms + a {ms['post']:.1f} ms, other hook Python "
          f"{ms['update'] - ms['pre'] - ms['post']:.1f} ms; fresh recorder setup+teardown "
          f"{statistics.median(setup) * 1e3:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = sorted((ROOT.parent / "shared" / "data" / "cardd-sample" / "images").glob("*.jpg"))
    ap.add_argument("image", nargs="?", default=str(default[0]) if default else None)
    ap.add_argument("--weights", default="yolov8n.yaml")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    if args.image is None:
        raise SystemExit("give a photo: no CarDD sample found beside the repo")

    torch.manual_seed(0)
    yolo = load_model(args.weights, nc=6)
    net = yolo.model.eval()
    x, _ = model_input(args.image, args.imgsz, stride=model_stride(net))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.weights} on {Path(args.image).name}, "
          f"input {list(x.shape)}; medians of {args.repeats} interleaved runs")

    recording_costs(net, x, args.repeats, "SiLU out of place")
    inplace = copy.deepcopy(net)
    for m in inplace.modules():
        if isinstance(m, torch.nn.SiLU):
            m.inplace = True  # what Ultralytics' load_checkpoint does to every loaded .pt
    recording_costs(inplace, x, args.repeats, "SiLU in place   ")
    cost_breakdown(inplace, x, args.repeats, "breakdown, SiLU in place")

    with tempfile.TemporaryDirectory() as tmp:
        for label, model in (("SiLU out of place", net), ("SiLU in place", inplace)):
            for dtype in ("float32", "float16"):
                runs = []
                for i in range(3):
                    res = inspect_image(model, args.image, Path(tmp) / f"{dtype}{i}", dtype=dtype, imgsz=args.imgsz)
                    runs.append(res["seconds"])
                sizes = ", ".join(f"{res[k].name} {res['bytes'][k] / 1e6:.1f} MB" for k in FILES)
                total = sum(res["bytes"].values()) / 1e6
                goal = " (goal <= 2 s)" if dtype == "float32" else ""
                print(f"full {dtype} dump, {label}: median {statistics.median(runs):.2f} s of 3{goal}; "
                      f"{total:.1f} MB in all: {sizes}")

if __name__ == "__main__":
    main()
