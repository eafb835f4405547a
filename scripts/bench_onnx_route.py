"""Whole processes on the same photos: stock PyTorch predict, Ultralytics' ONNX route, and ``cardamage predict``.

Every variant is a fresh Python process (imports, model load, export and the first photo included), run on
the same folder with the same weights, imgsz and conf, on the CPU:

- ``stock``: ``YOLO(pt).predict(folder, stream=True)``, what a user of Ultralytics runs.
- ``export``: ``YOLO(pt).export(format="onnx", imgsz=...)``, timed on its own (it is paid once per weights).
- ``onnx route``: ``YOLO(onnx).predict(folder, stream=True)`` on that export.
- ``ours cold``: ``cardamage predict FOLDER --no-overlays`` (``pipeline.cli.main`` as ``entry`` runs it, backend auto = ONNX
  Runtime) with an empty graph cache: the first run on new weights, its own export included.
- ``ours warm``: the same with the graph cache filled (every later run on the same weights).
- ``ours torch``: the same with ``--backend torch``.

The wall time is the parent's clock around the whole process. The steady rate is the child's own: time
from its first finished photo to its last, per photo. Rounds rotate the order of the variants, so load
from other processes hits each; the printed numbers and ratios are medians over rounds of numbers measured
within one round. Detections of every variant are compared with stock's by
``pipeline.model.detections.agreement`` (same class, IoU >= 0.99, score within 1e-3).

Without ``--weights`` the script makes its own: ``yolov8n.yaml`` with nc=6 trained for a few epochs on
``pipeline.data.synth`` data, then, because such a model scores every CarDD anchor alike (NMS among
near-ties would be float noise), its last head convs are redrawn (``redraw_head``: trained backbone, class
logits as random readouts of the features), and it is saved as an Ultralytics checkpoint in ``--work``.
``--conf`` then sets how many boxes a photo gets (0.9: 82 on each sample photo; 0.25-0.6: the 300 cap).

Ultralytics' ONNX export: ``import pipeline`` sets ``YOLO_AUTOINSTALL=0``, so the export installs nothing;
its default ``simplify=True`` wants ``onnxslim``, and without it logs "simplifier failure" and writes the
unsimplified graph anyway, so the default here is ``simplify=False`` (the same graph; ``--simplify`` asks
for onnxslim).

Examples:
    .venv/bin/python scripts/bench_onnx_route.py --rounds 3 --work /tmp/onnx-route --json /tmp/onnx-route.json
    .venv/bin/python scripts/bench_onnx_route.py --weights best.pt --conf 0.25 --rounds 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "cardd-sample" / "images"
VARIANTS = ("stock", "export", "onnx route", "ours cold", "ours warm", "ours torch")
UNITS = [("stock",), ("export", "onnx route"), ("ours cold",), ("ours warm",), ("ours torch",)]  # rotated per round


# ----------------------------------------------------------------------------------------------------
# Child processes: one variant each, results written to a JSON file
# ----------------------------------------------------------------------------------------------------


def _child(args) -> int:
    sys.path.insert(0, str(ROOT))
    import pipeline  # noqa: F401  (offline, no auto-install, before ultralytics)

    stamps: list[float] = []
    records = None
    if args.child in ("stock", "onnx route"):
        from ultralytics import YOLO

        yolo = YOLO(args.child_weights, task="detect")
        names = yolo.names
        records = []
        for r in yolo.predict(args.source, stream=True, conf=args.conf, imgsz=args.imgsz, device="cpu", verbose=False):
            stamps.append(time.time())
            b = r.boxes
            dets = [
                {"class_id": int(c), "class_name": names[int(c)], "score": float(s), "box_xyxy": [round(float(v), 2) for v in xyxy]}
                for xyxy, s, c in zip(b.xyxy.tolist(), b.conf.tolist(), b.cls.tolist())
            ]
            records.append({"image": str(Path(r.path).resolve()), "detections": dets})
    elif args.child == "export":
        from ultralytics import YOLO

        out = YOLO(args.child_weights, task="detect").export(format="onnx", imgsz=args.imgsz, simplify=args.simplify, device="cpu")
        records = {"onnx": str(out)}
    else:  # cardamage predict FOLDER, with a wrapper that only timestamps each photo the engine hands back
        from pipeline.cli import main
        from pipeline.model.engine import Engine

        run = Engine.run

        def stamped(self, files):
            for out in run(self, files):
                stamps.append(time.time())
                yield out

        Engine.run = stamped
        backend = "torch" if args.child == "ours torch" else "auto"
        argv = ["predict", args.source, "--weights", args.child_weights, "--out", args.child_out, "--no-overlays",
                "--conf", str(args.conf), "--imgsz", str(args.imgsz), "--backend", backend]
        rc = main(argv, freeze_imports=True)  # as the console script's ``entry`` runs it (gc frozen after imports)
        if rc:
            return rc
        records = json.loads((Path(args.child_out) / "detections.json").read_text())
        for r in records:
            r["image"] = str(Path(r["image"]).resolve())
        gc.freeze()  # and exits as ``entry`` does, without a last walk over the imported objects (stock's does)
    Path(args.child_result).write_text(json.dumps({"records": records, "stamps": stamps, "torchvision": "torchvision" in sys.modules}))
    return 0


# ----------------------------------------------------------------------------------------------------
# The parent: weights, rounds, table
# ----------------------------------------------------------------------------------------------------


def make_weights(work: Path, photo: Path, imgsz: int, epochs: int, seed: int) -> Path:
    """yolov8n (nc=6) trained briefly on synthetic data, head redrawn so that NMS has one stable answer."""
    sys.path.insert(0, str(ROOT))
    import pipeline  # noqa: F401
    from pipeline.data.synth import write_dataset
    from pipeline.model.detections import redraw_head
    from pipeline.model.load import load_model
    from pipeline.model.train import train

    path = work / "bench.pt"
    if path.is_file():
        print(f"weights: {path} (kept from an earlier run)")
        return path
    data = write_dataset(work / "synth", n_train=64, n_val=16, imgsz=320, seed=1, progress=False)
    t0 = time.perf_counter()
    m = train(data, work / "run", epochs=epochs, imgsz=320, batch=16, workers=0, device="cpu", val=False, seed=0,
              overwrite=True)  # no bench.pt yet: whatever run is there did not finish
    print(f"trained yolov8n nc=6 for {epochs} epochs on 64 synthetic photos in {time.perf_counter() - t0:.0f} s "
          f"(synthetic val mAP50 {m.get('mAP50', float('nan')):.3f})")
    yolo = redraw_head(load_model(m["weights"]), photo, imgsz, seed=seed)
    yolo.save(path)
    print(f"weights: {path} (head redrawn, seed {seed})")
    return path


def run_variant(name: str, args, weights: Path, work: Path, caches: dict) -> dict:
    result = work / "result.json"
    result.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    child_weights = weights
    if name == "onnx route":
        child_weights = weights.with_suffix(".onnx")
    if name.startswith("ours"):
        cache = caches["warm"] if name == "ours warm" else Path(tempfile.mkdtemp(prefix="cold-", dir=work))
        env["CARDAMAGE_CACHE"] = str(cache)
    out = work / "predict-out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-weights", str(child_weights),
           "--child-out", str(out), "--child-result", str(result), "--source", str(args.source),
           "--imgsz", str(args.imgsz), "--conf", str(args.conf), *(["--simplify"] if args.simplify else [])]
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.time() - t0
    if name == "ours cold":
        shutil.rmtree(env["CARDAMAGE_CACHE"], ignore_errors=True)
    if p.returncode:
        raise SystemExit(f"{name} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    got = json.loads(result.read_text())
    s = got["stamps"]
    got.update(wall=wall, first=(s[0] - t0) if s else None, steady=(s[-1] - s[0]) / (len(s) - 1) if len(s) > 1 else None)
    got["log"] = (p.stdout + p.stderr)[-2000:]
    return got


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--weights", default=None, help="a .pt checkpoint (default: make one in --work, see above)")
    p.add_argument("--source", default=str(DEFAULT_SOURCE), help="folder of photos (default: the CarDD sample)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--conf", type=float, default=0.9)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", default=None, help="working folder (default: a new temporary one); keeps bench.pt between runs")
    p.add_argument("--epochs", type=int, default=5, help="epochs of the self-made weights (default 5)")
    p.add_argument("--redraw-head", type=int, default=0, metavar="SEED", help="head seed of the self-made weights")
    p.add_argument("--simplify", action="store_true", help="export with simplify=True (needs onnxslim installed)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--skip", nargs="*", default=[], choices=("export", "ours cold", "ours torch"),
                   help="leave variants out (more rounds of the rest in the same time; 'export' keeps the last .onnx)")
    for hidden in ("--child", "--child-weights", "--child-out", "--child-result"):
        p.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)

    work = Path(args.work or tempfile.mkdtemp(prefix="onnx-route-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    photos = sorted(f for f in Path(args.source).iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if args.weights:
        weights = work / "bench.pt"  # the export writes next to the weights: a copy keeps it out of the user's folder
        shutil.copyfile(args.weights, weights)
    else:
        weights = make_weights(work, photos[0], args.imgsz, args.epochs, args.redraw_head)
    caches = {"warm": work / "cache-warm"}
    print(f"{len(photos)} photos in {args.source}, imgsz {args.imgsz}, conf {args.conf}, {os.cpu_count()} cores "
          f"(load average {os.getloadavg()[0]:.2f} at start: the machine may be shared), {args.rounds} rounds")
    run_variant("ours warm", args, weights, work, caches)  # fills the warm cache (untimed)
    if "export" in args.skip and not weights.with_suffix(".onnx").is_file():
        run_variant("export", args, weights, work, caches)  # the ONNX route needs one export (untimed)
    units = [tuple(n for n in u if n not in args.skip) for u in UNITS]
    units = [u for u in units if u]
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS if v not in args.skip}
    for k in range(args.rounds):
        order = units[k % len(units):] + units[: k % len(units)]
        for unit in order:
            for name in unit:
                runs[name].append(run_variant(name, args, weights, work, caches))
        print(f"round {k + 1}: " + ", ".join(f"{n} {r[-1]['wall']:.1f} s" for n, r in runs.items()), flush=True)
    return report(args, runs, photos, work)


def report(args, runs: dict, photos: list, work: Path) -> int:
    sys.path.insert(0, str(ROOT))
    import pipeline  # noqa: F401
    from pipeline.model.detections import agreement

    med = statistics.median
    order = [str(f.resolve()) for f in photos]

    def ordered(records):
        by = {r["image"]: r for r in records}
        return [{"image": f, "detections": by[f]["detections"]} for f in order]

    stock = ordered(runs["stock"][-1]["records"])
    rows, result = [], {"photos": len(photos), "imgsz": args.imgsz, "conf": args.conf, "rounds": args.rounds, "variants": {}}
    for name, rs in runs.items():
        walls = [r["wall"] for r in rs]
        row = {"wall_s": [round(w, 2) for w in walls], "wall_median_s": round(med(walls), 2),
               "steady_ms": [round(1000 * r["steady"], 1) for r in rs if r["steady"]]}
        if name != "export":
            row["first_photo_s"] = round(med(r["first"] for r in rs), 2)
            row["steady_ms_per_photo"] = round(1000 * med(r["steady"] for r in rs), 1)
            recs = ordered(rs[-1]["records"])
            row["boxes"] = sum(len(r["detections"]) for r in recs)
            row["torchvision_imported"] = rs[-1]["torchvision"]
            if name != "stock":
                row["agreement_vs_stock"] = agreement(recs, stock)
        result["variants"][name] = row
        rows.append((name, row))

    def ratio(num, den, key="wall"):  # median over rounds of num/den measured in the same round; None if one was skipped
        if not all(n in runs for n in (*num, *den)):
            return None
        rounds = zip(*(runs[n] for n in (*num, *den)))
        return med(sum(r[key] for r in rs[: len(num)]) / sum(r[key] for r in rs[len(num):]) for rs in rounds)

    wanted = {
        "stock / ours warm (wall)": (("stock",), ("ours warm",)),
        "stock / ours cold (wall)": (("stock",), ("ours cold",)),
        "stock / ours warm (steady)": (("stock",), ("ours warm",), "steady"),
        "stock / onnx route predict (wall)": (("stock",), ("onnx route",)),
        "stock / (export + onnx route predict) (wall)": (("stock",), ("export", "onnx route")),
        "onnx route predict / ours warm (wall)": (("onnx route",), ("ours warm",)),
        "(export + onnx route predict) / ours cold (wall)": (("export", "onnx route"), ("ours cold",)),
        "onnx route / ours warm (steady)": (("onnx route",), ("ours warm",), "steady"),
        "stock / ours torch (wall)": (("stock",), ("ours torch",)),
        "stock / ours torch (steady)": (("stock",), ("ours torch",), "steady"),
    }
    ratios = {k: v for k, spec in wanted.items() if (v := ratio(*spec)) is not None}
    result["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    print("\n| variant | wall s, median (rounds) | first photo s | steady ms/photo | boxes | agreement with stock |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, row in rows:
        a = row.get("agreement_vs_stock")
        if a is None:
            agree = "-"
        else:
            diff = "-" if a["max_score_diff"] is None else f"{a['max_score_diff']:.1e}"
            agree = f"{a['matched']}/{a['stock_boxes']} matched, {a['unmatched_ours']} extra, max score diff {diff}, {'PASS' if a['ok'] else 'FAIL'}"
        print(f"| {name} | {row['wall_median_s']:.2f} ({', '.join(f'{w:.1f}' for w in row['wall_s'])}) | "
              f"{row.get('first_photo_s', '-')} | {row.get('steady_ms_per_photo', '-')} | {row.get('boxes', '-')} | {agree} |")
    print()
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    for k in ("stock / ours warm (wall)", "stock / ours cold (wall)"):
        if k in ratios:
            print(f"cardamage predict FOLDER vs stock PyTorch predict, whole process, {k.split()[3]} graph cache: "
                  f"{ratios[k]:.2f}x ({'meets' if ratios[k] >= 1.5 else 'BELOW'} the 1.5x goal)")
    print("torchvision imported (Ultralytics' NMS then uses its kernel): " +
          ", ".join(f"{n} {r['torchvision_imported']}" for n, r in rows if "torchvision_imported" in r))
    print(f"work folder: {work}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if all(r.get("agreement_vs_stock", {"ok": True})["ok"] for _, r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
