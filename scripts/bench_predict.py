"""Stock Ultralytics predict vs the batched engine, in one process, on the same files: both rates and the agreement.

Stock is ``YOLO.predict(files, stream=True)`` with the same conf/imgsz/device; ours is
``pipeline.engine.Engine``. Both are timed end to end from a loaded ``YOLO`` (stock builds and fuses its
predictor on the first call, the engine fuses its copy and, with ONNX Runtime, exports one graph per
input shape; both are inside the timing). Rounds alternate stock, ours, stock, ours... so that load
from other processes on a shared machine hits both; the ratio printed is of the summed times.

The agreement check pairs every stock box with one of ours of the same class, IoU >= 0.99 and score
within 1e-3 (``pipeline.engine.agreement``). With ``--data`` (a YOLO data.yaml whose ``val`` split is
labelled) it also scores both prediction sets with Ultralytics' own matching and ``DetMetrics`` and
prints mAP50-95 and mAP50 of each and the difference.

Examples:
    .venv/bin/python scripts/bench_predict.py --weights /tmp/run/weights/best.pt --n 60 --imgsz 640 --conf 0.001
    .venv/bin/python scripts/bench_predict.py --weights best.pt --source ../shared/data/cardd-sample/images \\
        --data ../shared/data/cardd-sample/data.yaml --batch 8 --workers 2 --backend auto
    .venv/bin/python scripts/bench_predict.py --weights best.pt --device 0 --batch 256 --n 399   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402,F401  (offline env before ultralytics)
import torch  # noqa: E402

from pipeline.engine import Engine, agreement  # noqa: E402
from pipeline.io import expand_sources  # noqa: E402
from pipeline.model import load_model  # noqa: E402

DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "cardd-sample" / "images"


def stock_records(yolo, files, conf, imgsz, device) -> list[dict]:
    """Stock ``predict(stream=True)``, turned into detections.json records (no logit: stock has none)."""
    names = yolo.model.names
    out = []
    for f, r in zip(files, yolo.predict([str(f) for f in files], stream=True, conf=conf, imgsz=imgsz, device=device, verbose=False)):
        b = r.boxes
        dets = [
            {"class_id": int(c), "class_name": names[int(c)], "score": float(s), "box_xyxy": [round(float(v), 2) for v in xyxy]}
            for xyxy, s, c in zip(b.xyxy.tolist(), b.conf.tolist(), b.cls.tolist())
        ]
        out.append({"image": str(f), "width": r.orig_shape[1], "height": r.orig_shape[0], "detections": dets})
    return out


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
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    p.add_argument("--rounds", type=int, default=1, help="alternating stock/ours rounds (default 1)")
    p.add_argument("--data", default=None, help="data.yaml of a labelled set whose photos are --source: also compare mAP")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)

    files, errors = expand_sources([args.source])
    files = files[: args.n]
    if errors or not files:
        print(f"error: {errors[0] if errors else args.source + ': no photos'}", file=sys.stderr)
        return 1
    print(f"{len(files)} photos, imgsz {args.imgsz}, conf {args.conf}, device {args.device}, torch threads {torch.get_num_threads()}")

    t_stock, t_ours, setup = 0.0, 0.0, 0.0
    torch.manual_seed(0)  # a model YAML gets the same random weights every run
    yolo = load_model(args.weights, nc=6 if args.weights.endswith((".yaml", ".yml")) else None)
    for k in range(args.rounds):
        yolo.predictor = None  # stock builds (and fuses) its predictor inside the timing, as on a first call
        t0 = time.perf_counter()
        stock = stock_records(yolo, files, args.conf, args.imgsz, args.device)
        t1 = time.perf_counter()
        engine = Engine(yolo, imgsz=args.imgsz, conf=args.conf, device=args.device, batch=args.batch, workers=args.workers, backend=args.backend)
        t2 = time.perf_counter()
        ours, errs = engine.predict(files)
        t3 = time.perf_counter()
        assert not errs, errs
        t_stock, t_ours, setup = t_stock + t1 - t0, t_ours + t3 - t1, setup + t2 - t1
        print(f"round {k + 1}: stock {len(files) / (t1 - t0):.2f} img/s, ours ({engine.backend.name}, batch {engine.batch}, "
              f"{engine.workers} decode workers) {len(files) / (t3 - t1):.2f} img/s (setup {t2 - t1:.2f} s inside)")
    n = len(files) * args.rounds
    stock_rate, our_rate = n / t_stock, n / t_ours
    agree = agreement(ours, stock)
    result = {
        "photos": len(files),
        "rounds": args.rounds,
        "imgsz": args.imgsz,
        "conf": args.conf,
        "device": args.device,
        "backend": engine.backend.name,
        "batch": engine.batch,
        "workers": engine.workers,
        "stock_img_s": round(stock_rate, 3),
        "ours_img_s": round(our_rate, 3),
        "ratio": round(our_rate / stock_rate, 3),
        "ours_setup_s": round(setup / args.rounds, 3),
        "agreement": agree,
    }
    print(f"stock {stock_rate:.2f} img/s | ours {our_rate:.2f} img/s | ratio {our_rate / stock_rate:.2f}x")
    print(f"agreement: {agree['matched']}/{agree['stock_boxes']} stock boxes matched, {agree['unmatched_ours']} extra of ours, "
          f"min IoU {agree['min_iou']}, max |score diff| {agree['max_score_diff']} -> {'PASS' if agree['ok'] else 'FAIL'}")
    if args.data:
        names = dict(yolo.model.names)
        m_stock, m_ours = map_on_labels(stock, args.data, names), map_on_labels(ours, args.data, names)
        d = abs(m_ours["mAP50-95"] - m_stock["mAP50-95"])
        result["mAP"] = {"stock": m_stock, "ours": m_ours, "abs_diff_mAP50-95": d, "ok": d <= 0.002}
        print(f"mAP50-95 stock {m_stock['mAP50-95']:.4f} ours {m_ours['mAP50-95']:.4f} (|diff| {d:.4f} {'<=' if d <= 0.002 else '>'} 0.002); "
              f"mAP50 stock {m_stock['mAP50']:.4f} ours {m_ours['mAP50']:.4f}")
    if args.json:
        from pipeline.io import atomic_write_json

        atomic_write_json(args.json, result)
    return 0 if agree["ok"] and result.get("mAP", {}).get("ok", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
