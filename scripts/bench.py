"""Every benchmark of the project: ``scripts/bench.py TARGET [options] [--record [ROWS_FILE]]``.

Targets (``scripts/bench.py TARGET --help`` for each one's options):

    predict    whole processes on the same photos: the project's ``cardamage predict FOLDER`` against
               Ultralytics' stock .pt predict, its ONNX export route and (with ``openvino`` installed) its
               OpenVINO route; the detections must agree. ``--in-process`` times stock and the engine in one
               process (the older predict-* rows), ``--engine-settings`` the engine's streams and mmap threshold
    inspect    what recording every layer costs next to a plain forward pass, and a full dump's time and size
    report     a ``cardamage report`` process against a one-photo ``cardamage predict`` process (``--old
               COMMIT`` adds the report of an older commit)
    explore    ``cardamage explore``: start-up until it answers, the page's first view, /api/neuron and /api/effect latency
    atlas      a ``cardamage atlas`` process against a ``cardamage predict`` process on the same photos (issue
               33: within 2x), and the atlas's peak RSS over all the photos and over the first ``--small``
    ray        ``cardamage predict --ray`` with 1, 2... workers against the plain command, same detections
    cardd-cpu  CarDD training rows under a wall-clock budget (each one ``scripts/train_cardd.py`` process);
               ``--throughput`` times forward + backward per batch, size and memory layout
    demo       ``cardamage demo`` as a whole process (``make demo``'s command), its steps and its model;
               ``--part synth`` the generator's rate, ``--part train-threads`` one epoch at 1 vs all threads
    check      ``cardamage check DATA_YAML`` as a whole process
    memory     peak resident memory of every command that reads a photo, whole processes, on a 64 MP photo,
               beside a process that only imports their libraries

The harness (``scripts/benchlib.py``) runs each variant as a child process, alternates the variants round
by round, reports medians and minima, per-round ratios measured in this one run and each child's peak
RSS, and with ``--record`` appends one row per measurement to ``benchmarks/rows/TABLE.jsonl`` (the exact
command, this machine, today) and renders docs/benchmarks.md from the rows. Numbers on a shared host
move with its load: compare rows measured on the same machine, in the same run where possible.

Examples:
    .venv/bin/python scripts/bench.py predict --rounds 3 --conf 0.9
    .venv/bin/python scripts/bench.py report --rounds 5 --record
    .venv/bin/python scripts/bench.py atlas --weights best.pt --source datasets/cardd-roboflow-check/valid/images --imgsz 320
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench.py inspect --repeats 21
    .venv/bin/python scripts/bench.py cardd-cpu --data datasets/cardd-staged/data.yaml --minutes 30 --rows recipe --record
    .venv/bin/python scripts/bench.py predict --n 3 --rounds 1 --variants stock ours   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as H  # noqa: E402

ROOT, SAMPLE = H.ROOT, H.SAMPLE
BENCH = Path(__file__).resolve()
PY = sys.executable
CONFIGS = ROOT / "configs"


def _pipeline():
    """The project on the path, offline settings before Ultralytics (only what needs it imports it)."""
    sys.path.insert(0, str(ROOT))
    import pipeline  # noqa: F401


def stand_in_weights(path: Path, imgsz: int = 640) -> Path:
    """A seeded "trained-looking" YOLOv8n (``tests/checkpoints.py``): any YOLOv8n's speed, boxes that pass conf."""
    if not path.is_file():  # in a child: torch stays out of this process, whose peak is every child's RSS floor
        code = "import sys; sys.path[:0] = sys.argv[3:]; from checkpoints import save_checkpoint; save_checkpoint(sys.argv[1], imgsz=int(sys.argv[2]))"
        r = H.run_child([PY, "-c", code, str(path), str(imgsz), str(ROOT), str(ROOT / "tests")])
        if r.rc:
            raise SystemExit(f"the stand-in weights failed:\n{r.log[-3000:]}")
    return path


