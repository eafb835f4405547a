"""Recompute one neuron by hand: sum(w*x) + b -> SiLU, against the framework; and a box score from its logit.

A YOLOv8 conv neuron at (layer, channel c, row y, column x) sees a k x k window of its layer's input
(all input channels of its group, zero-padded at the border). With BatchNorm folded into the weights
(W' = W * gamma/sqrt(var+eps), b' = beta - mean * gamma/sqrt(var+eps)) it computes, in float64 here::

    z = sum_{i,u,v} W'[c,i,u,v] * patch[i,u,v] + b'[c]      (pre-activation)
    sigmoid(z) = 1 / (1 + exp(-z))
    SiLU(z) = z * sigmoid(z)                                 (post-activation)

and the hooked value from the float32 forward pass must agree (relative error <= 1e-5). The unfolded
route (conv first, then (conv - mean) / sqrt(var + eps) * gamma + beta) is shown too, to see that
folding changes nothing.

The head trace does the same for a detection Ultralytics reports: NMS keeps, per anchor, the class
with the highest score; we run Ultralytics' own NMS on the recorded head output with the predictor's
arguments and ``return_idxs`` to learn which anchor (scale, grid cell) each reported box came from,
then show logit -> sigmoid(logit) -> the ``conf`` Ultralytics printed.

``--out FILE`` writes the trace as JSON whose first key is ``"generator": "cardamage trace"``; an existing
FILE is replaced only if it carries that mark (an earlier trace), any other file only with ``--overwrite``.

Examples:
    cardamage trace --weights yolov8n.yaml photo.jpg --layer model.2.cv1 --channel 5 --y 40 --x 40
    cardamage trace --weights best.pt photo.jpg --layer model.0 --channel 0 --y 100 --x 100 --out trace.json
    cardamage trace --weights best.pt photo.jpg --layer model.22.cv3.0.1 --channel 3 --y 7 --x 9 --head --conf 0.1

    >>> from pipeline.probe.trace import trace_neuron, trace_head, format_trace
    >>> t = trace_neuron(yolo, x, "model.2.cv1", channel=5, y=40, x=40)
    >>> print(format_trace(t)); t["abs_error"] < 1e-5
    >>> h = trace_head(yolo, "photo.jpg", imgsz=640, conf=0.25)
    >>> [(d["logit"], d["sigmoid_by_hand"], d["ultralytics_conf"]) for d in h["detections"]]
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.cli.options import add_trust_weights, image_size, probability
from pipeline.core.facts import CLASS_NAMES
from pipeline.core.io import InputError, atomic_write_json, check_output_file, one_line, read_image, stamp
from pipeline.data.preprocess import model_input
from pipeline.model.load import load_model, model_stride, trained_imgsz
from pipeline.probe.trace import format_head, format_trace, trace_head, trace_neuron

GENERATOR = "cardamage trace"  # the stamp on --out (pipeline.core.io.stamp)

# ------------------------------------------------------------------------------------------------
# CLI: cardamage trace
# ------------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("image", help="photo to run the model on")
    parser.add_argument("--weights", default="yolov8n.yaml", help="weights .pt or a model YAML (default yolov8n.yaml)")
    parser.add_argument("--layer", required=True, help="Conv block path, e.g. model.0 or model.2.cv1")
    parser.add_argument("--channel", type=int, required=True, help="output channel of that layer")
    parser.add_argument("--y", type=int, required=True, help="row in the layer's output map")
    parser.add_argument("--x", type=int, required=True, help="column in the layer's output map")
    parser.add_argument("--imgsz", type=image_size, default=None, help="inference size (default: the size the weights were trained at, else 640)")
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorm into the convs first (model.fuse())")
    parser.add_argument("--head", action="store_true", help="also trace every reported box: logit -> sigmoid -> conf")
    parser.add_argument("--conf", type=probability, default=0.25, help="confidence threshold for --head (default 0.25)")
    parser.add_argument("--iou", type=probability, default=0.7, help="NMS IoU threshold for --head (default 0.7)")
    parser.add_argument("--out", help="write the trace as JSON to this file; an existing file is replaced only if an "
                        "earlier trace wrote it")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --out replace an existing file trace did not write")
    add_trust_weights(parser)


def run(args) -> int:
    if args.out:  # a file, not a folder: not one of the inputs, and no file of the user's
        check_output_file(args.out, [args.image, args.weights], generator=GENERATOR, overwrite=args.overwrite)
    yolo = load_model(args.weights, nc=len(CLASS_NAMES), trust=args.trust_weights)  # nc only matters for a YAML build
    args.imgsz = trained_imgsz(yolo, args.imgsz)
    if args.fuse:
        yolo.model.fuse(verbose=False)
    image = read_image(args.image)  # once: the neuron trace and the head trace share it
    x, _ = model_input(image, args.imgsz, stride=model_stride(yolo))
    try:
        t = trace_neuron(yolo, x, args.layer, args.channel, args.y, args.x)
    except ValueError as e:
        raise InputError(args.layer, str(e)) from None
    print(format_trace(t))
    if args.head:
        t["head"] = trace_head(yolo, args.image, imgsz=args.imgsz, conf=args.conf, iou=args.iou, pixels=image)
        print(format_head(t["head"]))
    if args.out:
        check_output_file(args.out, generator=GENERATOR, overwrite=args.overwrite)  # again, just before writing
        atomic_write_json(Path(args.out), stamp(t, GENERATOR))
        print(f"wrote {one_line(args.out)}", file=sys.stderr)
    return 0
