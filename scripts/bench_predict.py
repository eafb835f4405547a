"""Stock Ultralytics predict vs the batched engine, in one process, on the same files: both rates and the agreement.

Stock is ``YOLO.predict(..., stream=True)`` with the same conf/imgsz/device, run two ways (one photo at a
time from a ``.txt`` list, as for a folder; and a Python list of paths, which Ultralytics runs as one
batch); ours is
``pipeline.model.engine.Engine``. Both are timed end to end from a loaded ``YOLO`` (stock builds and fuses its
predictor on the first call, the engine fuses its copy and, with ONNX Runtime, exports one graph per
input shape; both are inside the timing, and each round starts with an empty graph cache). torchvision is imported first, so Ultralytics' NMS runs
torchvision's kernel for stock as for ours (a fresh process running stock alone would use Ultralytics'
slower torch loop for fewer than 1000 photos). Rounds alternate stock, ours, stock, ours... so that load
from other processes on a shared machine hits both; the ratio printed is of the summed times.

The agreement check pairs every stock box with one of ours of the same class, IoU >= 0.99 and score
within 1e-3 (``pipeline.model.detections.agreement``). With ``--data`` (a YOLO data.yaml whose ``val`` split is
labelled) it also scores both prediction sets with Ultralytics' own matching and ``DetMetrics`` and
prints mAP50-95 and mAP50 of each and the difference.

Examples:
    .venv/bin/python scripts/bench_predict.py --weights /tmp/run/weights/best.pt --n 60 --imgsz 640 --conf 0.001
    .venv/bin/python scripts/bench_predict.py --weights best.pt --source ../shared/data/cardd-sample/images \\
        --data ../shared/data/cardd-sample/data.yaml --workers 2 --backend auto
    .venv/bin/python scripts/bench_predict.py --weights best.pt --device 0 --batch 256 --n 399   # on a GPU
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402,F401  (offline env before ultralytics)
import torch  # noqa: E402
import torchvision  # noqa: E402,F401  (stock's NMS, too, then uses torchvision's kernel, as the engine's does)

from pipeline.model.engine import Engine  # noqa: E402
from pipeline.model.detections import agreement, redraw_head
from pipeline.model.backends import cpu_threads
from pipeline.core.io import expand_sources  # noqa: E402
from pipeline.model.load import load_model  # noqa: E402

DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "cardd-sample" / "images"


def stock_records(yolo, files, conf, imgsz, device, mode="batch1") -> list[dict]:
    """Stock ``predict(stream=True)`` as detections.json records, in ``files`` order (stock has no logit).

    ``mode="batch1"``: the files go in as a ``.txt`` list, which Ultralytics reads like a folder: cv2,
    one photo at a time, each letterboxed to its own minimum rectangle (the reference the engine matches).
    ``mode="list"``: a Python list of paths, which Ultralytics decodes with PIL up front and runs as ONE
    batch of all N photos (a common square when their shapes differ).
    """
    names = yolo.model.names
    if mode == "batch1":
        tmp = tempfile.TemporaryDirectory()
        source = Path(tmp.name) / "files.txt"
        source.write_text("".join(f"{Path(f).resolve()}\n" for f in files))
        source = str(source)
    else:
        source = [str(f) for f in files]
    by_path = {}
    for r in yolo.predict(source, stream=True, conf=conf, imgsz=imgsz, device=device, verbose=False):
        b = r.boxes
        dets = [
            {"class_id": int(c), "class_name": names[int(c)], "score": float(s), "box_xyxy": [round(float(v), 2) for v in xyxy]}
            for xyxy, s, c in zip(b.xyxy.tolist(), b.conf.tolist(), b.cls.tolist())
        ]
        by_path[str(Path(r.path).resolve())] = {"width": r.orig_shape[1], "height": r.orig_shape[0], "detections": dets}
    return [{"image": str(f), **by_path[str(Path(f).resolve())]} for f in files]


def map_on_labels(records: list[dict], data_yaml: str, names: dict) -> dict:
    """mAP50-95 and mAP50 of the records against the labels, with Ultralytics' matching and DetMetrics."""
    from ultralytics.data.utils import check_det_dataset, img2label_paths, verify_image_label
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils import ops
    from ultralytics.utils.metrics import DetMetrics, box_iou

    check_det_dataset(data_yaml, autodownload=False)  # fails early on a bad yaml
    matcher = DetectionValidator.__new__(DetectionValidator)  # only its match_predictions and IoU levels
    matcher.iouv = torch.linspace(0.5, 0.95, 10)
    metrics = DetMetrics(names=names)
    for rec in records:
        label = img2label_paths([rec["image"]])[0]
        got = verify_image_label((rec["image"], label, "", False, len(names), 0, 3, False))
        lb = got[1]  # n x 5: class, normalized xywh (polygons turned into boxes as Ultralytics does)
        cls = torch.from_numpy(lb[:, 0]).float()
        gt = ops.xywh2xyxy(torch.from_numpy(lb[:, 1:5]).float()) * torch.tensor([rec["width"], rec["height"]] * 2)
        dets = sorted(rec["detections"], key=lambda d: -d["score"])
        pcls = torch.tensor([d["class_id"] for d in dets], dtype=torch.float32)
        pconf = np.array([d["score"] for d in dets], dtype=np.float32)
        if len(dets) and len(cls):
            pbox = torch.tensor([d["box_xyxy"] for d in dets], dtype=torch.float32)
            tp = matcher.match_predictions(pcls, cls, box_iou(gt, pbox)).numpy()
        else:
            tp = np.zeros((len(dets), 10), dtype=bool)
        metrics.update_stats({"tp": tp, "conf": pconf, "pred_cls": pcls.numpy(), "target_cls": cls.numpy(), "target_img": np.unique(cls.numpy()), "im_name": Path(rec["image"]).name})
    metrics.process()
    return {"mAP50-95": float(metrics.box.map), "mAP50": float(metrics.box.map50)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--weights", default="yolov8n.yaml", help="checkpoint, or a model YAML (random weights; use a low --conf)")
    p.add_argument("--source", default=str(DEFAULT_SOURCE), help="folder/files/glob of photos (default: the CarDD sample)")
    p.add_argument("--n", type=int, default=60, help="use the first N photos (default 60)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=None, help="engine batch (default: 1 on CPU, 32 on CUDA)")
    p.add_argument("--workers", type=int, default=None, help="decode threads (default 2 on CPU, cores - 1 on a GPU)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    p.add_argument("--rounds", type=int, default=1, help="alternating stock/ours rounds (default 1)")
    p.add_argument("--data", default=None, help="data.yaml of a labelled set whose photos are --source: also compare mAP")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--gpu-decode", action="store_true",
                   help="the engine's gpu_decode path (torchvision decode, torch letterbox; also runs on CPU)")
    p.add_argument("--redraw-head", type=int, default=None, metavar="SEED",
                   help="for a weak checkpoint: redraw the head's last convs so NMS has a stable answer (see redraw_head)")
    args = p.parse_args(argv)

    files, errors = expand_sources([args.source])
    files = files[: args.n]
    if errors or not files:
        print(f"error: {errors[0] if errors else args.source + ': no photos'}", file=sys.stderr)
        return 1

    torch.manual_seed(0)  # a model YAML gets the same random weights every run
    yolo = load_model(args.weights, nc=6 if args.weights.endswith((".yaml", ".yml")) else None)
    if args.redraw_head is not None:
        redraw_head(yolo, files[0], args.imgsz, args.redraw_head)
    yolo.predict(str(files[0]), conf=args.conf, imgsz=args.imgsz, device=args.device, verbose=False)  # warm torch up, untimed
    print(f"{len(files)} photos, imgsz {args.imgsz}, conf {args.conf}, device {args.device}, "
          f"stock's torch threads {torch.get_num_threads()} (Ultralytics sets cores - 1), cores {cpu_threads()}")
    t = {"stock batch-1": 0.0, "stock list": 0.0, "ours": 0.0}
    setup = 0.0
    for k in range(args.rounds):
        t0 = time.perf_counter()
        yolo.predictor = None  # stock builds (and fuses) its predictor inside the timing, as on a first call
        stock = stock_records(yolo, files, args.conf, args.imgsz, args.device, "batch1")
        t1 = time.perf_counter()
        yolo.predictor = None
        stock_list = stock_records(yolo, files, args.conf, args.imgsz, args.device, "list")
        # an empty graph cache each round: the ONNX export stays inside "ours", as on a first run on new weights
        os.environ["CARDAMAGE_CACHE"] = tempfile.mkdtemp(prefix="bench-onnx-")
        atexit.register(shutil.rmtree, os.environ["CARDAMAGE_CACHE"], True)
        t2 = time.perf_counter()
        engine = Engine(yolo, imgsz=args.imgsz, conf=args.conf, device=args.device, batch=args.batch, workers=args.workers, backend=args.backend,
                        gpu_decode=args.gpu_decode)
        t3 = time.perf_counter()
        ours, errs = engine.predict(files)
        t4 = time.perf_counter()
        assert not errs, errs
        t["stock batch-1"] += t1 - t0
        t["stock list"] += t2 - t1
        t["ours"] += t4 - t2
        setup += t3 - t2
        print(f"round {k + 1}: " + ", ".join(f"{name} {len(files) / dt:.2f} img/s" for name, dt in
                                             (("stock batch-1", t1 - t0), ("stock list", t2 - t1), ("ours", t4 - t2))))
    n = len(files) * args.rounds
    rates = {name: n / dt for name, dt in t.items()}
    best_stock = max(rates["stock batch-1"], rates["stock list"])
    agree = agreement(ours, stock)
    agree_list = agreement(ours, stock_list)
    result = {
        "photos": len(files),
        "rounds": args.rounds,
        "imgsz": args.imgsz,
        "conf": args.conf,
        "device": args.device,
        "stock_torch_threads": torch.get_num_threads(),
        "ort_threads": getattr(engine.backend, "threads", None),
        "backend": engine.backend.name,
        "batch": engine.batch,
        "workers": engine.workers,
        "img_s": {name: round(r, 3) for name, r in rates.items()},
        "ratio_vs_best_stock": round(rates["ours"] / best_stock, 3),
        "ratio_vs_stock_batch1": round(rates["ours"] / rates["stock batch-1"], 3),
        "ours_construct_s": round(setup / args.rounds, 3),
        "agreement": agree,
        "agreement_vs_stock_list": agree_list,
    }
    print(f"stock batch-1 {rates['stock batch-1']:.2f} img/s | stock list {rates['stock list']:.2f} img/s | "
          f"ours ({engine.backend.name}, batch {engine.batch}, {engine.workers} decode workers) {rates['ours']:.2f} img/s")
    print(f"ratio ours / best stock {rates['ours'] / best_stock:.2f}x (vs stock batch-1 {rates['ours'] / rates['stock batch-1']:.2f}x)")
    for name, a in (("stock batch-1", agree), ("stock list", agree_list)):
        print(f"agreement with {name}: {a['matched']}/{a['stock_boxes']} stock boxes matched, {a['unmatched_ours']} extra of ours, "
              f"min IoU {a['min_iou']}, max |score diff| {a['max_score_diff']} -> {'PASS' if a['ok'] else 'FAIL'}")
    if args.data:
        names = dict(yolo.model.names)
        m_stock, m_ours = map_on_labels(stock, args.data, names), map_on_labels(ours, args.data, names)
        d = abs(m_ours["mAP50-95"] - m_stock["mAP50-95"])
        result["mAP"] = {"stock": m_stock, "ours": m_ours, "abs_diff_mAP50-95": d, "ok": d <= 0.002}
        print(f"mAP50-95 stock {m_stock['mAP50-95']:.4f} ours {m_ours['mAP50-95']:.4f} (|diff| {d:.4f} {'<=' if d <= 0.002 else '>'} 0.002); "
              f"mAP50 stock {m_stock['mAP50']:.4f} ours {m_ours['mAP50']:.4f}")
    if args.json:
        from pipeline.core.io import atomic_write_json

        atomic_write_json(args.json, result)
    return 0 if agree["ok"] and result.get("mAP", {}).get("ok", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