def work_dir(args, prefix: str) -> Path:
    work = Path(args.work or tempfile.mkdtemp(prefix=f"bench-{prefix}-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    return work


def weights_in(work: Path, args) -> Path:
    """``--weights`` copied into ``work`` (exports land beside it, not in the user's folder), else a stand-in."""
    if args.weights:
        dst = work / ("bench" + Path(args.weights).suffix)
        if Path(args.weights).resolve() != dst:
            shutil.copyfile(args.weights, dst)
        return dst
    return stand_in_weights(work / "bench.pt", args.imgsz)


def fresh(path: Path):
    """A ``before`` hook: ``path`` removed, so each run writes a new output folder."""
    return lambda: shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------ child processes


def child(kind: str, cfg: dict) -> int:
    """One variant's own process (``bench.py --child KIND JSON``): the work, then a JSON result file."""
    _pipeline()
    stamps, out = [], {}
    if kind == "ultralytics":  # what a user of Ultralytics runs, on a .pt, an .onnx or an OpenVINO folder
        from ultralytics import YOLO

        yolo = YOLO(cfg["weights"], task="detect")
        records = []
        for r in yolo.predict(cfg["source"], stream=True, conf=cfg["conf"], imgsz=cfg["imgsz"], device="cpu", verbose=False):
            stamps.append(time.time())
            b = r.boxes
            records.append({"image": str(Path(r.path).resolve()), "detections": [
                {"class_id": int(c), "class_name": yolo.names[int(c)], "score": float(s), "box_xyxy": [round(float(v), 2) for v in xyxy]}
                for xyxy, s, c in zip(b.xyxy.tolist(), b.conf.tolist(), b.cls.tolist())]})
        out["records"] = records
    elif kind == "export":
        from ultralytics import YOLO

        extra = {"simplify": False} if cfg["format"] == "onnx" else {}  # the graph as exported: onnxslim is not installed
        out["path"] = str(YOLO(cfg["weights"], task="detect").export(format=cfg["format"], imgsz=cfg["imgsz"], device="cpu", **extra))
    elif kind == "ours":  # cardamage predict, as the console script runs it; each photo the engine hands back is stamped
        import gc

        from pipeline.cli import main

        try:
            from pipeline.model.engine import Engine
        except ImportError:  # no engine: predict's own route, timed as a whole process only
            Engine = None
        if Engine is not None:
            run = Engine.run

            def stamped(self, files):
                for item in run(self, files):
                    stamps.append(time.time())
                    yield item

            Engine.run = stamped
        rc = main(["predict", cfg["source"], "--weights", cfg["weights"], "--out", cfg["out"], "--no-overlays", "--conf",
                   str(cfg["conf"]), "--imgsz", str(cfg["imgsz"]), "--backend", cfg["backend"]], freeze_imports=True)
        if rc:
            return rc
        out["records"] = [{**r, "image": str(Path(r["image"]).resolve())}
                          for r in json.loads((Path(cfg["out"]) / "detections.json").read_text())]
        gc.freeze()  # and exits as the console script does
    elif kind == "engine":  # the engine's steady ms per photo in one process, for ONNX Runtime streams and glibc's mmap threshold
        import ctypes

        from pipeline.model.engine import Engine
        from pipeline.model.load import load_model

        if cfg["mmap"]:
            ctypes.CDLL("libc.so.6").mallopt(-3, cfg["mmap"])  # M_MMAP_THRESHOLD, as heap.return_freed_memory sets it
        files = [str(p) for p in H.photos(cfg["source"])]
        engine = Engine(load_model(cfg["weights"]), imgsz=cfg["imgsz"], conf=cfg["conf"], streams=cfg["streams"])
        list(engine.run(files[:5]))
        t = time.perf_counter()
        n = sum(1 for _ in engine.run(files))
        out["steady_ms"] = 1000 * (time.perf_counter() - t) / n
    elif kind == "sources":  # the atlas's reading of SOURCE (a data.yaml's val split, folders, globs, lists)
        from pipeline.analysis.atlas import atlas_sources

        files, errors = atlas_sources([cfg["source"]])
        out["files"], out["errors"] = [str(Path(f).resolve()) for f in files], [str(e) for e in errors]
    else:
        raise SystemExit(f"unknown child {kind!r}")
    Path(cfg["result"]).write_text(json.dumps({**out, "stamps": stamps}))
    return 0


def child_variant(name: str, kind: str, cfg: dict, work: Path, **kw) -> H.Variant:
    cfg = {**cfg, "result": str(work / f"{name}.result.json")}
    return H.Variant(name, [PY, str(BENCH), "--child", kind, json.dumps(cfg)], env=H.child_env(**kw.pop("env", {})),
                     read=lambda run: json.loads(Path(cfg["result"]).read_text()), **kw)


# --------------------------------------------------------------------------------------------------- predict


ROUTES = ("stock", "export", "onnx", "openvino", "ours", "ours-cold", "ours-torch")


def has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def make_weights(work: Path, photo: Path, imgsz: int, epochs: int, seed: int) -> Path:
    """yolov8n (nc=6) trained briefly on synthetic photos, its head redrawn so that NMS has one stable answer
    (an untrained-looking model scores every anchor alike: near-ties would be float noise)."""
    path = work / "bench.pt"
    if path.is_file():
        return path
    _pipeline()
    sys.path.insert(0, str(ROOT / "tests"))
    from checkpoints import redraw_head
    from pipeline.data.synth import write_dataset
    from pipeline.model.load import load_model
    from pipeline.model.train import train

    data = write_dataset(work / "synth", n_train=64, n_val=16, imgsz=320, seed=1, progress=False)
    m = train(data, work / "run", epochs=epochs, imgsz=320, batch=16, workers=0, device="cpu", val=False, seed=0, overwrite=True)
    redraw_head(load_model(m["weights"]), photo, imgsz, seed=seed).save(path)
    return path


def predict(args, argv) -> list[tuple]:
    if args.in_process:
        return predict_in_process(args)
    work = work_dir(args, "predict")
    files = H.photos(args.source, args.n)
    source = str(Path(args.source).resolve())
    if args.n:  # a folder of links to the first N: every route reads a folder, as a user's would be
        shutil.rmtree(work / "photos", ignore_errors=True)
        (work / "photos").mkdir()
        for f in files:
            (work / "photos" / f.name).symlink_to(f.resolve())
        source = str(work / "photos")
    weights = make_weights(work, files[0], args.imgsz, args.epochs, args.redraw_head) if args.make_weights else weights_in(work, args)
    common = {"source": source, "imgsz": args.imgsz, "conf": args.conf}
    if args.engine_settings:
        settings = [(2, 0), (2, 1 << 20), (2, 8 << 20), (1, 8 << 20)]
        variants = [child_variant(f"s{s}_{f'{m >> 20}mb' if m else 'unset'}", "engine",
                                  {**common, "weights": str(weights), "streams": s, "mmap": m}, work) for s, m in settings]
        runs = H.measure(variants, args.rounds)
        numbers = {"photos": len(files), **{f"steady_ms_{n}": round(statistics.median(r.output["steady_ms"] for r in rs), 1)
                                            for n, rs in runs.items()}}
        return [("engine", "engine-settings", numbers, "ONNX Runtime streams and glibc's mmap threshold, one process each")]
    names = args.variants or ["stock", "onnx", *(["openvino"] if has_openvino() else []), "ours"]
    if "openvino" in names and not has_openvino():
        raise SystemExit("error: the openvino route needs `pip install openvino`")
    exports = {}
    for fmt, route in (("onnx", "onnx"), ("openvino", "openvino")):
        if route in names and not (fmt == "onnx" and "export" in names):
            r = H.run_child([PY, str(BENCH), "--child", "export", json.dumps(
                {"weights": str(weights), "format": fmt, "imgsz": args.imgsz, "result": str(work / f"export-{fmt}.json")})])
            if r.rc:
                raise SystemExit(f"{fmt} export failed:\n{r.log[-3000:]}")
            exports[fmt] = json.loads((work / f"export-{fmt}.json").read_text())["path"]
            print(f"{fmt} export (untimed, once): {r.wall_s:.1f} s -> {exports[fmt]}")
    onnx = exports.get("onnx", str(weights.with_suffix(".onnx")))
    variants = []
    for name in [n for n in ROUTES if n in names]:  # export runs before the route that reads it
        if name in ("stock", "onnx", "openvino"):
            w = {"stock": str(weights), "onnx": onnx, "openvino": exports.get("openvino")}[name]
            variants.append(child_variant(name, "ultralytics", {**common, "weights": w}, work))
        elif name == "export":
            variants.append(child_variant(name, "export", {"weights": str(weights), "format": "onnx", "imgsz": args.imgsz}, work))
        else:
            cache = work / ("cache-cold" if name == "ours-cold" else "cache-warm")
            cfg = {**common, "weights": str(weights), "out": str(work / f"{name}-out"), "backend": "torch" if name == "ours-torch" else "auto"}
            variants.append(child_variant(name, "ours", cfg, work, env={"CARDAMAGE_CACHE": cache},
                                          before=fresh(cache) if name == "ours-cold" else None))
    if any(v.name in ("ours", "ours-torch") for v in variants):  # the warm graph cache: filled once, untimed
        H.measure([v for v in variants if v.name in ("ours", "ours-torch")][:1], 1, quiet=True)
    runs = H.measure(variants, args.rounds)
    numbers = {"photos": len(files), "imgsz": args.imgsz, "conf": args.conf}
    numbers.update(H.summarize(runs, base="ours" if "ours" in runs else None))
    recs = {n: rs[-1].output["records"] for n, rs in runs.items() if n != "export"}
    ref = "stock" if "stock" in recs else next(iter(recs), None)
    for n, rs in runs.items():
        stamps = [r.output["stamps"] for r in rs]
        if n != "export":
            numbers[f"{n}_img_s"] = round(len(files) / numbers[f"{n}_s"], 2)
        if n != "export" and all(stamps):  # the child's own clock: its first photo, then photo to photo
            numbers[f"{n}_first_photo_s"] = round(statistics.median(s[0] - r.started for s, r in zip(stamps, rs)), 2)
            if len(stamps[0]) > 1:
                numbers[f"{n}_steady_ms"] = round(statistics.median(1000 * (s[-1] - s[0]) / (len(s) - 1) for s in stamps), 1)
    if ref:
        _pipeline()
        from pipeline.model.detections import agreement

        found = {n: agreement(by_image(r), by_image(recs[ref])) for n, r in recs.items() if n != ref}
        numbers[f"{ref}_boxes"] = sum(len(r["detections"]) for r in recs[ref])
        for n, a in found.items():
            numbers[f"{n}_agreement"] = f"{a['matched']}/{a['stock_boxes']}"
        routes = [n for n in ("stock", "onnx", "openvino") if n in runs]
        if routes:
            numbers["fastest_ultralytics_route"] = min(routes, key=lambda n: numbers[f"{n}_s"])
        try:
            H.check_same(recs, same_detections, reference=ref)
        except H.OutputsDiffer:
            print(H.table(numbers))  # how far apart (X_agreement: matched of the reference's boxes), then the refusal
            raise
    note = f"whole processes; agreement: same class, IoU >= 0.99, score within 1e-3 of {ref}'s boxes"
    return [("engine", "predict-routes", numbers, note)]


def by_image(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda r: r["image"])


def same_detections(ref: list[dict], other: list[dict]) -> bool:
    """Every box of ``ref`` paired with one of ``other`` (same class, IoU >= 0.99, score within 1e-3), none left over."""
    _pipeline()
    from pipeline.model.detections import agreement

    return agreement(by_image(other), by_image(ref))["ok"]


def stock_records(yolo, files, conf, imgsz, device, mode="batch1") -> list[dict]:
    """Stock ``predict(stream=True)`` as detections.json records in ``files`` order. ``batch1``: a ``.txt``
    list, read like a folder, one photo at a time; ``list``: a Python list, which Ultralytics runs as one batch."""
    if mode == "batch1":
        tmp = Path(tempfile.mkdtemp(prefix="bench-list-")) / "files.txt"
        tmp.write_text("".join(f"{Path(f).resolve()}\n" for f in files))
        source = str(tmp)
    else:
        source = [str(f) for f in files]
    by = {}
    for r in yolo.predict(source, stream=True, conf=conf, imgsz=imgsz, device=device, verbose=False):
        b = r.boxes
        by[str(Path(r.path).resolve())] = [
            {"class_id": int(c), "class_name": yolo.model.names[int(c)], "score": float(s), "box_xyxy": [round(float(v), 2) for v in xyxy]}
            for xyxy, s, c in zip(b.xyxy.tolist(), b.conf.tolist(), b.cls.tolist())]
    return [{"image": str(f), "detections": by[str(Path(f).resolve())]} for f in files]


def predict_in_process(args) -> list[tuple]:
    """Stock (one photo at a time, and one batch of all) and the engine in this one process, alternating."""
    _pipeline()
    import torch
    import torchvision  # noqa: F401  (stock's NMS then uses torchvision's kernel, as the engine's does)

    sys.path.insert(0, str(ROOT / "tests"))
    from checkpoints import redraw_head
    from pipeline.model.detections import agreement
    from pipeline.model.engine import Engine
    from pipeline.model.load import load_model

    files = H.photos(args.source, args.n or 60)
    torch.manual_seed(0)
    w = args.weights or "yolov8n.yaml"
    yolo = load_model(w, nc=6 if w.endswith((".yaml", ".yml")) else None)
    if args.redraw_head is not None:
        redraw_head(yolo, files[0], args.imgsz, args.redraw_head)
    yolo.predict(str(files[0]), conf=args.conf, imgsz=args.imgsz, device=args.device, verbose=False)  # warm torch up, untimed
    kept = {}

    def stock(mode):
        def f():
            yolo.predictor = None  # stock builds and fuses its predictor inside the timing, as on a first call
            kept[mode] = stock_records(yolo, files, args.conf, args.imgsz, args.device, mode)
        return f

    def ours():
        os.environ["CARDAMAGE_CACHE"] = tempfile.mkdtemp(prefix="bench-onnx-")  # the export stays inside the timing
        engine = Engine(yolo, imgsz=args.imgsz, conf=args.conf, device=args.device, batch=args.batch, workers=args.workers,
                        backend=args.backend, gpu_decode=args.gpu_decode)
        kept["ours"], errors = engine.predict(files)
        assert not errors, errors

    t = H.interleave({"batch1": stock("batch1"), "list": stock("list"), "ours": ours}, args.rounds, warmup=False)
    rate = {k: len(files) * len(v["wall"]) / sum(v["wall"]) for k, v in t.items()}
    a = agreement(kept["ours"], kept["batch1"])
    numbers = {"photos": len(files), "stock_batch1_img_s": round(rate["batch1"], 2), "stock_list_img_s": round(rate["list"], 2),
               "ours_img_s": round(rate["ours"], 2), "ratio": round(rate["ours"] / max(rate["batch1"], rate["list"]), 3),
               "agreement": f"{a['matched']}/{a['stock_boxes']}", "stock_boxes": a["stock_boxes"], "matched": a["matched"],
               "extra_of_ours": a["unmatched_ours"], "max_score_diff": a["max_score_diff"]}
    if not a["ok"]:
        raise H.OutputsDiffer(f"the engine's boxes differ from stock's: {a}")
    return [("predict", "predict-in-process", numbers, f"one process, {args.rounds} alternating rounds, backend {args.backend}")]


# --------------------------------------------------------------------------------------------------- inspect


def inspect(args, argv) -> list[tuple]:
    """Recording every layer against a plain forward (ratios of the same round), then a full dump."""
    _pipeline()
    import copy

    import torch

    from pipeline.data.preprocess import model_input
    from pipeline.model.load import load_model, model_stride
    from pipeline.probe.layers import conv_blocks
    from pipeline.probe.recorder import LayerRecorder
    from pipeline.probe.statistics import FILES, inspect_image

    photo = args.photo or str(H.photos(SAMPLE / "images", 1)[0])
    torch.manual_seed(0)
    net = load_model(args.weights, nc=6).model.eval()
    x, _ = model_input(photo, args.imgsz, stride=model_stride(net))
    clock = "cpu" if torch.get_num_threads() == 1 else "wall"  # idle OpenMP threads spin: CPU time overstates there
    numbers = {"threads": torch.get_num_threads(), "clock": clock}
    inplace = copy.deepcopy(net)
    for m in inplace.modules():
        if isinstance(m, torch.nn.SiLU):
            m.inplace = True  # what Ultralytics' checkpoint loading does
    for label, model in (("silu", net), ("inplace", inplace)):
        twin, hooked = copy.deepcopy(model), copy.deepcopy(model)
        for block in conv_blocks(hooked).values():  # as many hooks as the recorder sets, each doing nothing
            for m in (block.bn if hasattr(block, "bn") else block.conv, block):
                m.register_forward_hook(lambda *_: None)

        def forward(m):
            def f():
                with torch.no_grad():
                    m(x)
            return f

        def fresh_recorder(kernel=True):
            def f():
                with LayerRecorder(model, mode="stats", kernel=kernel) as rec:
                    rec(x)
            return f

        with LayerRecorder(twin, mode="stats") as kept_open:
            t = H.interleave({"plain": forward(model), "noop_hooks": forward(hooked), "stats_only": fresh_recorder(),
                              "kept_open": lambda: kept_open(x), "torch_reductions": fresh_recorder(kernel=False)},
                             args.repeats)
        numbers[f"{label}_forward_ms"] = round(1000 * statistics.median(t["plain"][clock]), 1)
        for k in ("noop_hooks", "stats_only", "kept_open", "torch_reductions"):
            numbers[f"{label}_{k}"] = round(H.ratio(t[k][clock], t["plain"][clock])["median"], 3)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [inspect_image(inplace, photo, Path(tmp) / str(i), dtype="float32", imgsz=args.imgsz) for i in range(3)]
        numbers["dump_s"] = round(statistics.median(r["seconds"] for r in runs), 2)
        numbers["dump_MB"] = round(sum(runs[-1]["bytes"].values()) / 1e6, 1)
        numbers.update({f"{k}_MB": round(runs[-1]["bytes"][k] / 1e6, 1) for k in FILES})
    note = f"{args.weights} on {Path(photo).name}; ratios: median over {args.repeats} rounds of (recording / plain forward)"
    return [("inspect", "inspect", numbers, note)]


# ---------------------------------------------------------------------------------------- report, explore


def extract(commit: str, dst: Path) -> Path:
    """``git archive COMMIT pipeline`` unpacked into ``dst``, with this tree's built stats kernel beside it."""
    import subprocess
    import tarfile

    tar = dst / "pipeline.tar"
    dst.mkdir(parents=True, exist_ok=True)
    tar.write_bytes(subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "pipeline"], check=True,
                                   capture_output=True).stdout)
    with tarfile.open(tar) as t:
        t.extractall(dst, filter="data")
    for so in (ROOT / "pipeline" / "probe").glob("_channel_stats*.so"):
        shutil.copy2(so, dst / "pipeline" / "probe" / so.name)
    return dst


