"""Detect damage in photos: overlays plus ``detections.json`` with each box's sigmoid score and its logit.

YOLOv8 has no objectness: a box's score is ``sigmoid(logit)`` of the best class output at the anchor
that produced it. Stock Ultralytics reports only the score; this stage keeps the logit too, read from
the Detect head's raw class output at the very anchor Ultralytics' own NMS kept (``return_idxs``),
so ``score == sigmoid(logit)`` holds for every detection and a student can see where it came from.

A folder, or ``--batch`` > 1, runs the engine (``pipeline.model.engine``: decoding ahead in threads,
ONNX Runtime on CPU, batches of equally shaped photos on a GPU); on a CPU without ONNX Runtime a folder
goes photo by photo, where the engine would be no faster. Its detections agree with the one-photo-at-a-
time path (``scripts/bench.py predict`` prints the check and the rates).

Examples:
    cardamage predict --weights runs/demo/train/weights/best.pt photos/ --out runs/predict
    cardamage predict --weights best.pt 'shots/*.jpg' car.png --out out --conf 0.1 --imgsz 640
    cardamage predict --weights best.pt photos/ --out out --batch 16 --workers 4 --no-overlays
    cardamage predict --weights best.pt photos/ list.txt --out out --ray --workers 2   # Ray: see docs/scale.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli.options import add_overwrite, add_ray_arguments, add_trust_weights, device, image_size, positive_int, probability
from pipeline.core.io import InputError, one_line
from pipeline.model.load import load_model, trained_imgsz
from pipeline.model.predict import predict_paths
from pipeline.scale.predict import ray_predict


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image files, folders, globs, or .txt lists of photos (one path a line)")
    p.add_argument("--weights", required=True, help="trained weights (.pt) or a model YAML (untrained)")
    p.add_argument("--out", required=True, help="output folder: overlays + detections.json")
    p.add_argument("--conf", type=probability, default=0.25, help="score threshold in (0, 1] (default 0.25)")
    p.add_argument("--imgsz", type=image_size, default=None, help="inference size (default: the size the weights were trained at, else 640)")
    p.add_argument("--device", type=device, default="cpu", help="cpu or a CUDA index (default cpu)")
    p.add_argument("--no-overlays", action="store_true", help="write detections.json only")
    p.add_argument("--batch", type=positive_int, default=None, help="photos per forward pass; > 1 (or a folder) runs the batched engine (default there: 1 on CPU, 32 on CUDA)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="decode threads of the batched engine (default 2 on CPU, every core but one on a GPU); "
                        "with --ray: Ray workers (default one per CPU of the cluster, or per --gpus-per-worker GPUs)")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto", help="batched engine backend: auto = ONNX Runtime on CPU if installed (else a CPU folder runs stock predict), torch on a GPU")
    add_ray_arguments(p, workers=False)
    add_trust_weights(p)
    add_overwrite(p)


def run(args) -> int:
    if args.ray is None and args.gpus_per_worker:
        raise InputError("--gpus-per-worker", "applies to Ray workers: add --ray")
    if args.ray is not None and args.device != "cpu":
        raise InputError("--device", "with --ray, workers take GPUs by --gpus-per-worker G, not --device")
    yolo = load_model(args.weights, trust=args.trust_weights)
    args.imgsz = trained_imgsz(yolo, args.imgsz)
    if args.ray is not None:
        records, errors = ray_predict(yolo, args.sources, args.out, conf=args.conf, imgsz=args.imgsz,
                                      overlays=not args.no_overlays, batch=args.batch, backend=args.backend,
                                      address=args.ray, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                                      log=lambda line: print(line, file=sys.stderr, flush=True),
                                      overwrite=args.overwrite)
    else:
        records, errors = predict_paths(
            yolo,
            args.sources,
            args.out,
            conf=args.conf,
            imgsz=args.imgsz,
            device=args.device,
            overlays=not args.no_overlays,
            batch=args.batch,
            workers=args.workers,
            backend=args.backend,
            overwrite=args.overwrite,
        )
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    n = sum(len(r["detections"]) for r in records)
    print(f"{_count(len(records), 'image')}, {_count(n, 'detection')}, {_count(len(errors), 'error')} -> "
          f"{one_line(Path(args.out).resolve() / 'detections.json')}")
    return 1 if errors else 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
