"""Write an offline HTML report that walks one photo through YOLOv8: map -> input -> ... -> training.

One file, ``OUT/report.html``, its pictures embedded (no CDN, no script, opens from ``file://`` alone,
fits a phone screen), in the order of the lesson::

    map         the forward pass with this run's shapes, down to the top box's DFL bins and class sigmoids
    input       the exact model input (letterbox, x/255), scalings, |z| > 3 outliers (padding apart)
    neurons     a neuron on the top box's path where SiLU bends, by hand, with its receptive field
    weights     raw vs BatchNorm-folded conv weights, parameter counts per layer
    biases      BatchNorm folding: where a YOLOv8 neuron's bias lives
    activations seven activation functions over the real pre-activations of a YOLOv8 layer
    hidden      feature maps (top channels by energy), pre vs post SiLU, filters
    output      class logits -> sigmoid scores, detections with score and logit, CAM; with a YOLO label
                file (labels/NAME.txt beside images/), each box found or a false positive, and missed labels
    training    gradient flow per activation (relative to the output layer), one SGD step on that neuron

The photo is decoded once and run once through a fused copy of the model (``pipeline.analysis.run``);
the neuron, the detections and their logits are read off that one pass, and only the gradient lesson and
LayerCAM run the network again. Every number is computed by the modules that own it (``preprocess``,
``recorder``, ``trace``, ``activations``, ``gradients``); the report only lays them out. It also writes
``OUT/report_files/report.json`` with those numbers (and a copy of each figure). The page names the image and the weights (path and
sha256 prefix).

Examples:
    cardamage report --weights runs/demo/train/weights/best.pt photo.jpg --out runs/report
    cardamage report --weights yolov8n.yaml photo.jpg --out runs/report-untrained --imgsz 640
    cardamage report --weights best.pt photo.jpg --out runs/report --atlas runs/atlas   # the neuron's channel's top crops

    >>> from pipeline.report.page import write_report
    >>> write_report("runs/demo/train/weights/best.pt", "photo.jpg", "runs/report")
    PosixPath('runs/report/report.html')
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli.options import add_overwrite, add_trust_weights, image_size, int_range, positive_int, probability
from pipeline.core.io import InputError, input_paths, one_line, output_folder
from pipeline.report.page import FILES, write_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="the photo to walk through the network")
    p.add_argument("--weights", required=True, help="best.pt (trained) or yolov8n.yaml (untrained, built from scratch)")
    p.add_argument("--out", required=True, help="folder for report.html and report_files/")
    p.add_argument("--imgsz", type=image_size, default=None, help="inference size (default: the size the weights were trained at, else 640)")
    p.add_argument("--conf", type=probability, default=0.25, help="score threshold for detections (default 0.25)")
    p.add_argument("--grad-imgsz", type=image_size, default=320, help="image size of the gradient-flow batch (default 320)")
    p.add_argument("--grad-batch", type=positive_int, default=2, help="images in the gradient-flow batch (default 2)")
    p.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0,
                   help="seed for a YAML build and the activation variants (0 to 2^32 - 1)")
    p.add_argument("--no-layercam", action="store_true", help="skip Ultralytics' LayerCAM (EigenCAM is always drawn)")
    p.add_argument("--stats-over", nargs="+", default=None, metavar="SOURCE",
                   help="also show every layer's statistics over these photos/folders/globs (at most --stats-limit)")
    p.add_argument("--stats-limit", type=positive_int, default=200, help="photos used by --stats-over (default 200)")
    p.add_argument("--atlas", default=None, metavar="DIR",
                   help="a cardamage atlas folder: the worked neuron's channel shows its top crops, linked to the atlas")
    add_trust_weights(p)
    add_overwrite(p)


def run(args) -> int:
    if not Path(args.image).exists():
        raise InputError(args.image, "file not found")
    inputs = [args.image, *([args.weights] if Path(args.weights).is_file() else []), *input_paths(args.stats_over or [])]
    failed: list[InputError] = []
    # the page, its numbers and its folder are checked before the work: a refusal leaves no half-written figures
    with output_folder(args.out, inputs=inputs, overwrite=args.overwrite,
                       names=["report.html"], folders=[FILES]):
        path = write_report(args.weights, args.image, args.out, imgsz=args.imgsz, conf=args.conf,
                            grad_imgsz=args.grad_imgsz, grad_batch=args.grad_batch, seed=args.seed,
                            layercam=not args.no_layercam, stats_over=args.stats_over, stats_limit=args.stats_limit,
                            trust=args.trust_weights, on_error=failed.append, atlas=args.atlas)
    for e in failed:  # the statistics were taken over the rest
        print(f"error: {e}", file=sys.stderr)
    print(one_line(path))
    return 1 if failed else 0