def report(args, argv) -> list[tuple]:
    """``cardamage report`` on one photo against ``cardamage predict`` on the same photo (issue 31's 2.2x goal)."""
    work = work_dir(args, "report")
    weights = weights_in(work, args)
    photo = str(Path(args.photo or H.photos(SAMPLE / "images", 1)[0]).resolve())
    extra = ["--no-layercam"] if args.no_layercam else []

    def cmd(what, out):
        if what == "report":
            return [PY, "-m", "pipeline", "report", "--weights", str(weights), photo, "--out", str(out), "--imgsz", str(args.imgsz), *extra]
        return [PY, "-m", "pipeline", "predict", photo, "--weights", str(weights), "--out", str(out), "--imgsz", str(args.imgsz)]

    variants = [H.Variant(w, cmd(w, work / w), before=fresh(work / w)) for w in ("report", "predict")]
    if args.old:
        old = extract(args.old, work / "old")
        variants.append(H.Variant("report_old", cmd("report", work / "report_old"), env=H.child_env(PYTHONPATH=old),
                                  cwd=str(old), before=fresh(work / "report_old")))
    runs = H.measure(variants, args.rounds, warmup=args.warmup)
    numbers = H.summarize(runs, base="predict")
    timings = json.loads((work / "report" / "report_files" / "report.json").read_text()).get("timings_s", {})
    note = f"one photo ({Path(photo).name}) at {args.imgsz}; report_over_predict: median per-round ratio of whole processes"
    print("report, last run, seconds inside the process: " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    return [("report", "report-vs-predict", numbers, note)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def explore(args, argv) -> list[tuple]:
    """A whole ``cardamage explore`` process per round: until it answers, the first view, then neuron asks."""
    import random
    import signal

    import httpx

    work = work_dir(args, "explore")
    weights = weights_in(work, args)
    photo = str(Path(args.photo or H.photos(SAMPLE / "images", 1)[0]).resolve())
    got = {"startup_s": [], "first_view_s": [], "neuron_ms": [], "effect_ms": [], "rss_MB": []}
    for k in range(args.rounds):
        port = free_port()
        c = H.spawn([PY, "-m", "pipeline", "explore", photo, "--weights", str(weights), "--port", str(port),
                                   "--no-browser", "--imgsz", str(args.imgsz)])
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(timeout=300) as client:
                while True:
                    if c.p.poll() is not None:
                        c.out.seek(0)
                        raise SystemExit(f"explore exited early:\n{c.out.read().decode(errors='replace')[-3000:]}")
                    try:
                        client.get(f"{base}/").raise_for_status()
                        break
                    except httpx.TransportError:
                        time.sleep(0.05)
                got["startup_s"].append(time.time() - c.started)
                t = time.perf_counter()
                for what in ("summary", "model", "stages", "detections", "image"):
                    client.get(f"{base}/api/{what}", params={"photo": 0}).raise_for_status()
                got["first_view_s"].append(time.perf_counter() - t)
                convs = [r for r in client.get(f"{base}/api/model").json() if r["type"] == "Conv"]
                rng = random.Random(args.seed)
                for i in range(args.neurons):
                    r = convs[i % len(convs)]
                    _, channels, h, w = r["out_shape"]
                    q = {"photo": 0, "layer": r["path"], "channel": rng.randrange(channels), "y": rng.randrange(h), "x": rng.randrange(w)}
                    t = time.perf_counter()  # as the page asks: the arithmetic first, then its effect on the logit
                    client.get(f"{base}/api/neuron", params={**q, "effect": 0}).raise_for_status()
                    got["neuron_ms"].append(1000 * (time.perf_counter() - t))
                    t = time.perf_counter()
                    client.get(f"{base}/api/effect", params=q).raise_for_status()
                    got["effect_ms"].append(1000 * (time.perf_counter() - t))
        finally:
            c.p.send_signal(signal.SIGINT)
            run = H.reap(c, "explore", k, timeout=20)
        got["rss_MB"].append(run.peak_rss_mb or 0)
        print(f"  round {k + 1}: answering after {got['startup_s'][-1]:.2f} s, first view {got['first_view_s'][-1]:.2f} s, "
              f"peak RSS {H.mib(run.peak_rss_mb)}", flush=True)
    numbers = {"startup_s": round(statistics.median(got["startup_s"]), 2), "first_view_s": round(statistics.median(got["first_view_s"]), 2)}
    for key in ("neuron", "effect"):
        ms = sorted(got[f"{key}_ms"])
        numbers.update({f"{key}_ms": round(statistics.median(ms), 1), f"{key}_p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 1)})
    numbers["rss_MB"] = round(max(got["rss_MB"]))
    return [("explore", "explore", numbers, f"{args.neurons} neuron asks a round over every Conv block, {args.rounds} rounds")]


def atlas(args, argv) -> list[tuple]:
    """A ``cardamage atlas`` process (every Conv block, or ``--layers``: the pass, the tables, the crops, the
    pages) against a ``cardamage predict`` process on the same photos, and the atlas over the first ``--small``
    of them, alternating; issue 33's goals: ``atlas_over_predict`` <= 2, the atlas's peak RSS <= 1.5 GB
    whatever the number of photos (``atlas_rss_MB`` about ``atlas_small_rss_MB``: the tables do not grow)."""
    work = work_dir(args, "atlas")
    weights = weights_in(work, args)
    got = H.run_child([PY, str(BENCH), "--child", "sources", json.dumps({"source": args.source, "result": str(work / "sources.json")})])
    if got.rc:  # read in a child: torch stays out of this process, whose peak is every child's RSS floor
        raise SystemExit(f"reading {args.source} failed:\n{got.log[-3000:]}")
    found = json.loads((work / "sources.json").read_text())
    files = found["files"][: args.n] if args.n else found["files"]
    if found["errors"] or not files:
        raise SystemExit(f"error: {args.source}: {len(files)} photos, errors {found['errors'][:3]}")
    small = min(args.small, len(files) // 2) or 1  # a smaller source: half of it, so that two sizes still differ
    lists = {}
    for name, some in (("all", files), ("small", files[:small])):  # one .txt list each: both commands read it alike
        lists[name] = work / f"photos-{name}.txt"
        lists[name].write_text("".join(f"{f}\n" for f in some))
    size = ["--imgsz", str(args.imgsz)]
    layers = ["--layers", *args.layers] if args.layers else []

    def atlas_cmd(which, out):
        return [PY, "-m", "pipeline", "atlas", "--weights", str(weights), str(lists[which]), "--out", str(out), *size, *layers]

    def count(pattern):  # how many photos the child says it did (its last summary line): every one, each round
        return lambda run: int(hits[-1]) if (hits := re.findall(pattern, run.log)) else None

    atlas_of = count(r"atlas of (\d+) photos")
    variants = [
        H.Variant("predict", [PY, "-m", "pipeline", "predict", str(lists["all"]), "--weights", str(weights), "--out",
                              str(work / "predict"), *size, "--conf", str(args.conf), "--no-overlays"],
                  before=fresh(work / "predict"), read=count(r"(\d+) images?, ")),
        H.Variant("atlas", atlas_cmd("all", work / "atlas"), before=fresh(work / "atlas"), read=atlas_of),
        H.Variant("atlas_small", atlas_cmd("small", work / "atlas_small"), before=fresh(work / "atlas_small"), read=atlas_of),
    ]
    runs = H.measure(variants, args.rounds)
    for want, names in ((len(files), ("predict", "atlas")), (small, ("atlas_small",))):  # every photo, every run
        H.check_same({"photos": want, **{f"{n} round {r.round + 1}": r.output for n in names for r in runs[n]}})
    numbers = {"photos": len(files), "small_photos": small, "imgsz": args.imgsz, **H.summarize(runs, base="predict")}
    numbers.pop("atlas_small_over_predict")  # other photos: no ratio
    note = (f"{Path(args.source).name}, whole processes on one .txt list (predict: stock, photo by photo, --no-overlays); "
            f"layers {' '.join(args.layers) if args.layers else 'all'}; goals: atlas_over_predict <= 2, peak RSS <= 1536 MB")
    return [("atlas", "atlas-vs-predict", numbers, note)]


# ---------------------------------------------------------------------------------------------- ray, check


def ray(args, argv) -> list[tuple]:
    """The plain command and ``--ray --workers N`` as whole processes; every run's detections.json equal."""
    work = work_dir(args, "ray")
    weights = weights_in(work, args)
    n = len(H.photos(args.source))
    base = [PY, "-m", "pipeline", "predict", str(Path(args.source).resolve()), "--weights", str(weights),
            "--imgsz", str(args.imgsz), "--conf", str(args.conf), "--no-overlays"]

    def read(out):
        def f(run):
            m = re.search(r"ray: (\d+) photos in ([\d.]+) s", run.log)
            run.extra["photos_s"] = float(m.group(2)) if m else None
            return json.loads((out / "detections.json").read_text())
        return f

    variants = [H.Variant("plain", [*base, "--out", str(work / "plain")], before=fresh(work / "plain"), read=read(work / "plain"),
                          ok_rc=(0, 1))]
    for w in args.workers:
        name, out = f"ray_{w}_worker{'s' if w > 1 else ''}", work / f"ray{w}"
        variants.append(H.Variant(name, [*base, "--out", str(out), "--ray", "--workers", str(w)], before=fresh(out), read=read(out),
                                  ok_rc=(0, 1)))
    runs = H.measure(variants, args.rounds)
    H.check_same({n_: rs[-1].output for n_, rs in runs.items()})
    numbers = {"photos": n, **H.summarize(runs, base="plain")}
    for name, rs in list(runs.items())[1:]:
        ps = [r.extra["photos_s"] for r in rs if r.extra["photos_s"]]
        if ps:
            numbers[f"{name}_photos_s"] = round(statistics.median(ps), 2)
    return [("ray", "ray-predict", numbers, "whole processes; *_photos_s: the workers' own time for the photos; detections equal")]


def check(args, argv) -> list[tuple]:
    work = work_dir(args, "check")
    out = work / "check.json"
    v = H.Variant("check", [PY, "-m", "pipeline", "check", str(Path(args.data).resolve()), "--json", str(out)],
                  read=lambda run: json.loads(out.read_text())["total"], ok_rc=(0, 1))
    runs = H.measure([v], args.rounds, warmup=True)
    H.check_same({f"round {r.round + 1}": r.output for r in runs["check"]})
    numbers = {"images": runs["check"][-1].output["images"], **H.summarize(runs)}
    numbers["images_per_s"] = round(numbers["images"] / numbers["check_s"], 1)
    return [("check", "check", numbers, f"{Path(args.data).name}: decode, sha1, perceptual hash, labels and the duplicate search")]


# --------------------------------------------------------------------------------------------------- memory

#: what the photo commands import, alone: the libraries' share of every figure below
MEMORY_IMPORTS = ("import pipeline.cli, pipeline.model.predict, pipeline.report.page, pipeline.model.engine, "
                  "onnxruntime, matplotlib.pyplot")


def big_jpeg(path: Path, side: int) -> Path:
    """A ``side`` x ``side`` JPEG of smooth colour blobs (random 40x40 colours, bicubic upscaled), as
    tests/test_memory.py makes it: a camera-like file (3.5 MB at 8000 px) whose decode is ``3 * side**2`` bytes."""
    import cv2
    import numpy as np

    small = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    if not cv2.imwrite(str(path), cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_JPEG_QUALITY, 90]):
        raise SystemExit(f"error: could not write {path}")
    return path


def memory(args, argv) -> list[tuple]:
    """Peak resident memory of the whole process (``ru_maxrss``, what ``/usr/bin/time -v`` calls "Maximum
    resident set size") of every command that reads a photo, on one ``--side`` x ``--side`` photo, beside a
    process that only imports their libraries. ``*_MiB``: the highest of ``--rounds`` runs; ``*_over_imports_MiB``:
    that less the imports' highest, the command's own share (what tests/test_memory.py holds)."""
    work = work_dir(args, "memory")
    photo = big_jpeg(work / "big.jpg", args.side)
    folder1, folder3 = work / "one", work / "three"
    for folder, n in ((folder1, 1), (folder3, 3)):
        folder.mkdir(exist_ok=True)
        for i in range(n):
            shutil.copyfile(photo, folder / f"big{i}.jpg")
    w = ["--weights", "yolov8n.yaml"]
    commands = {
        "imports": [PY, "-c", MEMORY_IMPORTS],
        "preprocess": ["preprocess", photo],
        "predict": ["predict", *w, photo],
        "predict_folder": ["predict", *w, folder1],
        "predict_folder3": ["predict", *w, folder3],
        "inspect": ["inspect", *w, photo],
        "trace": ["trace", *w, photo, "--layer", "model.0", "--channel", "0", "--y", "10", "--x", "10", "--head"],
        "report": ["report", *w, photo],
    }
    variants = []
    for name, cmd in commands.items():
        out = work / f"out-{name}" / ("trace.json" if name == "trace" else "")
        argv_ = cmd if name == "imports" else [PY, "-m", "pipeline", *map(str, cmd), "--out", str(out)]
        # a fresh graph cache per run: the engine's ONNX export is part of a first predict
        variants.append(H.Variant(name, argv_, env=H.child_env(CARDAMAGE_CACHE=work / "cache", CI="true"),
                                  before=(lambda o=out.parent if name == "trace" else out:
                                          (shutil.rmtree(o, ignore_errors=True), shutil.rmtree(work / "cache", ignore_errors=True)))))
    runs = H.measure(variants, args.rounds)
    peak = {n: max(r.peak_rss_mb or 0.0 for r in rs) for n, rs in runs.items()}
    numbers = {f"{n}_MiB": round(v) for n, v in peak.items()}
    numbers.update({f"{n}_over_imports_MiB": round(v - peak["imports"]) for n, v in peak.items() if n != "imports"})
    note = (f"one {args.side}x{args.side} JPEG ({photo.stat().st_size / 1e6:.1f} MB), weights yolov8n.yaml; the highest "
            f"of {args.rounds} runs of each; predict_folder3: three such photos through the batched engine")
    return [("memory", "memory", numbers, note)]


# ----------------------------------------------------------------------------------------------------- demo


def demo(args, argv) -> list[tuple]:
    if args.part == "synth":
        return synth_rate(args)
    if args.part == "train-threads":
        return train_threads(args)
    work = work_dir(args, "demo")
    out = work / "demo"
    cmd = [PY, "-m", "pipeline", "demo", "--out", str(out), "--overwrite", "--n-real", str(args.n_real)]
    cmd += ["--minutes", str(args.minutes)] if args.minutes else []
    cmd += ["--config", args.config] if args.config else []
    cmd += ["--no-report"] if args.no_report else []
    runs = H.measure([H.Variant("demo", cmd, read=lambda run: json.loads((out / "summary.json").read_text()))], args.rounds)
    rs = runs["demo"]
    models = {f"round {r.round + 1}": {k: r.output["metrics"].get(k) for k in ("mAP50", "mAP50-95")} for r in rs}
    numbers = {**H.summarize(runs)}
    for k in rs[-1].output["timings"]:
        numbers[k] = round(statistics.median(r.output["timings"][k] for r in rs), 1)
    numbers.update(models[f"round {rs[-1].round + 1}"])
    if not args.minutes:  # fixed seeded epochs: the same machine gives the same model every time, under any load
        H.check_same(models)
        numbers["same_model_every_round"] = True
    return [("demo", "demo", numbers, "`cardamage demo` as `make demo` runs it, whole process; steps from summary.json")]


def synth_rate(args) -> list[tuple]:
    """The generator on one core: draw + JPEG encode + atomic writes, images a second, at 640 and 256 px."""
    os.environ["OMP_NUM_THREADS"] = "1"
    _pipeline()
    import cv2

    from pipeline.data.synth import write_dataset

    cv2.setNumThreads(1)
    numbers = {}
    with tempfile.TemporaryDirectory() as d:
        write_dataset(Path(d) / "warm", 1, 0, imgsz=64, seed=0, progress=False)  # imports out of the timing
        for size in (640, 256):
            t = H.interleave({"w": lambda: write_dataset(tempfile.mkdtemp(dir=d), args.n, 0, imgsz=size, seed=0, progress=False)},
                             args.rounds, warmup=False)["w"]["wall"]
            numbers[f"img_s_{size}"] = round(args.n / statistics.median(t), 1)
    return [("foundation", "synth-generator", numbers, f"one core, {args.n} images a round; goal >= 50 img/s at 640")]


def train_threads(args) -> list[tuple]:
    """One epoch of the demo recipe with 1 torch thread (Ultralytics' choice on a 2-core CPU) and with every core."""
    _pipeline()
    import torch

    from pipeline.data.synth import write_dataset
    from pipeline.model.train import train

    cores = os.cpu_count() or 1
    numbers = {}
    with tempfile.TemporaryDirectory() as d:
        data = write_dataset(Path(d) / "data", args.n, 20, imgsz=256, seed=0, progress=False)
        fns = {n: (lambda n=n: train(data, Path(d) / f"t{n}", config=CONFIGS / "demo.yaml", epochs=1, time=0, val=False, overwrite=True,
                                     callbacks={"on_train_epoch_start": lambda tr: torch.set_num_threads(n)}))
               for n in (1, cores)}
        t = H.interleave(fns, args.rounds, warmup=False)
    numbers["epoch_s_1_thread"] = round(statistics.median(t[1]["wall"]), 1)
    numbers[f"epoch_s_{cores}_threads"] = round(statistics.median(t[cores]["wall"]), 1)
    numbers["speedup"] = round(H.ratio(t[1]["wall"], t[cores]["wall"])["median"], 2)
    return [("foundation", "train-threads", numbers, f"one epoch of {args.n} synthetic images with the demo recipe")]


# ------------------------------------------------------------------------------------------------ cardd-cpu

STOCK_CFG, RECIPE = CONFIGS / "cardd_cpu_stock.yaml", CONFIGS / "cardd_cpu.yaml"
#: name -> (config, extra train_cardd.py flags); ablations change one thing against the recipe.
ROWS = {
    "stock": (STOCK_CFG, []),  # Ultralytics' defaults at imgsz 320, batch 16 (issue 16's anchor)
    "recipe": (RECIPE, []),  # configs/cardd_cpu.yaml: the CPU recipe
    "r-256": (RECIPE, ["--imgsz", "256"]),
    "r-416": (RECIPE, ["--imgsz", "416"]),
    "r-b8": (RECIPE, ["--batch", "8", "--set", "nbs=8"]),
    "r-b32": (RECIPE, ["--batch", "32", "--set", "nbs=32"]),
    "r-nbs64": (RECIPE, ["--set", "nbs=64"]),
    "r-lr001": (RECIPE, ["--set", "lr0=0.001"]),
    "r-lr004": (RECIPE, ["--set", "lr0=0.004"]),
    "r-warmup05": (RECIPE, ["--set", "warmup_epochs=0.5"]),
    "r-wblr0": (RECIPE, ["--set", "warmup_bias_lr=0"]),
    "r-close10": (RECIPE, ["--set", "close_mosaic=10"]),
    "r-clspw": (RECIPE, ["--set", "cls_pw=0.5"]),
    "r-nocache": (RECIPE, ["--set", "cache=false"]),
    "r-nchw": (RECIPE, ["--set", "cpu_channels_last=false"]),
    "r-synth": (RECIPE, []),  # + --model SYNTH_WEIGHTS: start from a synthetic-damage model
}
ABLATIONS = [name for name in ROWS if name.startswith("r-")]


def row_command(name: str, minutes: float | None, out: Path, data: str | None, synth_weights: str | None,
                tiny: bool, sets=()) -> list[str]:
    """The ``train_cardd.py`` argument list of one row (no interpreter); ``sets`` (``KEY=VALUE``) follow the
    row's own changes, so they apply to every row (e.g. an older recipe value back)."""
    config, extra = ROWS[name]
    cmd = ["scripts/train_cardd.py", "--config", str(config.relative_to(ROOT)), "--recipe", name, "--trainer-val", "--out", str(out), *extra]
    for item in sets:
        cmd += ["--set", item]
    if name == "r-synth":
        if not synth_weights:
            raise SystemExit("error: --rows r-synth needs --synth-weights (a synthetic-damage model's best.pt)")
        cmd += ["--model", synth_weights]
    return cmd + (["--tiny"] if tiny else ["--data", data, "--minutes", f"{minutes:g}"])


def cardd_numbers(r: dict) -> dict:
    """A ``train_cardd.py`` row.json as a benchmark row's numbers."""
    return {"memory": {"channels_last": "NHWC", "contiguous": "NCHW"}.get(r.get("memory_format"), "?"),
            "budget_min": r["budget_minutes"], "train_min": round(r["train_minutes"], 1), "epochs": r["epochs"], "steps": r["steps"],
            "mAP50": round(r["mAP50"], 3), "mAP50-95": round(r["mAP50-95"], 3),
            "per_class_mAP50": {k: round(v, 2) for k, v in r["per_class"].items()}}


def cardd_cpu(args, argv) -> list[tuple]:
    """Each row one ``train_cardd.py`` process, one after the other (a second job on 2 cores halves the first's
    steps); a row whose row.json exists in OUT is read back, not trained again; ``--table`` only prints."""
    if args.throughput:
        return throughput(args)
    names = [n for item in args.rows for n in (ABLATIONS if item == "ablations" else [item])]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"error: unknown row {unknown[0]!r} (known: {', '.join(ROWS)}, ablations)")
    if not (args.tiny or args.table or args.data):
        raise SystemExit("error: --data is required (a staged CarDD data.yaml), or --tiny")
    out = Path(args.out).resolve()
    found, failed = [], []
    for minutes in [None] if args.tiny else args.minutes:
        for name in names:
            run_dir = out / (f"{name}-tiny" if minutes is None else f"{name}-{minutes:g}")
            cmd = row_command(name, minutes, run_dir, args.data, args.synth_weights, args.tiny, args.set)
            own = ["--tiny"] if minutes is None else ["--data", str(args.data or "datasets/cardd-staged/data.yaml"), "--minutes", f"{minutes:g}"]
            own += ["--rows", name] + (["--synth-weights", args.synth_weights] if name == "r-synth" else [])
            own += [a for item in args.set for a in ("--set", item)]
            trained_now = False
            if not (run_dir / "row.json").is_file() and not args.table:
                run_dir.mkdir(parents=True, exist_ok=True)
                print(f"[{name}, {'tiny' if minutes is None else f'{minutes:g} min'}] {' '.join(cmd)}", flush=True)
                r = H.run_child([PY, *cmd], H.child_env(PYTHONUNBUFFERED=1), cwd=ROOT, log=run_dir.parent / f"{run_dir.name}.log")
                if r.rc:
                    print(f"error: row {name} failed (exit {r.rc}); see {run_dir.parent / (run_dir.name + '.log')}", file=sys.stderr)
                    failed.append(name)
                    continue
                print(f"  {r.wall_s / 60:.1f} min, peak RSS {H.mib(r.peak_rss_mb)}", flush=True)
                trained_now = True
            if (run_dir / "row.json").is_file():
                row = json.loads((run_dir / "row.json").read_text())
                found.append((row, trained_now, own, run_dir.name))
    print(f"| row | {' | '.join(cardd_numbers(found[0][0]))} | command |" if found else "no rows")
    for row, _, own, _ in found:
        print(f"| {row['recipe']} | " + " | ".join(H.benchrows.fmt(v) for v in cardd_numbers(row).values())
              + f" | `{H.command_line(['cardd-cpu', *own])}` |")
    if failed:
        raise SystemExit(1)  # the rows that did finish are printed above
    # each row trained now is a row of the table, with its own command (one training row, not the whole call)
    return [("cardd-cpu", run_name, cardd_numbers(row), "", ["cardd-cpu", *own]) for row, now, own, run_name in found if now]


def throughput(args) -> list[tuple]:
    """Images a second of one YOLOv8n training step's forward and backward (no data, no optimizer) per
    (batch, imgsz) and memory layout: NCHW as Ultralytics trains on a CPU, NHWC as the recipe's cpu_channels_last."""
    _pipeline()
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.set_num_threads(os.cpu_count() or 1)  # as training does
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=6, verbose=False).train()
    numbers = {}
    for batch, imgsz in args.shapes:
        x = torch.randn(batch, 3, imgsz, imgsz)
        steps = {}
        for layout, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
            def step(fmt=fmt):
                model.to(memory_format=fmt)  # the batch stays NCHW, as Ultralytics hands it over
                y = model(x)
                sum(h.float().square().mean() for h in (y.values() if isinstance(y, dict) else y) if torch.is_tensor(h)).backward()
                model.zero_grad(set_to_none=True)
            steps[layout] = step
        t = H.interleave(steps, args.rounds)  # alternating layouts, the first pass of each untimed
        for layout, v in t.items():
            numbers[f"img_s_{layout}_b{batch}_{imgsz}"] = round(batch / statistics.median(v["wall"]), 1)
        numbers[f"ratio_NHWC_NCHW_b{batch}_{imgsz}"] = round(H.ratio(t["NCHW"]["wall"], t["NHWC"]["wall"])["median"], 2)
        print(H.table({k: v for k, v in numbers.items() if k.endswith(f"b{batch}_{imgsz}")}), flush=True)
    return [("cardd-cpu-throughput", "throughput", numbers, "YOLOv8n forward + backward, no data loading")]


# ---------------------------------------------------------------------------------------------- the parser


def shape(text: str) -> tuple[int, int]:
    b, _, s = text.partition("x")
    return int(b), int(s)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--rounds", type=int, default=3, help="rounds of alternating variants (default 3)")
    common.add_argument("--record", nargs="?", const="", default=None, metavar="ROWS_FILE",
                        help="append the row(s) to benchmarks/rows/ (the target's table, or ROWS_FILE) and render the docs")
    common.add_argument("--id", default=None, help="the row's id (default: the target's; -DATE is added when taken)")
    common.add_argument("--note", default="", help="a note for the row (what else ran, what changed)")
    common.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    common.add_argument("--work", default=None, help="working folder (default: a new temporary one)")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="target", required=True, metavar="TARGET")

    def target(name, fn, help):
        return sub.add_parser(name, parents=[common], help=help, description=fn.__doc__)

    def photos_args(t, conf=0.25, imgsz=640):
        t.add_argument("--weights", default=None, help="a .pt checkpoint (default: a seeded stand-in YOLOv8n)")
        t.add_argument("--imgsz", type=int, default=imgsz)
        t.add_argument("--conf", type=float, default=conf)

    t = target("predict", predict, "the project's predict against Ultralytics' routes, whole processes")
    photos_args(t)
    t.add_argument("--source", default=str(SAMPLE / "images"), help="folder of photos (default: the CarDD sample)")
    t.add_argument("--n", type=int, default=None, help="only the first N photos")
    t.add_argument("--variants", nargs="+", choices=ROUTES, default=None,
                   help="default: stock onnx openvino (when installed) ours; export times the ONNX export on its own, "
                        "ours-cold empties the graph cache every run, ours-torch is --backend torch")
    t.add_argument("--make-weights", action="store_true",
                   help="weights of the route rows: yolov8n.yaml trained --epochs on synthetic photos, head redrawn; kept in --work")
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--redraw-head", type=int, default=None, metavar="SEED", help="the head's seed (--make-weights: default 0)")
    t.add_argument("--engine-settings", action="store_true", help="the engine's steady ms/photo per ONNX Runtime streams and mmap threshold")
    t.add_argument("--in-process", action="store_true", help="stock and the engine in one process (the predict-* rows)")
    t.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"), help="--in-process: the engine's backend")
    t.add_argument("--gpu-decode", action="store_true", help="--in-process: the engine's gpu_decode path")
    t.add_argument("--batch", type=int, default=None, help="--in-process: the engine's batch")
    t.add_argument("--workers", type=int, default=None, help="--in-process: the engine's decode threads")
    t.add_argument("--device", default="cpu", help="--in-process: the device")

    t = target("inspect", inspect, "recording overhead against a plain forward; a full dump")
    t.add_argument("photo", nargs="?", default=None, help="a photo (default: the first CarDD sample photo)")
    t.add_argument("--weights", default="yolov8n.yaml")
    t.add_argument("--imgsz", type=int, default=640)
    t.add_argument("--repeats", type=int, default=15, help="alternating rounds (default 15)")

    t = target("report", report, "a report process against a one-photo predict process")
    photos_args(t)
    t.add_argument("--photo", default=None, help="the photo (default: the first CarDD sample photo)")
    t.add_argument("--old", default=None, metavar="COMMIT", help="also time the report of this commit's pipeline")
    t.add_argument("--no-layercam", action="store_true", help="pass --no-layercam to the report")
    t.add_argument("--warmup", action="store_true", help="one untimed run of each first")

    t = target("explore", explore, "explore: start-up, first view, neuron latency, peak RSS")
    photos_args(t)
    t.add_argument("--photo", default=None, help="the photo (default: the first CarDD sample photo)")
    t.add_argument("--neurons", type=int, default=100, help="neuron asks a round (default 100)")
    t.add_argument("--seed", type=int, default=0)

    t = target("atlas", atlas, "an atlas process against a predict process on the same photos; peak RSS at two sizes")
    photos_args(t, imgsz=320)  # issue 33's size
    t.add_argument("--source", default=str(SAMPLE / "data.yaml"),
                   help="what `cardamage atlas` takes: a data.yaml (its val split), a folder, glob or .txt list (default: the CarDD sample)")
    t.add_argument("--n", type=int, default=None, help="only the first N photos")
    t.add_argument("--small", type=int, default=200, help="photos of the smaller atlas, for peak RSS (default 200; at most half)")
    t.add_argument("--layers", nargs="+", default=None, help="the atlas's --layers (default: every Conv block)")

    t = target("ray", ray, "predict --ray with N workers against the plain command")
    photos_args(t)
    t.add_argument("--source", default=str(SAMPLE / "images"), help="folder of photos (default: the CarDD sample)")
    t.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts (default 1 2)")

    t = target("cardd-cpu", cardd_cpu, "CarDD training rows under a time budget; --throughput")
    t.add_argument("--data", help="staged CarDD data.yaml (scripts/stage_cardd.py): train + valid only")
    t.add_argument("--out", default="runs/cardd-cpu", help="one folder per row: OUT/NAME-MINUTES (default runs/cardd-cpu)")
    t.add_argument("--minutes", type=float, nargs="+", default=[30.0], help="budgets in minutes (default 30)")
    t.add_argument("--rows", nargs="+", default=["stock", "recipe"], help=f"rows in order; 'ablations' = {' '.join(ABLATIONS)}")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a train() argument for every row, after the row's own")
    t.add_argument("--synth-weights", help="the r-synth row's starting model (e.g. runs/demo/train/weights/best.pt)")
    t.add_argument("--tiny", action="store_true", help="a smoke run: each row on 16+8 sample photos, 1 epoch, 160 px")
    t.add_argument("--table", action="store_true", help="print the rows already in OUT; train nothing")
    t.add_argument("--throughput", action="store_true", help="only time YOLOv8n forward+backward per batch, imgsz and layout")
    t.add_argument("--shapes", type=shape, nargs="+", default=[(32, 320), (16, 320), (8, 320), (16, 256), (8, 256)],
                   metavar="BATCHxIMGSZ", help="--throughput's shapes (default 32x320 16x320 8x320 16x256 8x256)")

    t = target("demo", demo, "cardamage demo as a whole process; --part synth / train-threads")
    t.add_argument("--part", choices=("run", "synth", "train-threads"), default="run")
    t.add_argument("--minutes", type=float, default=None, help="a training budget instead of the recipe's fixed epochs")
    t.add_argument("--config", default=None, help="the demo's recipe (default configs/demo.yaml)")
    t.add_argument("--n-real", type=int, default=8, help="real photos the demo predicts on (default 8)")
    t.add_argument("--no-report", action="store_true")
    t.add_argument("--n", type=int, default=200, help="--part synth: images a round; train-threads: training images (default 200)")

    t = target("memory", memory, "peak RSS of every photo command, whole processes, beside the imports alone")
    t.add_argument("--side", type=int, default=8000, help="the photo's side in pixels (default 8000: 64 MP)")

    t = target("check", check, "cardamage check as a whole process")
    t.add_argument("data", nargs="?", default=str(SAMPLE / "data.yaml"), help="data.yaml (default: the CarDD sample)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child(argv[1], json.loads(argv[2]))
    args = build_parser().parse_args(argv)
    if getattr(args, "make_weights", False) and args.redraw_head is None:
        args.redraw_head = 0
    made = globals()[args.target.replace("-", "_")](args, argv)
    for item in made:
        table, id, numbers, note = item[:4]
        print(f"\n{id}:\n{H.table(numbers)}")
        if args.json:
            Path(args.json).write_text(json.dumps({i[1]: i[2] for i in made}, indent=1))
        if args.record is not None:
            rec_argv = item[4] if len(item) > 4 else argv
            H.record(args.record or table, args.id if args.id and len(made) == 1 else id, rec_argv, numbers,
                     "; ".join(filter(None, [args.note, note])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
